package chatkitprom

import (
	"context"
	"net/http"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// readyTimeout bounds the Server.Ready call of a scrape: a store or broker
// that does not answer within it is reported as not ready, rather than
// holding the scrape until Prometheus gives up on it.
const readyTimeout = time.Second

// An Option configures a Collector.
type Option func(*config)

type config struct {
	namespace string
	labels    prometheus.Labels
}

// WithLabels adds constant labels to every metric, such as
// prometheus.Labels{"node": "a"} to tell the nodes of a cluster apart when
// the scrape target's labels do not. The names "reason" and "code" are
// taken, and registering a Collector with either fails.
func WithLabels(labels prometheus.Labels) Option {
	return func(c *config) { c.labels = labels }
}

// WithNamespace replaces the "chatkit" prefix of every metric name, for a
// process that serves two Servers under one registry. The dashboards
// documented with this package assume the default.
func WithNamespace(namespace string) Option {
	return func(c *config) { c.namespace = namespace }
}

// A Collector exposes a chatkit.Server's Stats to Prometheus. It reads
// Stats, and calls Ready, when it is collected, at scrape time: it starts
// no goroutine and keeps no state but the metric descriptions, so a
// Collector of a Server that is shut down just reports it as not ready.
type Collector struct {
	srv *chatkit.Server

	sessions, presentUsers, rooms              *prometheus.Desc
	messages, deliveries, history              *prometheus.Desc
	dropped, refused, errors                   *prometheus.Desc
	storeCalls, storeFailures, storeSeconds    *prometheus.Desc
	brokerCalls, brokerFailures, brokerSeconds *prometheus.Desc
	fanout, ready                              *prometheus.Desc
}

// NewCollector returns a Collector of s, to be registered with
// prometheus.MustRegister or a registry of one's own.
func NewCollector(s *chatkit.Server, opts ...Option) *Collector {
	cfg := config{namespace: "chatkit"}
	for _, o := range opts {
		o(&cfg)
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(cfg.namespace, "", name), help, labels, cfg.labels)
	}
	return &Collector{
		srv:            s,
		sessions:       desc("sessions", "Sessions past the handshake."),
		presentUsers:   desc("present_users", "Users present, on any node, in the rooms this node has members in."),
		rooms:          desc("rooms", "Rooms held in memory."),
		messages:       desc("messages_total", "Chat messages stored through this node."),
		deliveries:     desc("deliveries_total", "Events queued for members by the rooms' fan-out."),
		history:        desc("history_requests_total", "Scrollback requests answered."),
		dropped:        desc("sessions_dropped_total", "Sessions closed by the server, by reason.", "reason"),
		refused:        desc("handshakes_refused_total", "Refused handshakes, by reason.", "reason"),
		errors:         desc("errors_total", "Error events sent to clients, by code.", "code"),
		storeCalls:     desc("store_calls_total", "Calls to the Store."),
		storeFailures:  desc("store_failures_total", "Calls to the Store that returned an error."),
		storeSeconds:   desc("store_seconds_total", "Time spent in calls to the Store."),
		brokerCalls:    desc("broker_calls_total", "Calls to the Broker."),
		brokerFailures: desc("broker_failures_total", "Calls to the Broker that returned an error."),
		brokerSeconds:  desc("broker_seconds_total", "Time spent in calls to the Broker."),
		fanout:         desc("fanout_seconds", "Time from receiving a message to queueing it for every local member."),
		ready:          desc("ready", "1 if the server accepts sessions and its store and broker answer within 1s, else 0."),
	}
}

// Describe sends the descriptions of every metric of c.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.sessions, c.presentUsers, c.rooms,
		c.messages, c.deliveries, c.history,
		c.dropped, c.refused, c.errors,
		c.storeCalls, c.storeFailures, c.storeSeconds,
		c.brokerCalls, c.brokerFailures, c.brokerSeconds,
		c.fanout, c.ready,
	} {
		ch <- d
	}
}

// Collect sends the Server's current Stats and readiness.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.Stats()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(c.sessions, float64(st.Sessions))
	gauge(c.presentUsers, float64(st.PresentUsers))
	gauge(c.rooms, float64(st.Rooms))
	counter(c.messages, float64(st.MessagesStored))
	counter(c.deliveries, float64(st.Deliveries))
	counter(c.history, float64(st.HistoryRequests))
	// Stats fills its maps with every reason and code, zeros included, so
	// each series exists from the first scrape on instead of appearing
	// with its first event.
	for reason, n := range st.SessionsDropped {
		counter(c.dropped, float64(n), reason)
	}
	for reason, n := range st.HandshakesRefused {
		counter(c.refused, float64(n), reason)
	}
	for code, n := range st.Errors {
		counter(c.errors, float64(n), code)
	}
	counter(c.storeCalls, float64(st.Store.Calls))
	counter(c.storeFailures, float64(st.Store.Failures))
	counter(c.storeSeconds, st.Store.Seconds)
	counter(c.brokerCalls, float64(st.Broker.Calls))
	counter(c.brokerFailures, float64(st.Broker.Failures))
	counter(c.brokerSeconds, st.Broker.Seconds)
	count, buckets := cumulative(st.FanoutLatency)
	ch <- prometheus.MustNewConstHistogram(c.fanout, count, st.FanoutLatency.Sum, buckets)

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	ready := 0.0
	if c.srv.Ready(ctx) == nil {
		ready = 1
	}
	gauge(c.ready, ready)
}

// cumulative converts h's per-bucket counts into Prometheus buckets, each
// counting the observations up to its bound, the last unbounded bucket
// being the +Inf one that the count stands for. The count is the sum of
// the buckets rather than h.Count: Stats reads its atomics one at a time,
// so the two may differ by an observation in flight, and a +Inf bucket
// below the bucket before it would be an invalid histogram.
func cumulative(h chatkit.Histogram) (count uint64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(h.Bounds))
	for i, n := range h.Counts {
		count += n
		if i < len(h.Bounds) {
			buckets[h.Bounds[i]] = count
		}
	}
	return count, buckets
}

// Handler returns an http.Handler that serves the metrics of s, with
// opts, and those of the Go runtime and the process, in the Prometheus
// exposition formats: a /metrics endpoint for a program that has no
// registry of its own. It uses a new registry rather than the default
// one, so that it never collides with what the program registers there.
func Handler(s *chatkit.Server, opts ...Option) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(s, opts...),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
