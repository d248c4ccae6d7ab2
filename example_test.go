package chatkit_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/chatkit/chatkit"
	"golang.org/x/time/rate"
)

// Mount the chat and its browser client in an existing mux.
func Example() {
	chat := chatkit.New()
	mux := http.NewServeMux()
	mux.Handle("/ws", chat)
	mux.Handle("/chatkit.js", chatkit.ClientJS())

	srv := &http.Server{Addr: ":8000", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// WebSocket connections are hijacked: http.Server.Shutdown does not
	// wait for them, so shut the chat down with it.
	srv.RegisterOnShutdown(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		chat.Shutdown(ctx)
	})
	log.Fatal(srv.ListenAndServe())
}

// Every option, with its default value.
func ExampleNew() {
	chat := chatkit.New(
		chatkit.WithRoomResolver(func(r *http.Request) (string, error) {
			if room := r.URL.Query().Get("room"); room != "" {
				return room, nil
			}
			return "general", nil
		}),
		chatkit.WithAuth(func(r *http.Request) (string, error) {
			return r.URL.Query().Get("username"), nil
		}),
		chatkit.WithHistorySize(100),
		chatkit.WithRateLimit(rate.Limit(5), 10),
		chatkit.WithPingInterval(30*time.Second),
		chatkit.WithIdleTimeout(60*time.Second),
		chatkit.WithWriteTimeout(10*time.Second),
		chatkit.WithMaxMessageLength(500),
		chatkit.WithOriginPatterns(), // same host only
		chatkit.WithSendQueue(256),
		chatkit.WithDuplicateUsernames(false),
		chatkit.WithLogger(slog.Default()),
		chatkit.WithSystemName(""),
		chatkit.WithRoomTTL(time.Hour),
		chatkit.WithMaxRooms(10000),
	)
	http.Handle("/ws", chat)
}

// Authenticate users from a session cookie; refuse the others with a
// status of your choice.
func ExampleWithAuth() {
	sessions := map[string]string{"s3cr3t": "Alice"} // your session store
	chat := chatkit.New(chatkit.WithAuth(func(r *http.Request) (string, error) {
		c, err := r.Cookie("session")
		if err != nil {
			return "", chatkit.HTTPError{Status: http.StatusUnauthorized, Message: "log in first"}
		}
		name, ok := sessions[c.Value]
		if !ok {
			return "", chatkit.HTTPError{Status: http.StatusForbidden, Message: "session expired"}
		}
		return name, nil
	}))
	http.Handle("/ws", chat)
}

// Moderate messages before they are stored: rewrite or reject them.
func ExampleWithOnMessage() {
	chat := chatkit.New(chatkit.WithOnMessage(func(ctx context.Context, m *chatkit.Message) error {
		if strings.Contains(m.Text, "http://") {
			return errors.New("links must use https") // the sender gets error "rejected"
		}
		m.Text = strings.ReplaceAll(m.Text, "darn", "d**n")
		return nil
	}))
	http.Handle("/ws", chat)
}

// Keep an application-side roster of who is online.
func ExampleWithOnJoin() {
	chat := chatkit.New(
		chatkit.WithOnJoin(func(room, username string) { log.Printf("%s joined %s", username, room) }),
		chatkit.WithOnLeave(func(room, username string) { log.Printf("%s left %s", username, room) }),
	)
	http.Handle("/ws", chat)
}

// Post a server message; it waits in the room's history for the first
// visitors.
func ExampleServer_Broadcast() {
	chat := chatkit.New(chatkit.WithSystemName("ops"))
	m, err := chat.Broadcast("general", "maintenance at 22:00 UTC")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.ID, m.Username, m.Text)
	fmt.Println(chat.Rooms())
	// Output:
	// 1 ops maintenance at 22:00 UTC
	// [general]
}

// List the rooms held in memory: those with members and the empty ones
// still keeping history.
func ExampleServer_Rooms() {
	chat := chatkit.New()
	chat.Broadcast("support", "opening hours: 9-17")
	chat.Broadcast("general", "welcome")
	fmt.Println(chat.Rooms())
	// Output: [general support]
}

// Ask who is present.
func ExampleServer_ActiveUsers() {
	chat := chatkit.New()
	fmt.Println(chat.ActiveUsers("general") == nil) // nobody connected yet
	// Output: true
}

// Close a user's sessions in a room, for example after a moderator's
// decision; WithAuth keeps them from coming back.
func ExampleServer_Disconnect() {
	chat := chatkit.New()
	n := chat.Disconnect("general", "mallory")
	fmt.Println(n)
	// Output: 0
}

// Stop gracefully on a signal: clients get close code 1001.
func ExampleServer_Shutdown() {
	chat := chatkit.New()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := chat.Shutdown(ctx); err != nil {
		log.Print(err)
	}
	_, err := chat.Broadcast("general", "anyone?")
	fmt.Println(errors.Is(err, chatkit.ErrServerClosed))
	// Output: true
}

// Serve the browser client library next to the chat.
func ExampleClientJS() {
	http.Handle("/chatkit.js", chatkit.ClientJS())
}

// Serve one chat from several Servers of one process, as the redisadapter
// package does across processes: a message stored through one is in the
// history of every other.
func ExampleNewMemoryCluster() {
	cluster := chatkit.NewMemoryCluster(100)
	a := chatkit.New(chatkit.WithAdapter(cluster.Node()))
	b := chatkit.New(chatkit.WithAdapter(cluster.Node()))
	a.Broadcast("general", "stored through a")
	m, _ := b.Broadcast("general", "stored through b")
	fmt.Println(m.ID)
	// Output: 2
}

// Expose the server's counters, here as a readiness check and a log line;
// the chatkitprom package exports them to Prometheus.
func ExampleServer_Stats() {
	chat := chatkit.New()
	chat.Broadcast("general", "hello")
	st := chat.Stats()
	fmt.Println(st.MessagesStored, st.Sessions, chat.Ready(context.Background()))
	// Output: 1 0 <nil>
}
