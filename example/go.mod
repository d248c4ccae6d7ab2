module github.com/chatkit/chatkit/example

go 1.26.8

require (
	github.com/chatkit/chatkit v0.0.0-00010101000000-000000000000
	github.com/chatkit/chatkit/chatkitprom v0.0.0-00010101000000-000000000000
	github.com/chatkit/chatkit/pgstore v0.0.0-00010101000000-000000000000
	github.com/chatkit/chatkit/redisadapter v0.0.0-00010101000000-000000000000
	github.com/chromedp/chromedp v0.23.0
	github.com/coder/websocket v1.8.15
	github.com/jackc/pgx/v5 v5.12.0
	github.com/redis/go-redis/v9 v9.23.0
	go.uber.org/goleak v1.3.0
	golang.org/x/time v0.16.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/chromedp/cdproto v0.159.0 // indirect
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/sync v0.23.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace (
	github.com/chatkit/chatkit => ../
	github.com/chatkit/chatkit/chatkitprom => ../chatkitprom
	github.com/chatkit/chatkit/pgstore => ../pgstore
	github.com/chatkit/chatkit/redisadapter => ../redisadapter
)
