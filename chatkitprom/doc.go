// Package chatkitprom exports the statistics of a chatkit.Server to
// Prometheus. It is a module of its own so that package chatkit keeps its
// two dependencies.
//
// A program with a Prometheus registry registers a Collector:
//
//	chat := chatkit.New()
//	prometheus.MustRegister(chatkitprom.NewCollector(chat))
//
// A program without one serves Handler, which adds the Go runtime and
// process metrics:
//
//	mux.Handle("/metrics", chatkitprom.Handler(chat))
//
// The Collector reads Server.Stats, and calls Server.Ready with a timeout
// of 1s, at each scrape: there is nothing to start or stop. Counters count
// from chatkit.New, so they restart at zero with the process, as
// Prometheus expects of counters. Every reason and code below is exported
// from the first scrape on, at 0 until it happens, so that series neither
// appear nor vanish. The metrics, with the default namespace "chatkit"
// (see WithNamespace) and any WithLabels added to each:
//
//	| Metric                           | Type      | Labels | Meaning |
//	|----------------------------------|-----------|--------|---------|
//	| chatkit_sessions                 | gauge     |        | Sessions past the handshake. |
//	| chatkit_present_users            | gauge     |        | Users present, on any node, in the rooms this node has members in. |
//	| chatkit_rooms                    | gauge     |        | Rooms held in memory. |
//	| chatkit_messages_total           | counter   |        | Chat messages stored through this node. |
//	| chatkit_deliveries_total         | counter   |        | Events queued for members by the rooms' fan-out. |
//	| chatkit_history_requests_total   | counter   |        | Scrollback requests answered. |
//	| chatkit_sessions_dropped_total   | counter   | reason | Sessions the server closed: too_slow, idle, protocol_error, flooding, disconnected (Server.Disconnect). Client closes and Shutdown are not drops. |
//	| chatkit_handshakes_refused_total | counter   | reason | Refused handshakes: origin, auth, bad_request, capacity, shutting_down, unavailable (store or broker did not answer), internal (a hook panicked). |
//	| chatkit_errors_total             | counter   | code   | Error events sent, by the codes of PROTOCOL.md: message_too_long, empty_message, rate_limited, bad_request, rejected, unavailable. |
//	| chatkit_store_calls_total        | counter   |        | Calls to the Store. |
//	| chatkit_store_failures_total     | counter   |        | Calls to the Store that returned an error. |
//	| chatkit_store_seconds_total      | counter   |        | Time spent in calls to the Store. |
//	| chatkit_broker_calls_total       | counter   |        | Calls to the Broker. |
//	| chatkit_broker_failures_total    | counter   |        | Calls to the Broker that returned an error. |
//	| chatkit_broker_seconds_total     | counter   |        | Time spent in calls to the Broker. |
//	| chatkit_fanout_seconds           | histogram |        | Time from receiving a message to queueing it for every local member; buckets from 100µs to 5s. |
//	| chatkit_ready                    | gauge     |        | 1 if the server accepts sessions and its store and broker answer within 1s (Server.Ready), else 0. |
//
// Mean store latency, for instance, is
// rate(chatkit_store_seconds_total[5m]) / rate(chatkit_store_calls_total[5m]),
// and the 99th percentile of fan-out is
// histogram_quantile(0.99, rate(chatkit_fanout_seconds_bucket[5m])).
package chatkitprom
