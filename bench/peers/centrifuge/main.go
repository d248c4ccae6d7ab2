// Command centrifuge is the benchmark's peer built on
// github.com/centrifugal/centrifuge: a memory broker (the default), one
// channel per room, anonymous connections, and clients allowed to subscribe
// to and publish into any channel. Compression is off. Clients speak
// centrifuge's JSON protocol over WebSocket at /connection/websocket.
//
//	centrifuge -addr 127.0.0.1:8102
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"time"

	"github.com/centrifugal/centrifuge"
	"github.com/chatkit/chatkit/bench/peers/internal/debugstats"
)

var addr = flag.String("addr", "127.0.0.1:8102", "listen address")

func main() {
	flag.Parse()
	node, err := centrifuge.New(centrifuge.Config{LogLevel: centrifuge.LogLevelError,
		LogHandler: func(e centrifuge.LogEntry) { log.Printf("centrifuge: %s %v", e.Message, e.Fields) }})
	if err != nil {
		log.Fatal(err)
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		// Anonymous: an empty user id.
		return centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{UserID: ""}}, nil
	})
	node.OnConnect(func(client *centrifuge.Client) {
		client.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
		client.OnPublish(func(e centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			cb(centrifuge.PublishReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}
	ws := centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{
		CheckOrigin: func(*http.Request) bool { return true },
		Compression: false,
	})
	mux := http.NewServeMux()
	mux.Handle("/connection/websocket", ws)
	mux.Handle("/debug/stats", debugstats.Handler())
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
