// Unit tests for the pure logic of client.js: run with `node --test client_test.mjs` (Node 20+, no dependencies).
// The browser itself is replaced by injected fakes: WebSocket, timers, clock, random and location.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";

const src = readFileSync(new URL("./client.js", import.meta.url), "utf8");
// Node 20.19+ detects the ES module syntax of client.js by itself; older ones need a data: URL.
const mod = await import("./client.js").catch(() => import("data:text/javascript;base64," + Buffer.from(src).toString("base64")));
const { connect, backoff, buildURL, ChatError } = mod;

const EVENTS = ["status", "welcome", "message", "join", "leave", "typing", "users", "gap", "error"];

/** A chat connected to fakes, with helpers to play the server. */
function harness(opts = {}) {
  const sockets = [];
  const timers = [];
  let now = 1_000_000;
  class FakeWS {
    constructor(url, protocols) {
      this.url = new URL(url);
      this.protocols = protocols;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(d) {
      assert.equal(typeof d, "string", "text frames only");
      this.sent.push(JSON.parse(d));
    }
    close(code) {
      this.closedWith = code;
    }
  }
  const env = {
    WebSocket: FakeWS,
    location: { href: "http://chat.example:8000/?user=Alice" },
    setTimeout: (f, ms) => {
      const t = { f, at: now + ms, ms };
      timers.push(t);
      return t;
    },
    clearTimeout: (t) => {
      const i = timers.indexOf(t);
      if (i >= 0) timers.splice(i, 1);
    },
    random: () => 0.5,
    now: () => now,
  };
  const chat = connect("/ws", { username: "Alice", room: "general", ...env, ...opts });
  const events = [];
  for (const ev of EVENTS) chat.on(ev, (e) => events.push([ev, e]));
  const h = {
    chat,
    sockets,
    timers,
    events,
    ws: () => sockets.at(-1),
    of: (ev) => events.filter((e) => e[0] === ev).map((e) => e[1]),
    /** Moves the clock and runs the timers that are due, in time order. */
    advance(ms) {
      const end = now + ms;
      for (;;) {
        timers.sort((a, b) => a.at - b.at);
        const t = timers[0];
        if (!t || t.at > end) break;
        timers.shift();
        now = Math.max(now, t.at);
        t.f();
      }
      now = end;
    },
    recv(obj, ws = h.ws()) {
      ws.onmessage({ data: JSON.stringify(obj) });
    },
    welcome(extra = {}) {
      h.recv({
        type: "welcome",
        room: "general",
        username: "Alice",
        session_id: "s" + sockets.length,
        epoch: "E1",
        active_users: ["Alice", "Bob"],
        history: [],
        history_truncated: false,
        limits: { max_message_length: 500, rate: 5, burst: 10, history_size: 100, ping_interval_ms: 30000 },
        ...extra,
      });
    },
    drop(code = 1006, reason = "") {
      h.ws().onclose({ code, reason });
    },
    /** The history requests sent on the current socket (or ws). */
    asked: (ws = h.ws()) => ws.sent.filter((f) => f.type === "history"),
    /** Answers a history request with a page of messages (ids or messages). */
    page(ask, messages, hasMore) {
      const list = messages.map((m) => (typeof m === "number" ? msg(m) : m));
      h.recv({ type: "history", room: "general", request_id: ask.request_id, messages: list, has_more: hasMore });
    },
    /** Lets the promise callbacks run. */
    tick: () => new Promise((r) => setImmediate(r)),
  };
  return h;
}

const msg = (id, extra = {}) => ({
  type: "chat_message",
  room: "general",
  id,
  username: "Bob",
  text: "m" + id,
  timestamp: "2026-11-28T07:30:00.120Z",
  ...extra,
});

/** Ids a to b, inclusive. */
const ids = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const msgs = (a, b) => ids(a, b).map((id) => msg(id));

test("backoff: full jitter, from 0.5 s doubling to a 30 s cap", () => {
  const top = () => 0.999999;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7, 50, 5000].map((n) => backoff(n, top)),
    [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999, 29999],
  );
  assert.equal(backoff(3, () => 0), 0);
  assert.equal(backoff(1, () => 0.5), 500);
  for (let i = 0; i < 1000; i++) {
    const d = backoff(i % 10);
    assert.ok(d >= 0 && d < Math.min(30000, 500 * 2 ** (i % 10)) && Number.isInteger(d));
  }
});

test("buildURL: ws/wss from the page, params encoded", () => {
  assert.equal(buildURL("/ws", { href: "http://h:8000/x/y?user=a" }), "ws://h:8000/ws");
  assert.equal(buildURL("/ws", { href: "https://h/" }), "wss://h/ws");
  assert.equal(buildURL("ws", { href: "https://h/app/page" }), "wss://h/app/ws");
  assert.equal(buildURL("wss://other:9/chat", { href: "http://h/" }), "wss://other:9/chat");
  assert.equal(buildURL("https://other/chat"), "wss://other/chat");
  const u = new URL(
    buildURL("/ws?v=1", { href: "http://h/" }, { username: "Zoë & Bob", room: "a.b-c", token: "t+/=", skip: null, no: undefined, n: 0 }),
  );
  assert.equal(u.protocol, "ws:");
  assert.deepEqual(Object.fromEntries(u.searchParams), { v: "1", username: "Zoë & Bob", room: "a.b-c", token: "t+/=", n: "0" });
  assert.throws(() => buildURL("/ws"), TypeError); // a path needs a page location
});

