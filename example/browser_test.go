package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
)

// browserEnv makes a missing Chromium fail the browser tests instead of
// skipping them; .ci/run sets it.
const browserEnv = "CHATKIT_BROWSER"

const chromiumPath = "/usr/bin/chromium"

// browser starts a headless Chromium for the test and returns a function
// that opens a new tab, and closes it when the returned cancel is called.
func browser(t *testing.T) func() (context.Context, context.CancelFunc) {
	t.Helper()
	path := chromiumPath
	if p := os.Getenv("CHROMIUM"); p != "" {
		path = p
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv(browserEnv) != "" {
			t.Fatalf("%s is set but Chromium is missing at %s: %v", browserEnv, path, err)
		}
		t.Skipf("no Chromium at %s: install it (apt-get install chromium) and set %s=1 to run the browser tests", path, browserEnv)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 760),
	)
	t.Cleanup(cancelAlloc)
	first, cancelFirst := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelFirst)
	if err := chromedp.Do(first); err != nil { // starts the browser
		t.Fatalf("starting Chromium: %v", err)
	}
	return func() (context.Context, context.CancelFunc) {
		tab, cancel := chromedp.NewContext(first)
		t.Cleanup(cancel)
		return tab, cancel
	}
}

// do runs browser actions, failing the test with what was being done.
func do(t *testing.T, tab context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(tab, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// waitJS waits until the JavaScript expression is truthy: an event-driven
// wait inside the page, bounded by a deadline.
func waitJS(t *testing.T, tab context.Context, what, expr string) {
	t.Helper()
	if _, err := chromedp.Run(tab, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("waiting until %s: %v", what, err)
	}
}

func evalJS[T any](t *testing.T, tab context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(tab, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// countText is a JS expression counting the chat messages whose text is s.
func countText(s string) string {
	q, _ := json.Marshal(s)
	return fmt.Sprintf(`[...document.querySelectorAll("#messages li.msg:not(.pending) .text")].filter(e => e.textContent === %s).length`, q)
}

func member(name string) string {
	return fmt.Sprintf(`!!document.querySelector('#members li[data-user=%q]')`, name)
}

func say(t *testing.T, tab context.Context, text string) {
	t.Helper()
	do(t, tab, "typing "+text, chromedp.SendKeys(chromedp.ID("text"), text), chromedp.Click(chromedp.ID("send")))
}

// TestBrowserChat drives the example page in a real Chromium: two users
// chat, markup stays text, leaves show, and a user who loses her
// connection loses no message, neither received nor sent.
func TestBrowserChat(t *testing.T) {
	newTab := browser(t)
	chat := chatkit.New(chatkit.WithLogger(nil))
	srv := httptest.NewServer(newHandler(chat))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		chat.Shutdown(ctx)
		srv.Close()
	})
	// Alice reaches the server through a proxy that can cut her off.
	proxy := newCutProxy(t, strings.TrimPrefix(srv.URL, "http://"))

	alice, _ := newTab()
	bob, closeBob := newTab()
	do(t, alice, "opening Alice's page", chromedp.Navigate("http://"+proxy.addr()+"/?user=Alice&room=general"))
	waitJS(t, alice, "Alice is connected", `document.querySelector("#status")?.dataset.state === "open"`)
	do(t, bob, "opening Bob's page", chromedp.Navigate(srv.URL+"/?user=Bob&room=general"))
	waitJS(t, bob, "Bob is connected", `document.querySelector("#status")?.dataset.state === "open"`)

	waitJS(t, alice, "Alice sees Bob join", member("Bob"))
	waitJS(t, bob, "Bob sees Alice", member("Alice"))

	say(t, alice, "Hi Bob!")
	waitJS(t, bob, "Bob sees Alice's message", countText("Hi Bob!")+" === 1")
	say(t, bob, "Hey Alice, how are you?")
	waitJS(t, alice, "Alice sees Bob's message", countText("Hey Alice, how are you?")+" === 1")

	// Markup is shown as text and runs nothing.
	const markup = `<b>bold</b><img src=x onerror="window.pwned=1">`
	say(t, bob, markup)
	waitJS(t, alice, "Alice sees the markup as text", countText(markup)+" === 1")
	if n := evalJS[int](t, alice, `document.querySelectorAll("#messages b, #messages img").length`); n != 0 {
		t.Errorf("markup became %d elements", n)
	}
	if pwned := evalJS[bool](t, alice, `window.pwned === 1`); pwned {
		t.Errorf("the onerror handler ran")
	}

	shot := filepath.Join(os.TempDir(), "chatkit-browser-test.png")
	if png, err := chromedp.Run(alice, chromedp.CaptureScreenshot()); err == nil && os.WriteFile(shot, png, 0o644) == nil {
		t.Logf("screenshot of Alice's page: %s", shot)
	}

	// Carol is a plain WebSocket client who tells what the room saw.
	carol := dialCarol(t, srv.URL)

	// Closing Bob's tab shows his leave to Alice.
	closeBob()
	waitJS(t, alice, "Alice sees Bob leave", `!(`+member("Bob")+`) && [...document.querySelectorAll("#messages li.notice")].some(e => e.textContent.includes("Bob left"))`)

	// The server drops Alice while the proxy refuses her reconnects; a
	// message is sent while she is away.
	proxy.refuse(true)
	if n := chat.Disconnect("general", "Alice"); n != 1 {
		t.Fatalf("Disconnect = %d", n)
	}
	waitJS(t, alice, "Alice's page shows it is reconnecting", `document.querySelector("#status").dataset.state === "reconnecting"`)
	carol.say(t, "sent while Alice was away")
	proxy.refuse(false)
	waitJS(t, alice, "Alice is back", `document.querySelector("#status").dataset.state === "open"`)
	carol.say(t, "after Alice came back")
	waitJS(t, alice, "Alice sees what came after", countText("after Alice came back")+" === 1")
	if n := evalJS[int](t, alice, countText("sent while Alice was away")); n != 1 {
		t.Errorf("the message sent while Alice was away shows %d times, want once", n)
	}

	// Alice is cut off by the network (reset, reconnects refused) and sends
	// a message meanwhile: it is delivered once after she is back.
	proxy.refuse(true)
	proxy.reset()
	waitJS(t, alice, "Alice's page notices the cut", `document.querySelector("#status").dataset.state === "reconnecting"`)
	say(t, alice, "typed while offline")
	proxy.refuse(false)
	waitJS(t, alice, "Alice is back again", `document.querySelector("#status").dataset.state === "open"`)
	carol.waitFor(t, "typed while offline")
	carol.say(t, "marker")
	carol.waitFor(t, "marker")
	if n := carol.count("typed while offline"); n != 1 {
		t.Errorf("the room got Alice's offline message %d times, want once", n)
	}
	waitJS(t, alice, "Alice sees the marker", countText("marker")+" === 1")
	if n := evalJS[int](t, alice, countText("typed while offline")); n != 1 {
		t.Errorf("Alice's page shows her offline message %d times, want once", n)
	}
}

// TestBrowserScrollback seeds a room with more messages than a welcome
// carries (the history size, 100): scrolling the page's log to the top
// loads the older ones page by page (50 each) until "beginning of the
// conversation", keeping the view where it was, and then the page shows
// every message once, in id order.
func TestBrowserScrollback(t *testing.T) {
	newTab := browser(t)
	// The store keeps more than a welcome carries, as a database would; the
	// default memory store keeps only the history size.
	chat := chatkit.New(chatkit.WithLogger(nil), chatkit.WithStore(chatkit.NewMemoryStore(1000)))
	srv := httptest.NewServer(newHandler(chat))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		chat.Shutdown(ctx)
		srv.Close()
	})
	const total = 250
	for i := 1; i <= total; i++ {
		if _, err := chat.Broadcast("general", fmt.Sprintf("message %d", i)); err != nil {
			t.Fatal(err)
		}
	}

	tab, _ := newTab()
	do(t, tab, "opening the page", chromedp.Navigate(srv.URL+"/?user=Alice&room=general"))
	waitJS(t, tab, "the welcome's 100 messages show", `document.querySelectorAll("#messages li.msg").length === 100`)
	if top := evalJS[string](t, tab, `document.querySelector("#messages li.msg").dataset.id`); top != "151" {
		t.Fatalf("the oldest message shown is %s, want 151", top)
	}
	// What #older says, as it changes.
	evalJS[bool](t, tab, `window.olderTexts = [];
		new MutationObserver(() => olderTexts.push(older.textContent)).observe(document.getElementById("older"), {childList: true, subtree: true, characterData: true});
		true`)

	// One page: the message that was at the top of the view stays there.
	evalJS[bool](t, tab, `document.getElementById("messages").scrollTop = 0; true`)
	waitJS(t, tab, "a page of 50 is prepended", `document.querySelectorAll("#messages li.msg").length >= 150`)
	offset := evalJS[float64](t, tab, `document.querySelector('#messages li.msg[data-id="151"]').getBoundingClientRect().top - document.getElementById("messages").getBoundingClientRect().top`)
	if offset < 0 || offset > 100 {
		t.Errorf("after the page, message 151 is %.0f px below the top of the log, want where it was (near 0)", offset)
	}

	// The user scrolls to the top, again and again, as pages arrive.
	waitJS(t, tab, "scrolling up reaches the beginning", `(() => {
		const list = document.getElementById("messages");
		list.scrollTop = 0;
		return document.getElementById("older").textContent === "beginning of the conversation";
	})()`)

	shown := evalJS[[]string](t, tab, `[...document.querySelectorAll("#messages li.msg")].map(e => e.dataset.id + " " + e.querySelector(".text").textContent)`)
	var want []string
	for i := 1; i <= total; i++ {
		want = append(want, fmt.Sprintf("%d message %d", i, i))
	}
	if strings.Join(shown, "\n") != strings.Join(want, "\n") {
		t.Errorf("the page shows %d messages, want %d in id order, once each:\n%s", len(shown), total, strings.Join(shown, "\n"))
	}
	if first := evalJS[string](t, tab, `document.querySelector("#messages").firstElementChild.id`); first != "older" {
		t.Errorf("the first item of the log is %q, want the scrollback notice", first)
	}
	if texts := evalJS[[]string](t, tab, `olderTexts`); !slices.Contains(texts, "loading…") {
		t.Errorf("#older never said loading…; it said %q", texts)
	}

	shot := filepath.Join(os.TempDir(), "chatkit-browser-scrollback.png")
	if png, err := chromedp.Run(tab, chromedp.CaptureScreenshot()); err == nil && os.WriteFile(shot, png, 0o644) == nil {
		t.Logf("screenshot of the top of the scrollback: %s", shot)
	}
}

