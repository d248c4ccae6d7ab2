package main

import (
	"bufio"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Member i connects to URL i mod n, whatever its room, so that every room
// (its publishers, members 0..3, included) is split evenly over the nodes.
func TestURLsRoundRobin(t *testing.T) {
	cfg, err := parseFlags("fanout", []string{"-url", "ws://127.0.0.1:8101/ws, ws://127.0.0.1:8102/ws,ws://127.0.0.1:8103/x", "-pid", "11,12,0,13"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.urls) != 3 || len(cfg.pids) != 3 || cfg.pids[2] != 13 {
		t.Fatalf("urls %q pids %v", cfg.urls, cfg.pids)
	}
	cfg.maxFD = 64
	ad, _ := newAdapter("chatkit")
	b, err := newBench(cfg, ad)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	want := []string{"127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8103", "127.0.0.1:8101", "127.0.0.1:8102"}
	for i, w := range want {
		if got := b.serverOf(i).Host; got != w {
			t.Errorf("member %d: %s, want %s", i, got, w)
		}
	}
	if got := ad.requestURI(b.serverOf(2), "u2", "r"); got != "/x?room=r&username=u2" {
		t.Errorf("member 2's request URI: %s", got)
	}

	// One URL: the single-server flags as they always were.
	one, err := parseFlags("fanout", []string{"-url", "ws://127.0.0.1:8100/ws", "-pid", "0"})
	if err != nil || len(one.urls) != 1 || len(one.pids) != 0 {
		t.Fatalf("single url: %v %q %v", err, one.urls, one.pids)
	}
	if _, err := parseFlags("fanout", []string{"-url", "ws://127.0.0.1:8100/ws", "-pid", "1,x"}); err == nil {
		t.Error("-pid 1,x accepted")
	}
	if _, err := newBench(&config{urls: []string{"ws://127.0.0.1:1/ws", "http://127.0.0.1:2/"}, maxFD: 64}, ad); err == nil {
		t.Error("an http:// URL among several accepted")
	}
}

func TestReadProcsSums(t *testing.T) {
	me := os.Getpid()
	// The process's own RSS moves between readings (the GC returns
	// memory), so the sum is bracketed by readings before and after it,
	// with a margin.
	before, two, after := readProcs([]int{me}), readProcs([]int{me, me}), readProcs([]int{me})
	lo, hi := 2*min(before.rssKiB, after.rssKiB), 2*max(before.rssKiB, after.rssKiB)
	if !before.ok || !two.ok || !after.ok || two.rssKiB < lo*8/10 || two.rssKiB > hi*12/10 || two.cpu < before.cpu {
		t.Fatalf("before %+v two %+v after %+v", before, two, after)
	}
	if readProcs(nil).ok || readProcs([]int{me, 1 << 30}).ok {
		t.Error("a reading without processes, or with a missing one, is ok")
	}
}

const commandstats = "# Commandstats\r\n" +
	"cmdstat_publish:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_evalsha:calls=1000,usec=9000,usec_per_call=9.00,rejected_calls=0,failed_calls=1\r\n" +
	"cmdstat_client|setname:calls=3,usec=1,usec_per_call=0.33,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_info:calls=7,usec=300,usec_per_call=42.86,rejected_calls=0,failed_calls=0\r\n"

func TestCommandstats(t *testing.T) {
	got := parseCommandstats(commandstats)
	want := map[string]int64{"publish": 10, "evalsha": 1000, "client|setname": 3, "info": 7}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %d, want %d", k, got[k], v)
		}
	}
	after := map[string]int64{"publish": 14, "evalsha": 1500, "client|setname": 3, "info": 9, "zadd": 2}
	total, by := redisDelta(got, after)
	if total != 4+500+2 || by["evalsha"] != 500 || by["zadd"] != 2 || by["info"] != 0 || len(by) != 3 {
		t.Errorf("delta %d %v", total, by)
	}

	// The RESP framing: a bulk string holding \r\n inside, and an error.
	r := bufio.NewReader(strings.NewReader("$" + strconv.Itoa(len(commandstats)) + "\r\n" + commandstats + "\r\n-ERR nope\r\n"))
	if s, err := readBulk(r); err != nil || s != commandstats {
		t.Fatalf("bulk: %q %v", s, err)
	}
	if _, err := readBulk(r); err == nil || !strings.Contains(err.Error(), "ERR nope") {
		t.Errorf("error reply: %v", err)
	}
}

// redisCalls against a fake Redis that checks the request.
func TestRedisCallsOverTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req := make([]byte, len("*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n"))
		if _, err := io.ReadFull(c, req); err != nil || string(req) != "*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n" {
			io.WriteString(c, "-ERR unexpected request\r\n")
			return
		}
		io.WriteString(c, "$"+strconv.Itoa(len(commandstats))+"\r\n"+commandstats+"\r\n")
	}()
	calls, err := redisCalls(ln.Addr().String())
	if err != nil || calls["evalsha"] != 1000 {
		t.Fatalf("%v %v", calls, err)
	}
}

// The report shows a two-node contender as another row, says what it is,
// and gives its Redis commands per message.
func TestReportTwoNodes(t *testing.T) {
	mk := func(label string, m map[string]float64, p map[string]any) *Result {
		m["deliveries_per_s"] = 1000
		return &Result{Workload: "fanout", Case: "members=10", Label: label, Valid: true, Bound: "server", Metrics: m, Params: p}
	}
	md := renderReport("t", "chatkit", nil, []*Result{
		mk("chatkit", map[string]float64{}, map[string]any{"publishers": 4}),
		mk("chatkit-2node", map[string]float64{"redis_cmds_per_msg": 6.001, "redis_per_msg_evalsha": 1, "redis_per_msg_zadd": 5, "redis_per_msg_hset": 0.001}, map[string]any{"publishers": 4, "servers": 2}),
	})
	for _, want := range []string{"| chatkit-2node | 1/1 |", "chatkit-2node: 2 chatkitserver processes",
		"per published message", "chatkit-2node 6.00 (zadd 5.00, evalsha 1.00, other 0.001)"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
