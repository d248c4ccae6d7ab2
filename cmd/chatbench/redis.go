package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// redisCalls asks the Redis at addr for INFO commandstats and returns the
// calls of each command since Redis started. A request and one bulk-string
// reply are all chatbench needs, so it speaks RESP itself rather than
// depend on a Redis client.
func redisCalls(addr string) (map[string]int64, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n"); err != nil {
		return nil, err
	}
	text, err := readBulk(bufio.NewReader(conn))
	if err != nil {
		return nil, err
	}
	return parseCommandstats(text), nil
}

// readBulk reads one RESP bulk string ($<len>\r\n<bytes>\r\n); an error
// reply (-ERR ...) becomes an error.
func readBulk(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("redis: %s", line[1:])
	case !strings.HasPrefix(line, "$"):
		return "", fmt.Errorf("redis: unexpected reply %q", line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n < 0 {
		return "", fmt.Errorf("redis: bad bulk length %q", line)
	}
	buf := make([]byte, n+2) // the text and its \r\n
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// parseCommandstats reads the lines
//
//	cmdstat_evalsha:calls=12,usec=345,usec_per_call=28.75,rejected_calls=0,failed_calls=0
//
// into command -> calls. Redis counts the commands a script runs as well
// as the script itself (an EVALSHA that runs a ZADD adds a call to both).
func parseCommandstats(text string) map[string]int64 {
	calls := map[string]int64{}
	for line := range strings.SplitSeq(text, "\n") {
		name, stats, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for kv := range strings.SplitSeq(stats, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					calls[strings.TrimPrefix(name, "cmdstat_")] = n
				}
				break
			}
		}
	}
	return calls
}

// redisDelta is what Redis executed between two readings, leaving out
// chatbench's own INFO.
func redisDelta(before, after map[string]int64) (total int64, byCmd map[string]int64) {
	byCmd = map[string]int64{}
	for cmd, n := range after {
		if d := n - before[cmd]; d > 0 && cmd != "info" {
			byCmd[cmd] = d
			total += d
		}
	}
	return total, byCmd
}