test("connect: URL with username, room, extra params; resume with since and epoch", () => {
  let calls = 0;
  const h = harness({ params: () => ({ token: "tok" + ++calls }) });
  const q = () => Object.fromEntries(h.ws().url.searchParams);
  assert.equal(h.ws().url.origin, "ws://chat.example:8000");
  assert.equal(h.ws().url.pathname, "/ws");
  assert.deepEqual(q(), { token: "tok1", username: "Alice", room: "general" });
  assert.equal(h.chat.status, "connecting");
  h.welcome({ history: [msg(1), msg(2)] });
  h.drop();
  h.advance(30000);
  assert.equal(h.sockets.length, 2);
  assert.deepEqual(q(), { token: "tok2", username: "Alice", room: "general", since: "2", epoch: "E1" });
  h.welcome();
  h.drop();
  h.advance(30000);
  assert.deepEqual(q(), { token: "tok3", username: "Alice", room: "general", since: "2", epoch: "E1" });
});

test("connect: a welcome with an empty room resumes from since=0", () => {
  const h = harness({ params: { token: "x" } });
  h.welcome({ active_users: ["Alice"] });
  h.drop(1001, "server shutting down");
  h.advance(30000);
  assert.deepEqual(Object.fromEntries(h.ws().url.searchParams), { token: "x", username: "Alice", room: "general", since: "0", epoch: "E1" });
});

test("connect: username and room are checked before any request", () => {
  assert.throws(() => harness({ username: "  " }), { code: "bad_username" });
  assert.throws(() => harness({ username: "x".repeat(33) }), { code: "bad_username" });
  assert.throws(() => harness({ username: "a\u0007b" }), { code: "bad_username" });
  assert.throws(() => harness({ room: "no spaces" }), { code: "bad_room" });
  assert.throws(() => harness({ room: "r".repeat(65) }), { code: "bad_room" });
  assert.equal(Object.fromEntries(harness({ username: " 😀".repeat(16) }).ws().url.searchParams).username, "😀 ".repeat(15) + "😀");
  const h = harness({ username: undefined, room: undefined }); // a custom auth / room resolver decides
  assert.deepEqual([...h.ws().url.searchParams], []);
});

