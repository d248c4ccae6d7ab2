module github.com/chatkit/chatkit/bench/chatkitserver

go 1.26.8

require (
	github.com/chatkit/chatkit v0.0.0-00010101000000-000000000000
	github.com/chatkit/chatkit/redisadapter v0.0.0-00010101000000-000000000000
	github.com/redis/go-redis/v9 v9.23.0
	golang.org/x/time v0.16.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/coder/websocket v1.8.15 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)

replace github.com/chatkit/chatkit => ../../

replace github.com/chatkit/chatkit/redisadapter => ../../redisadapter
