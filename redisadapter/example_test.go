package redisadapter_test

import (
	"log"
	"net/http"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/redisadapter"
	"github.com/redis/go-redis/v9"
)

// Each process of the chat serves it with its own Adapter on the shared
// Redis.
func Example() {
	client := redis.NewClient(&redis.Options{
		Addr: "127.0.0.1:6379",
		// End each call at the Server's WithStoreTimeout.
		ContextTimeoutEnabled: true,
	})
	defer client.Close()
	adapter := redisadapter.New(client, redisadapter.WithPrefix("mychat"))
	defer adapter.Close()

	srv := chatkit.New(chatkit.WithAdapter(adapter))
	if err := http.ListenAndServe(":8080", srv); err != nil {
		log.Print(err)
	}
}
