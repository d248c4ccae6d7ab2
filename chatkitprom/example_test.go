package chatkitprom_test

import (
	"net/http"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkitprom"
	"github.com/prometheus/client_golang/prometheus"
)

// A program serves its chat and, next to it, the chat's metrics with the
// Go runtime's and the process's.
func ExampleHandler() {
	chat := chatkit.New()
	mux := http.NewServeMux()
	mux.Handle("/chat", chat)
	mux.Handle("/metrics", chatkitprom.Handler(chat))
	_ = http.ListenAndServe(":8080", mux)
}

// A program that has a registry already, here the default one, registers
// a Collector; WithLabels tells the nodes of a cluster apart.
func ExampleNewCollector() {
	chat := chatkit.New()
	prometheus.MustRegister(chatkitprom.NewCollector(chat, chatkitprom.WithLabels(prometheus.Labels{"node": "a"})))
}