test("resume: messages are deduplicated by id within one epoch", () => {
  const h = harness();
  h.welcome({ history: [msg(1), msg(2), msg(3)] });
  h.recv(msg(4));
  h.recv(msg(4)); // a duplicate
  h.recv(msg(3));
  assert.deepEqual(h.of("message").map((m) => [m.id, m.history]), [[1, true], [2, true], [3, true], [4, false]]);
  assert.equal(h.chat.lastId, 4);
  h.drop();
  h.advance(1000);
  assert.equal(h.ws().url.searchParams.get("since"), "4");
  h.welcome({ history: [msg(3), msg(4), msg(5)] }); // overlap is dropped
  h.recv(msg(5));
  h.recv(msg(6));
  assert.deepEqual(h.of("message").map((m) => m.id), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(h.of("gap"), []);
});

test("resume: history_truncated emits gap before the history when the store cannot fill it", () => {
  const h = harness();
  h.welcome({ history: [msg(1)] });
  h.drop();
  h.advance(1000);
  h.welcome({ history: [msg(40), msg(41)], history_truncated: true });
  const [ask] = h.asked();
  assert.deepEqual({ ...ask, request_id: undefined }, { type: "history", before: 40, limit: 100, request_id: undefined });
  h.page(ask, [], false); // the store no longer has them
  const order = h.events.filter(([e]) => ["gap", "message", "welcome"].includes(e)).map(([e, d]) => e + (d.id ?? ""));
  assert.deepEqual(order, ["welcome", "message1", "welcome", "gap", "message40", "message41"]);
  assert.deepEqual(h.of("gap"), [{ reset: false, since: 1 }]);
});

test("resume: a new epoch resets the ids and emits one gap with reset", () => {
  const h = harness();
  h.welcome({ history: [msg(1), msg(2), msg(3)] });
  h.drop(1001, "server shutting down");
  h.advance(1000);
  assert.equal(h.ws().url.searchParams.get("epoch"), "E1");
  h.welcome({ epoch: "E2", history: [msg(1, { text: "new1" }), msg(2, { text: "new2" })], history_truncated: true });
  assert.deepEqual(h.of("gap"), [{ reset: true, since: 3 }]);
  assert.deepEqual(h.of("message").map((m) => m.text), ["m1", "m2", "m3", "new1", "new2"]);
  assert.equal(h.chat.lastId, 2);
  assert.equal(h.chat.epoch, "E2");
  h.recv(msg(3, { text: "new3" }));
  assert.equal(h.of("message").at(-1).text, "new3");
  h.drop();
  h.advance(1000);
  assert.deepEqual([h.ws().url.searchParams.get("since"), h.ws().url.searchParams.get("epoch")], ["3", "E2"]);
});

test("resume: same epoch but a since above the room's ids (whole history, truncated) resets too", () => {
  const h = harness();
  h.welcome({ history: [msg(8), msg(9)] });
  h.drop();
  h.advance(1000);
  h.welcome({ history: [msg(1, { text: "other1" }), msg(2, { text: "other2" })], history_truncated: true });
  assert.deepEqual(h.of("gap"), [{ reset: true, since: 9 }]);
  assert.deepEqual(h.of("message").map((m) => m.text), ["m8", "m9", "other1", "other2"]);
  assert.equal(h.chat.lastId, 2);
  // truncated with nothing kept (e.g. history disabled): a gap, and newer ids still pass
  h.drop();
  h.advance(1000);
  h.welcome({ history: [], history_truncated: true });
  assert.deepEqual(h.of("gap").at(-1), { reset: false, since: 2 });
  h.recv(msg(3));
  assert.equal(h.of("message").at(-1).id, 3);
});

test("resume: a second welcome on an open connection is handled like a reconnect's", () => {
  const h = harness();
  h.welcome({ history: msgs(1, 3) });
  h.welcome({ history: msgs(2, 5) }); // same epoch: deduplicated
  assert.deepEqual(h.of("message").map((m) => m.id), ids(1, 5));
  assert.deepEqual(h.of("gap"), []);
  h.welcome({ epoch: "E2", history: msgs(1, 2), history_truncated: true }); // new epoch: reset
  assert.deepEqual(h.of("gap"), [{ reset: true, since: 5 }]);
  assert.deepEqual(h.of("message").map((m) => m.id), [...ids(1, 5), 1, 2]);
  assert.equal(h.sockets.length, 1);
});

test("batched frames (chatkit.v1): several events separated by newlines", () => {
  const h = harness();
  assert.deepEqual(h.ws().protocols, ["chatkit.v1"]);
  const welcome = { type: "welcome", room: "general", username: "Alice", session_id: "s", epoch: "E", active_users: ["Alice"], history: [], history_truncated: false, limits: {} };
  const joined = { type: "user_joined", room: "general", username: "Bob", active_users: ["Alice", "Bob"], timestamp: "2026-11-28T07:30:00.120Z" };
  h.ws().onmessage({ data: [welcome, joined, msg(1, { text: "a\nb" }), msg(2)].map((e) => JSON.stringify(e)).join("\n") });
  assert.equal(h.chat.status, "open");
  assert.deepEqual(h.chat.users, ["Alice", "Bob"]);
  assert.deepEqual(h.of("message").map((m) => m.text), ["a\nb", "m2"]);
});

test("send: rate 0 in limits means no pacing", () => {
  const h = harness();
  for (let i = 0; i < 30; i++) h.chat.send("q" + i);
  h.welcome({ limits: { max_message_length: 500, rate: 0, burst: 0 } });
  assert.equal(h.ws().sent.length, 30);
  h.chat.send("direct");
  assert.equal(h.ws().sent.length, 31);
});

test("resume: no gap on the first welcome", () => {
  const h = harness();
  h.welcome({ history: [msg(7)], history_truncated: true });
  assert.deepEqual(h.of("gap"), []);
  assert.equal(h.of("message").length, 1);
});

test("send: frame, unique client_msg_id, resolves on ack", async () => {
  const h = harness();
  h.welcome();
  const p1 = h.chat.send("hi");
  const p2 = h.chat.send("there");
  const [f1, f2] = h.ws().sent;
  assert.deepEqual(Object.keys(f1), ["type", "text", "client_msg_id"]);
  assert.equal(f1.type, "chat_message");
  assert.equal(f1.text, "hi");
  assert.equal(f1.client_msg_id, p1.clientMsgId);
  assert.notEqual(f1.client_msg_id, f2.client_msg_id);
  assert.ok(f1.client_msg_id.length <= 64);
  h.recv({ type: "ack", client_msg_id: f1.client_msg_id, id: 17 });
  assert.deepEqual(await p1, { id: 17, clientMsgId: f1.client_msg_id });
  // resolved by its own chat_message coming back, before the ack
  h.recv(msg(18, { username: "Alice", text: "there", client_msg_id: f2.client_msg_id }));
  assert.deepEqual(await p2, { id: 18, clientMsgId: f2.client_msg_id });
  h.recv({ type: "ack", client_msg_id: f2.client_msg_id, id: 18 }); // late ack: harmless
  assert.equal(h.chat.queued, 0);
});

test("send: ids differ between two clients with a real random", () => {
  const a = harness({ random: Math.random }).chat.send("x").clientMsgId;
  const b = harness({ random: Math.random }).chat.send("x").clientMsgId;
  assert.notEqual(a, b);
});

test("send: rejects on the server's error event, with code, text and retryAfterMs", async () => {
  const h = harness();
  h.welcome();
  const p = h.chat.send("spam");
  const cid = h.ws().sent[0].client_msg_id;
  h.recv({ type: "error", code: "rate_limited", error: "slow down", client_msg_id: cid, retry_after_ms: 1200 });
  await assert.rejects(p, (e) => e instanceof ChatError && e.code === "rate_limited" && e.message === "slow down" && e.retryAfterMs === 1200 && e.clientMsgId === cid);
  const q = h.chat.send("bad");
  h.recv({ type: "error", code: "rejected", error: "no links", client_msg_id: h.ws().sent[1].client_msg_id });
  await assert.rejects(q, { code: "rejected", message: "no links" });
  // an error about no pending send is an "error" event
  h.recv({ type: "error", code: "bad_request", error: "unknown type" });
  assert.deepEqual(h.of("error").map((e) => [e.code, e.message]), [["bad_request", "unknown type"]]);
});

test("send: client-side checks from welcome.limits, in code points", async () => {
  const h = harness();
  await assert.rejects(h.chat.send("   \n\t"), { code: "empty_message" });
  await assert.rejects(h.chat.send(""), { code: "empty_message" });
  h.welcome({ limits: { max_message_length: 5, rate: 5, burst: 10 } });
  h.chat.send("😀😀😀😀😀"); // 5 code points, 10 UTF-16 units
  await assert.rejects(h.chat.send("😀😀😀😀😀😀"), { code: "message_too_long", message: "message exceeds 5 characters" });
  await assert.rejects(h.chat.send(42), { code: "empty_message" });
  assert.deepEqual(h.ws().sent.map((f) => f.text), ["😀😀😀😀😀"]);
});

test("send: queued while disconnected, sent after the resume with the same client_msg_id, once", async () => {
  const h = harness();
  const early = h.chat.send("before welcome");
  assert.equal(h.ws().sent.length, 0);
  h.welcome();
  assert.deepEqual(h.ws().sent.map((f) => [f.text, f.client_msg_id]), [["before welcome", early.clientMsgId]]);
  h.recv({ type: "ack", client_msg_id: early.clientMsgId, id: 1 });
  await early;

  const inflight = h.chat.send("lost in flight");
  h.drop();
  const offline = h.chat.send("typed offline");
  assert.equal(h.chat.status, "reconnecting");
  h.advance(1000);
  assert.equal(h.ws().sent.length, 0, "nothing before welcome");
  h.welcome({ history: [msg(1, { username: "Alice", text: "before welcome", client_msg_id: early.clientMsgId })] });
  assert.deepEqual(h.ws().sent.map((f) => [f.text, f.client_msg_id]), [
    ["lost in flight", inflight.clientMsgId],
    ["typed offline", offline.clientMsgId],
  ]);
  h.recv({ type: "ack", client_msg_id: inflight.clientMsgId, id: 2 });
  h.recv({ type: "ack", client_msg_id: offline.clientMsgId, id: 3 });
  assert.deepEqual([(await inflight).id, (await offline).id], [2, 3]);
});

test("send: a message stored before the drop is found in the history and not sent again", async () => {
  const h = harness();
  h.welcome();
  const p = h.chat.send("stored, ack lost");
  const cid = p.clientMsgId;
  h.drop();
  h.advance(1000);
  h.welcome({ history: [msg(1, { username: "Alice", text: "stored, ack lost", client_msg_id: cid })] });
  assert.deepEqual((await p).id, 1);
  assert.equal(h.ws().sent.length, 0);
  assert.equal(h.of("message").length, 1);
});

test("send: the queue is bounded at 100 and rejects past that", async () => {
  const h = harness();
  const ps = Array.from({ length: 100 }, (_, i) => h.chat.send("m" + i));
  await assert.rejects(h.chat.send("one too many"), { code: "queue_full" });
  assert.equal(h.chat.queued, 100);
  h.welcome({ limits: { max_message_length: 500, rate: 1000, burst: 1000 } });
  assert.equal(h.ws().sent.length, 100);
  h.recv({ type: "ack", client_msg_id: ps[0].clientMsgId, id: 1 });
  h.chat.send("fits again");
  await assert.rejects(h.chat.send("full again"), { code: "queue_full" });
  const small = harness({ maxQueue: 2 });
  small.chat.send("a");
  small.chat.send("b");
  await assert.rejects(small.chat.send("c"), { code: "queue_full" });
});

test("send: a queue flush is paced under the server's rate limit", () => {
  const h = harness();
  for (let i = 0; i < 14; i++) h.chat.send("q" + i);
  h.welcome({ limits: { max_message_length: 500, rate: 5, burst: 10 } });
  assert.equal(h.ws().sent.length, 10, "the burst goes at once");
  h.advance(200);
  assert.equal(h.ws().sent.length, 10, "5/s with a 10% margin: not before 223 ms");
  h.advance(30);
  assert.equal(h.ws().sent.length, 11);
  h.advance(3 * 223);
  assert.deepEqual(h.ws().sent.map((f) => f.text), Array.from({ length: 14 }, (_, i) => "q" + i));
});

test("send: rate_limited on a queued message waits and retries it, in order", async () => {
  const h = harness();
  const a = h.chat.send("a");
  const b = h.chat.send("b");
  h.welcome();
  h.recv({ type: "error", code: "rate_limited", error: "slow", client_msg_id: a.clientMsgId, retry_after_ms: 1000 });
  h.recv({ type: "error", code: "rate_limited", error: "slow", client_msg_id: b.clientMsgId, retry_after_ms: 1000 });
  assert.equal(h.ws().sent.length, 2);
  h.advance(900);
  assert.equal(h.ws().sent.length, 2);
  h.advance(2000);
  assert.deepEqual(h.ws().sent.map((f) => f.text), ["a", "b", "a", "b"]);
  h.recv({ type: "ack", client_msg_id: a.clientMsgId, id: 1 });
  h.recv({ type: "ack", client_msg_id: b.clientMsgId, id: 2 });
  assert.deepEqual([(await a).id, (await b).id], [1, 2]);
});

test("send: unavailable keeps the message and sends it again with backoff, same client_msg_id", async () => {
  const h = harness();
  h.welcome({ limits: { max_message_length: 500, rate: 0, burst: 0 } }); // unlimited: the hold is the backoff's
  const a = h.chat.send("a");
  const cid = h.ws().sent[0].client_msg_id;
  h.recv({ type: "error", code: "unavailable", error: "store down", client_msg_id: cid });
  h.advance(400);
  assert.equal(h.ws().sent.length, 1, "not before 500 ms");
  h.advance(2000);
  assert.deepEqual(h.ws().sent.map((f) => f.client_msg_id), [cid, cid]);
  h.recv({ type: "error", code: "unavailable", error: "store down", client_msg_id: cid });
  h.advance(20000);
  assert.equal(h.ws().sent.length, 3, "still retried");
  assert.deepEqual(h.of("error"), [], "not an error for the page while it retries");
  h.recv({ type: "ack", client_msg_id: cid, id: 9 });
  assert.equal((await a).id, 9);
});

test("close 1008 username taken just after a reconnect: its own session on a dead node, retried for a minute", () => {
  const h = harness();
  h.welcome();
  h.drop(); // the node died
  h.advance(1000);
  h.drop(1008, "username taken"); // another node still lists the old session
  assert.equal(h.chat.status, "reconnecting");
  h.advance(30000);
  assert.equal(h.sockets.length, 3);
  h.advance(40000);
  h.drop(1008, "username taken"); // a minute later it is someone else
  assert.equal(h.chat.status, "closed");
  assert.deepEqual(h.of("error").map((e) => e.code), ["username_taken"]);
});

test("reconnect: backoff grows without a welcome and resets after a stable minute", () => {
  const h = harness({ random: () => 0.999999 });
  const delays = () => h.of("status").filter((s) => s.state === "reconnecting").map((s) => s.delayMs);
  for (let i = 0; i < 8; i++) {
    h.drop(); // e.g. server down: closed before opening
    h.advance(30000);
  }
  assert.deepEqual(delays(), [499, 999, 1999, 3999, 7999, 15999, 29999, 29999]);
  assert.equal(h.sockets.length, 9);
  h.welcome();
  h.advance(20000); // up for 20 s only: keeps growing
  h.drop(1008, "too slow");
  assert.equal(delays().at(-1), 29999);
  h.advance(30000);
  h.welcome();
  h.advance(60000); // a stable minute
  h.drop(1001, "idle timeout");
  assert.equal(delays().at(-1), 499);
  assert.deepEqual(h.of("status").at(-1), { state: "reconnecting", code: 1001, reason: "idle timeout", delayMs: 499, attempt: 1 });
});

test("reconnect: status sequence and retry timing", () => {
  const h = harness();
  h.welcome();
  assert.equal(h.chat.status, "open");
  h.drop(1001, "server shutting down");
  assert.equal(h.timers.length, 1);
  assert.equal(h.timers[0].ms, 250); // random 0.5 * 500
  h.advance(249);
  assert.equal(h.sockets.length, 1);
  h.advance(1);
  assert.equal(h.sockets.length, 2);
  assert.equal(h.chat.status, "reconnecting");
  h.welcome();
  assert.deepEqual(h.of("status").map((s) => s.state), ["open", "reconnecting", "open"]);
});

test("reconnect: reconnect() skips the wait", () => {
  const h = harness();
  h.drop();
  assert.equal(h.sockets.length, 1);
  h.chat.reconnect();
  assert.equal(h.sockets.length, 2);
  assert.equal(h.timers.length, 0);
  h.chat.reconnect(); // already connecting: no-op
  assert.equal(h.sockets.length, 2);
});

for (const [code, reason] of [[1008, "too slow"], [1001, "server shutting down"], [1001, "idle timeout"], [1001, "disconnected"], [1006, ""], [1000, ""], [1011, "internal error"]]) {
  test(`close ${code} ${reason || "(no reason)"}: reconnects`, () => {
    const h = harness();
    h.welcome();
    h.drop(code, reason);
    assert.equal(h.chat.status, "reconnecting");
    h.advance(1000);
    assert.equal(h.sockets.length, 2);
    assert.deepEqual(h.of("error"), []);
  });
}

for (const [code, reason, err] of [[1008, "username taken", "username_taken"], [1003, "binary frame", "protocol_error"], [1007, "invalid UTF-8", "protocol_error"], [1009, "", "protocol_error"]]) {
  test(`close ${code} ${reason || "(no reason)"}: does not reconnect, reports ${err}`, async () => {
    const h = harness();
    h.welcome();
    const p = h.chat.send("pending");
    h.drop(code, reason);
    assert.equal(h.chat.status, "closed");
    assert.deepEqual(h.of("status").at(-1).state, "closed");
    assert.equal(h.of("status").at(-1).code, code);
    assert.deepEqual(h.of("error").map((e) => e.code), [err]);
    await assert.rejects(p, { code: err });
    h.advance(120000);
    assert.equal(h.sockets.length, 1);
    await assert.rejects(h.chat.send("after"), { code: "closed" });
  });
}

test("close 1006 before any open: retried, and maxRetries gives up", () => {
  const h = harness({ maxRetries: 3 });
  for (let i = 0; i < 3; i++) {
    h.drop();
    assert.equal(h.chat.status, "reconnecting");
    h.advance(60000);
  }
  h.drop();
  assert.equal(h.chat.status, "closed");
  assert.deepEqual(h.of("error").map((e) => e.code), ["connect_failed"]);
  assert.equal(h.sockets.length, 4);
  // a welcome resets the count
  const g = harness({ maxRetries: 1 });
  g.drop();
  g.advance(60000);
  g.welcome();
  g.drop();
  g.advance(60000);
  assert.equal(g.chat.status, "reconnecting");
});

test("close(): closes the socket, rejects pending sends, never reconnects", async () => {
  const h = harness();
  h.welcome();
  const p = h.chat.send("x");
  const ws = h.ws();
  h.chat.close();
  assert.equal(ws.closedWith, 1000);
  assert.equal(h.chat.status, "closed");
  await assert.rejects(p, { code: "closed" });
  assert.deepEqual(h.of("error"), []);
  h.advance(60000);
  assert.equal(h.sockets.length, 1);
  h.chat.close(); // twice: no-op
  assert.equal(h.of("status").filter((s) => s.state === "closed").length, 1);
  // close while waiting to reconnect cancels the retry
  const g = harness();
  g.drop();
  g.chat.close();
  assert.equal(g.timers.length, 0);
});

test("typing: throttled to once a second, only while open", () => {
  const h = harness();
  h.chat.typing();
  assert.equal(h.ws().sent.length, 0);
  h.welcome();
  h.chat.typing();
  h.chat.typing();
  h.advance(999);
  h.chat.typing();
  assert.deepEqual(h.ws().sent, [{ type: "typing" }]);
  h.advance(1);
  h.chat.typing();
  assert.equal(h.ws().sent.length, 2);
  h.recv({ type: "typing", room: "general", username: "Bob" });
  assert.deepEqual(h.of("typing"), [{ type: "typing", room: "general", username: "Bob" }]);
});

test("users: kept up to date from welcome, join and leave", () => {
  const h = harness();
  h.welcome({ active_users: ["Alice"] });
  assert.deepEqual(h.chat.users, ["Alice"]);
  const joined = { type: "user_joined", room: "general", username: "Bob", active_users: ["Alice", "Bob"], timestamp: "2026-11-28T07:30:00.120Z" };
  h.recv(joined);
  assert.deepEqual(h.chat.users, ["Alice", "Bob"]);
  h.recv({ ...joined, type: "user_left", active_users: ["Alice"] });
  assert.deepEqual(h.chat.users, ["Alice"]);
  assert.deepEqual(h.of("join").map((e) => e.username), ["Bob"]);
  assert.deepEqual(h.of("leave").map((e) => e.username), ["Bob"]);
  assert.deepEqual(h.of("users"), [["Alice"], ["Alice", "Bob"], ["Alice"]]);
  h.chat.users.push("mutated");
  assert.deepEqual(h.chat.users, ["Alice"]);
  assert.equal(h.chat.username, "Alice");
  assert.equal(h.chat.sessionId, "s1");
  assert.equal(h.chat.limits.max_message_length, 500);
});

test("users: chatkit.v1 join and leave without active_users are applied to the list", () => {
  const h = harness();
  h.welcome({ active_users: ["Alice", "Carol"] });
  const ev = { type: "user_joined", room: "general", username: "Bob", timestamp: "2026-11-28T07:30:00.120Z" };
  h.recv(ev);
  assert.deepEqual(h.chat.users, ["Alice", "Bob", "Carol"]);
  h.recv(ev); // a repeated join does not list Bob twice
  assert.deepEqual(h.chat.users, ["Alice", "Bob", "Carol"]);
  h.recv({ ...ev, type: "user_left", username: "Carol" });
  assert.deepEqual(h.chat.users, ["Alice", "Bob"]);
  assert.deepEqual(h.of("join").map((e) => e.username), ["Bob", "Bob"]);
  assert.deepEqual(h.of("leave").map((e) => e.username), ["Carol"]);
});

test("events: on() returns an unsubscribe; a throwing listener does not break the client", () => {
  const h = harness();
  const seen = [];
  const off = h.chat.on("message", (m) => seen.push(m.id));
  h.chat.on("message", () => {
    throw new Error("listener bug");
  });
  const reported = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (e) => reported.push(e.message);
  try {
    h.welcome({ history: [msg(1), msg(2)] });
    off();
    h.recv(msg(3));
  } finally {
    globalThis.reportError = saved;
  }
  assert.deepEqual(seen, [1, 2]);
  assert.equal(h.of("message").length, 3);
  assert.deepEqual(reported, ["listener bug", "listener bug", "listener bug"]);
});

test("frames that are not JSON are ignored", () => {
  const h = harness();
  h.ws().onmessage({ data: "not json" });
  h.welcome();
  assert.equal(h.chat.status, "open");
});

/** A chat that saw 1..5, then resumed with since=5 and a truncated welcome of `from`..`to`. */
function truncatedResume(from, to, opts) {
  const h = harness(opts);
  h.welcome({ history: msgs(1, 5) });
  h.drop();
  h.advance(1000);
  assert.equal(h.ws().url.searchParams.get("since"), "5");
  h.welcome({ history: msgs(from, to), history_truncated: true });
  return h;
}

test("fill: a truncated resume reads the hole back and emits everything in id order, no gap", () => {
  const h = truncatedResume(121, 130);
  const [first] = h.asked();
  assert.deepEqual([first.before, first.limit], [121, 100]);
  assert.ok(first.request_id.length <= 64);
  assert.deepEqual(h.of("message").map((m) => m.id), ids(1, 5), "nothing before the hole is filled");
  h.recv(msg(131)); // live, meanwhile: held
  h.page(first, ids(21, 120), true);
  const [, second] = h.asked();
  assert.equal(second.before, 21);
  assert.notEqual(second.request_id, first.request_id);
  h.page(second, ids(1, 20), false); // overlaps what was seen: dropped
  assert.deepEqual(h.of("message").map((m) => m.id), ids(1, 131));
  assert.deepEqual(h.of("message").slice(5).map((m) => m.history), [...Array(125).fill(true), false]);
  assert.deepEqual(h.of("gap"), []);
  assert.equal(h.chat.lastId, 131);
  h.recv(msg(131)); // a duplicate
  h.recv(msg(132));
  assert.deepEqual(h.of("message").slice(-2).map((m) => m.id), [131, 132]);
  assert.equal(h.asked().length, 2);
});

test("fill: overlapping pages and repeated ids are emitted once", () => {
  const h = truncatedResume(50, 60);
  const [ask] = h.asked();
  h.page(ask, [...ids(1, 49), 49, 50, 55, 70], true); // overlaps both sides, repeats 49
  assert.deepEqual(h.of("message").map((m) => m.id), ids(1, 60));
  assert.equal(h.asked().length, 1, "reached since+1: no more pages");
});

test("fill: a hole over the page budget (10 pages of 100) is a gap without any request", () => {
  const h = truncatedResume(1007, 1010); // 1001 missing
  assert.deepEqual(h.asked(), []);
  assert.deepEqual(h.of("gap"), [{ reset: false, since: 5 }]);
  assert.deepEqual(h.of("message").map((m) => m.id), [...ids(1, 5), ...ids(1007, 1010)]);
});

test("fill: at most 10 pages are read; what could not be read is a gap, what was read is emitted", () => {
  const h = truncatedResume(206, 210); // 200 missing, but the server gives pages of 10
  for (let i = 0; i < 10; i++) {
    const ask = h.asked().at(-1);
    h.page(ask, ids(ask.before - 10, ask.before - 1), true);
  }
  assert.equal(h.asked().length, 10);
  assert.deepEqual(h.of("gap"), [{ reset: false, since: 5 }]);
  assert.deepEqual(h.of("message").map((m) => m.id), [...ids(1, 5), ...ids(106, 210)]);
  const order = h.events.filter(([e]) => e === "gap" || e === "message").map(([e, d]) => d.id ?? e);
  assert.equal(order[5], "gap", "the gap comes before the messages after it");
});

test("fill: has_more false before reaching since+1 is a gap (the store no longer has them)", () => {
  const h = truncatedResume(100, 101);
  h.page(h.asked()[0], ids(60, 99), false);
  assert.deepEqual(h.of("gap"), [{ reset: false, since: 5 }]);
  assert.deepEqual(h.of("message").map((m) => m.id), [...ids(1, 5), ...ids(60, 101)]);
});

test("fill: waits out rate_limited and unavailable, and a drop asks again from since", () => {
  const h = truncatedResume(150, 151);
  let ask = h.asked()[0];
  h.recv({ type: "error", code: "rate_limited", error: "slow", retry_after_ms: 700, request_id: ask.request_id });
  h.advance(699);
  assert.equal(h.asked().length, 1);
  h.advance(1);
  ask = h.asked()[1];
  assert.equal(ask.before, 150);
  h.recv({ type: "error", code: "unavailable", error: "store down", request_id: ask.request_id });
  h.advance(999); // 500 + backoff(1) = 500 + 500 with random 0.5
  assert.equal(h.asked().length, 2);
  h.advance(1);
  assert.equal(h.asked().length, 3);
  h.recv(msg(152)); // held
  h.drop(); // the fill is given up: the resume asks again from 5
  h.advance(30000);
  assert.equal(h.ws().url.searchParams.get("since"), "5");
  assert.deepEqual(h.of("message").map((m) => m.id), ids(1, 5));
  h.welcome({ history: msgs(6, 152) }); // everything kept this time
  assert.deepEqual(h.of("message").map((m) => m.id), ids(1, 152));
  assert.deepEqual(h.of("gap"), []);
  assert.deepEqual(h.of("error"), []);
});

test("fill: a second welcome on the same connection ends the fill with what it has, then is handled", () => {
  const h = truncatedResume(50, 51);
  h.recv(msg(52)); // held
  h.welcome({ history: msgs(53, 54) }); // resumes after what the server sent: 52
  assert.deepEqual(h.of("gap"), [{ reset: false, since: 5 }]);
  assert.deepEqual(h.of("message").map((m) => m.id), [...ids(1, 5), ...ids(50, 54)]);
});

test("loadOlder: walks back page by page from the oldest message seen, down to has_more false", async () => {
  const h = harness();
  const early = h.chat.loadOlder(); // before the welcome: asked after it
  assert.deepEqual(h.asked(), []);
  h.welcome({ history: msgs(101, 150) });
  const [first] = h.asked();
  assert.deepEqual([first.type, first.before, first.limit], ["history", 101, 50]);
  assert.equal(h.chat.loadOlder(), early, "concurrent calls share one request");
  h.page(first, ids(51, 100), true);
  const page1 = await early;
  assert.deepEqual(page1.messages.map((m) => m.id), ids(51, 100));
  assert.equal(page1.hasMore, true);
  assert.deepEqual(page1.messages[0], { ...msg(51), history: true });
  const next = h.chat.loadOlder(20);
  const second = h.asked()[1];
  assert.deepEqual([second.before, second.limit], [51, 20]);
  h.page(second, ids(31, 50), true);
  assert.deepEqual((await next).messages.map((m) => m.id), ids(31, 50));
  const last = h.chat.loadOlder();
  h.page(h.asked()[2], ids(1, 30), false);
  assert.deepEqual(await last, { messages: msgs(1, 30).map((m) => ({ ...m, history: true })), hasMore: false });
  assert.deepEqual(await h.chat.loadOlder(), { messages: [], hasMore: false });
  assert.equal(h.asked().length, 3, "nothing is asked past the beginning");
  assert.deepEqual(h.of("message").map((m) => m.id), ids(101, 150), "pages are not message events");
});

test("loadOlder: returns nothing emitted live or in an earlier page, nothing twice", async () => {
  const h = harness();
  h.welcome({ history: [] });
  h.recv(msg(1));
  h.recv(msg(2));
  let p = h.chat.loadOlder();
  assert.equal(h.asked()[0].before, 1);
  h.page(h.asked()[0], [1, 2], false); // a server repeating live ones
  assert.deepEqual(await p, { messages: [], hasMore: false });
  const g = harness();
  g.welcome({ history: [] }); // nothing seen: below what may still come live
  p = g.chat.loadOlder();
  assert.equal(g.asked()[0].before, 1);
  const g2 = harness();
  g2.welcome({ history: msgs(40, 45) });
  p = g2.chat.loadOlder();
  g2.page(g2.asked()[0], [30, 31, 31, 32, 40, 41], true);
  assert.deepEqual((await p).messages.map((m) => m.id), [30, 31, 32]);
  p = g2.chat.loadOlder();
  assert.equal(g2.asked()[1].before, 30);
  g2.page(g2.asked()[1], [28, 29, 30, 31], true);
  assert.deepEqual((await p).messages.map((m) => m.id), [28, 29]);
});

test("loadOlder: rate_limited and unavailable are retried, never rejected; an old answer is ignored", async () => {
  const h = harness();
  h.welcome({ history: msgs(101, 150) });
  const p = h.chat.loadOlder();
  let settled = false;
  p.then(() => (settled = true), () => (settled = true));
  const first = h.asked()[0];
  h.recv({ type: "error", code: "rate_limited", error: "slow", retry_after_ms: 400, request_id: first.request_id });
  h.advance(400);
  const second = h.asked()[1];
  assert.deepEqual([second.before, second.limit], [101, 50]);
  for (let i = 0; i < 5; i++) {
    const ask = h.asked().at(-1);
    h.recv({ type: "error", code: "unavailable", error: "store down", request_id: ask.request_id });
    h.advance(12000);
  }
  assert.equal(h.asked().length, 7);
  h.page(first, ids(1, 100), false); // the answer to a request asked again since
  await h.tick();
  assert.equal(settled, false);
  h.page(h.asked().at(-1), ids(51, 100), true);
  assert.deepEqual((await p).messages.map((m) => m.id), ids(51, 100));
  assert.deepEqual(h.of("error"), []);
});

test("loadOlder: a drop asks again after the resume; bad_request and close reject with ChatError", async () => {
  const h = harness();
  h.welcome({ history: msgs(101, 150) });
  const p = h.chat.loadOlder();
  h.drop();
  h.advance(30000);
  assert.deepEqual(h.asked(), []);
  h.welcome({ history: msgs(151, 152) });
  assert.equal(h.asked()[0].before, 101);
  h.page(h.asked()[0], ids(51, 100), true);
  assert.equal((await p).messages.length, 50);
  const bad = h.chat.loadOlder(0);
  h.recv({ type: "error", code: "bad_request", error: "limit must be positive", request_id: h.asked()[1].request_id });
  await assert.rejects(bad, (e) => e instanceof ChatError && e.code === "bad_request");
  const pending = h.chat.loadOlder();
  h.chat.close();
  await assert.rejects(pending, { code: "closed" });
  await assert.rejects(h.chat.loadOlder(), { code: "closed" });
  assert.deepEqual(h.of("error"), []);
});

test("loadOlder: a page of an epoch without a welcome yet is asked again after that welcome", async () => {
  const h = harness();
  h.welcome({ history: msgs(101, 150) });
  const p = h.chat.loadOlder();
  const ask = h.asked()[0];
  h.recv({ type: "history", room: "general", epoch: "E2", request_id: ask.request_id, messages: msgs(1, 50), has_more: false });
  h.recv({ type: "history", room: "general", epoch: "E2", request_id: ask.request_id, messages: msgs(1, 50), has_more: false });
  h.welcome({ epoch: "E2", history: msgs(61, 70), history_truncated: true }); // the server's sequence restarted
  const again = h.asked()[1];
  assert.equal(again.before, 61);
  h.recv({ type: "history", room: "general", epoch: "E2", request_id: again.request_id, messages: msgs(11, 60), has_more: true });
  assert.deepEqual((await p).messages.map((m) => m.id), ids(11, 60));
});

test("loadOlder: after a reset (new epoch) it starts again from the newest", async () => {
  const h = harness();
  h.welcome({ history: msgs(101, 150) });
  let p = h.chat.loadOlder();
  h.page(h.asked()[0], ids(51, 100), false);
  await p;
  assert.deepEqual(await h.chat.loadOlder(), { messages: [], hasMore: false });
  h.drop();
  h.advance(30000);
  h.welcome({ epoch: "E2", history: msgs(61, 63), history_truncated: true });
  assert.deepEqual(h.of("gap").at(-1), { reset: true, since: 150 });
  p = h.chat.loadOlder();
  assert.equal(h.asked()[0].before, 61);
  h.page(h.asked()[0], ids(11, 60), true); // ids seen in the old epoch are new ones now
  assert.deepEqual(await p, { messages: msgs(11, 60).map((m) => ({ ...m, history: true })), hasMore: true });
  // a second welcome on the same connection with a new epoch: an in-flight request is asked again
  h.recv(msg(64));
  p = h.chat.loadOlder();
  const stale = h.asked()[1];
  h.welcome({ epoch: "E3", history: msgs(200, 201), history_truncated: true });
  const fresh = h.asked()[2];
  assert.equal(fresh.before, 200);
  h.page(stale, [1, 2, 3], false);
  h.page(fresh, ids(150, 199), true);
  assert.deepEqual((await p).messages.map((m) => m.id), ids(150, 199));
});

test("file: under 20 KB (20,000 bytes), module and globalThis.ChatKit, classic variant without the last line", () => {
  assert.ok(Buffer.byteLength(src) < 20000, `client.js is ${Buffer.byteLength(src)} bytes`);
  assert.equal(globalThis.ChatKit.connect, connect);
  const lines = src.trimEnd().split("\n");
  assert.match(lines.at(-1), /^export \{ connect, backoff, buildURL, ChatError \};$/);
  assert.equal(src.match(/^\s*export\b/gm).length, 1, "the only export is the last line");
  const ctx = vm.createContext({ URL, console });
  vm.runInContext(lines.slice(0, -1).join("\n"), ctx);
  assert.equal(typeof ctx.ChatKit.connect, "function");
  assert.equal(ctx.ChatKit.buildURL("/ws", { href: "https://h/" }), "wss://h/ws");
});
