module github.com/chatkit/chatkit

go 1.26.8

require (
	github.com/coder/websocket v1.8.15
	go.uber.org/goleak v1.3.0
	golang.org/x/time v0.16.0
)