// carolClient is a Go WebSocket client in the room.
type carolClient struct {
	conn *websocket.Conn
	mu   sync.Mutex
	seen map[string]int
	cond chan struct{} // closed and replaced on every new message
}

func dialCarol(t *testing.T, base string) *carolClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/ws?username=Carol&room=general", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &carolClient{conn: conn, seen: map[string]int{}, cond: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			var e struct{ Type, Text string }
			if json.Unmarshal(data, &e) == nil && e.Type == "chat_message" {
				c.mu.Lock()
				c.seen[e.Text]++
				close(c.cond)
				c.cond = make(chan struct{})
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		conn.CloseNow()
		<-done
	})
	return c
}

func (c *carolClient) say(t *testing.T, text string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(text)); err != nil {
		t.Fatal(err)
	}
}

func (c *carolClient) count(text string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[text]
}

func (c *carolClient) waitFor(t *testing.T, text string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		n, changed := c.seen[text], c.cond
		c.mu.Unlock()
		if n > 0 {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("Carol never got %q", text)
		}
	}
}

// cutProxy forwards TCP connections to a backend and can cut them: reset
// every open connection, and refuse new ones while refusing is on. It
// stands for a network that drops, which Chromium's offline emulation does
// not do to an open WebSocket.
type cutProxy struct {
	ln      net.Listener
	backend string

	mu       sync.Mutex
	refusing bool
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func newCutProxy(t *testing.T, backend string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, backend: backend, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.reset()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refusing := p.refusing
		if !refusing {
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if refusing {
			abort(c)
			continue
		}
		p.wg.Go(func() { p.pipe(c) })
	}
}

func (p *cutProxy) pipe(client net.Conn) {
	defer func() {
		p.mu.Lock()
		delete(p.conns, client)
		p.mu.Unlock()
		client.Close()
	}()
	server, err := net.Dial("tcp", p.backend)
	if err != nil {
		return
	}
	defer server.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(server, client); done <- struct{}{} }()
	go func() { io.Copy(client, server); done <- struct{}{} }()
	<-done
	client.Close()
	server.Close()
	<-done
}

func (p *cutProxy) refuse(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refusing = on
}

// reset aborts every open connection with a TCP reset.
func (p *cutProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		abort(c)
	}
}

func abort(c net.Conn) {
	if tcp, ok := c.(*net.TCPConn); ok {
		tcp.SetLinger(0)
	}
	c.Close()
}
