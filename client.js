// chatkit browser client: a dependency-free ES module, no build step; types in client.d.ts.
//   import { connect } from "/chatkit.js"; const chat = connect("/ws", { username, room });
// As a module it also sets globalThis.ChatKit; /chatkit.js?classic is served without the last
// line (`export`), as a classic script. A handshake refused with HTTP 4xx looks like a network
// failure to a browser, so it is retried (opts.maxRetries bounds it); names are checked first.

class ChatError extends Error {
  /** @param {string} code @param {string} message @param {string} [clientMsgId] @param {number} [retryAfterMs] */
  constructor(code, message, clientMsgId, retryAfterMs) {
    super(message);
    Object.assign(this, { name: "ChatError", code, clientMsgId, retryAfterMs });
  }
}

/** Full-jitter delay in ms before reconnect attempt n (0-based): random in [0, min(cap, base*2^n)).
 * @param {number} n @param {() => number} [random] @param {number} [base] @param {number} [cap] */
function backoff(n, random = Math.random, base = 500, cap = 30000) {
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(n, 30)));
}

/** ws:/wss: URL of path relative to loc (http: gives ws:, https: wss:), with params (null skipped).
 * @param {string} path @param {{href: string}} [loc] @param {Record<string, any>} [params] */
function buildURL(path, loc, params = {}) {
  const u = new URL(path, loc?.href);
  u.protocol = u.protocol.replace(/^http/, "ws");
  for (const [k, v] of Object.entries(params)) if (v != null) u.searchParams.set(k, String(v));
  return u.href;
}

/** Opens a chat session that reconnects by itself. See client.d.ts for options and events.
 * @param {string} path @param {import("./client").ConnectOptions} [opts] @returns {import("./client").Chat} */
function connect(path, opts = {}) {
  const o = { maxQueue: 100, maxRetries: Infinity, random: Math.random, now: Date.now, ...opts };
  const T = o.setTimeout || ((f, ms) => setTimeout(f, ms)), C = o.clearTimeout || ((t) => clearTimeout(t));
  const name = o.username?.trim(), room = o.room;
  if (o.username != null && (!name || [...name].length > 32 || /\p{Cc}/u.test(name)))
    throw new ChatError("bad_username", "username must be 1 to 32 characters, no control characters");
  if (room != null && !/^[A-Za-z0-9._-]{1,64}$/.test(room))
    throw new ChatError("bad_room", "room must be 1 to 64 of A-Z a-z 0-9 . _ -");
  const on = {}, pending = new Map(), prefix = o.random().toString(36).slice(2, 10) || "c";
  let ws, state = "connecting", timer, pace, closed = false, seen = false, attempt = 0, failures = 0;
  let welcomedAt = 0, lastId = 0, epoch, welcome = {}, limits = {}, users = [], me = name;
  let queue = [], tokens = 0, tokenAt = 0, typedAt = -Infinity, seq = 0;
  // Until then a "username taken" close may be this client's own session, still present on a
  // server node that died (the cluster removes it within its presence TTL): keep reconnecting.
  let ghostUntil = 0, holdUntil = 0; // nothing is sent before holdUntil

  const emit = (ev, d) => {
    for (const f of [...(on[ev] || [])]) try { f(d); } catch (e) { (globalThis.reportError || console.error)(e); }
  };
  const status = (s, d) => { state = s; emit("status", { state: s, ...d }); };
  const setUsers = (l) => { if (Array.isArray(l)) users = [...l]; emit("users", [...users]); };
  // messages per second, a margin under the server's; rate 0 is no limit
  const rate = () => (limits.rate === 0 ? Infinity : (limits.rate || 5) * 0.9);
  const refill = () => {
    const t = o.now(), r = rate();
    tokens = r === Infinity ? r : Math.min(limits.burst || 10, tokens + ((t - tokenAt) * r) / 1000);
    tokenAt = t;
  };
  const transmit = (p) => ws.send(JSON.stringify({ type: "chat_message", text: p.text, client_msg_id: p.cid }));

  function open() {
    timer = null;
    const p = typeof o.params === "function" ? o.params() : o.params;
    const q = Object.assign({}, p, name != null && { username: name }, room != null && { room }, seen && { since: lastId, epoch });
    const url = buildURL(path, o.location ?? globalThis.location, q);
    const s = (ws = new (o.WebSocket || globalThis.WebSocket)(url, ["chatkit.v1"])); // batches: "\n"-separated
    let ok = false;
    s.onmessage = (e) => {
      for (const line of String(e.data).split("\n")) {
        if (s !== ws) return;
        let m;
        try { m = JSON.parse(line); } catch { continue; }
        if (m.type === "welcome") ok = true;
        handle(m);
      }
    };
    s.onclose = (e) => s === ws && dropped(e.code, e.reason, ok);
  }

  function handle(m) {
    switch (m.type) {
      case "welcome": {
        const h = m.history || [], since = lastId, cut = seen && m.history_truncated;
        // another epoch, or old ids only: the ids restarted
        const reset = seen && (m.epoch !== epoch || (cut && h.length > 0 && h.at(-1).id <= since));
        if (reset || cut) lastId = 0; // only newer ids follow a truncated history
        epoch = m.epoch;
        welcome = m;
        me = m.username ?? me;
        limits = m.limits || {};
        welcomedAt = tokenAt = o.now();
        tokens = limits.burst || 10;
        failures = 0;
        status("open");
        emit("welcome", m);
        setUsers(m.active_users);
        if (reset || cut) emit("gap", { reset, since });
        seen = true;
        for (const x of h) message(x, true);
        queue = [...pending.values()]; // unacked ones are sent again with the same client_msg_id
        for (const p of queue) p.q = true;
        return pump();
      }
      case "chat_message": return message(m, false);
      case "ack": return settle(m.client_msg_id, m.id);
      case "user_joined":
      case "user_left": { // chatkit.v1 omits active_users
        const j = m.type === "user_joined", l = users.filter((u) => u !== m.username);
        setUsers(m.active_users || (j ? [...l, m.username].sort() : l));
        return emit(j ? "join" : "leave", m);
      }
      case "typing": return emit("typing", m);
      case "error": {
        const err = new ChatError(m.code, m.error, m.client_msg_id, m.retry_after_ms);
        const p = pending.get(m.client_msg_id);
        if (!p) return emit("error", err);
        // unavailable: the server could not store it, and may have; the same client_msg_id makes
        // a retry safe. A queued rate_limited one: wait and send it again.
        const unavailable = m.code === "unavailable";
        if (unavailable || (m.code === "rate_limited" && p.q)) {
          const waitMs = unavailable ? 500 + backoff(p.tries = (p.tries || 0) + 1, o.random, 500, 10000) : m.retry_after_ms || 1000;
          tokens = 0;
          tokenAt = holdUntil = o.now() + waitMs;
          p.q = true;
          queue.push(p);
          queue.sort((a, b) => a.seq - b.seq);
          return pump();
        }
        pending.delete(p.cid);
        p.reject(err);
      }
    }
  }

  function message(m, history) {
    if (m.id <= lastId) return; // seen already
    if (m.id > lastId) lastId = m.id;
    if (m.client_msg_id && m.username === me) settle(m.client_msg_id, m.id);
    emit("message", { ...m, history });
  }

  function settle(cid, id) {
    const p = pending.get(cid);
    if (!p) return;
    pending.delete(cid);
    queue = queue.filter((x) => x !== p);
    p.resolve({ id, clientMsgId: cid });
  }

  function pump() {
    if (state !== "open" || pace) return;
    while (queue.length) {
      const holdMs = holdUntil - o.now();
      if (holdMs > 0) {
        pace = T(() => { pace = null; pump(); }, holdMs);
        return;
      }
      refill();
      if (tokens < 1) {
        pace = T(() => { pace = null; pump(); }, Math.ceil(((1 - tokens) * 1000) / rate()));
        return;
      }
      tokens--;
      transmit(queue.shift());
    }
  }

  function dropped(code, reason, ok) {
    ws = null;
    C(pace);
    pace = null;
    const ghost = o.now() < ghostUntil;
    if (ok) ghostUntil = o.now() + 60000;
    if (code === 1008 && reason === "username taken" && !ghost) return finish("username_taken", "username taken", code);
    if ([1003, 1007, 1009].includes(code)) return finish("protocol_error", reason || "close " + code, code);
    if (!ok && ++failures > o.maxRetries) return finish("connect_failed", "could not connect", code);
    if (welcomedAt && o.now() - welcomedAt >= 60000) attempt = 0; // stable for a minute
    welcomedAt = 0;
    const delayMs = backoff(attempt++, o.random);
    timer = T(() => { try { open(); } catch (e) { finish("connect_failed", e.message); } }, delayMs);
    status("reconnecting", { code, reason, delayMs, attempt });
  }

  function finish(code, reason, closeCode) {
    if (closed) return;
    closed = true;
    C(timer);
    C(pace);
    if (ws) { ws.onclose = null; ws.close(1000); ws = null; }
    const err = new ChatError(code, reason);
    for (const p of pending.values()) p.reject(err);
    pending.clear();
    queue = [];
    status("closed", { code: closeCode, reason });
    if (code !== "closed") emit("error", err);
  }

  const chat = {
    on(ev, f) { (on[ev] ||= new Set()).add(f); return () => on[ev].delete(f); },
    off(ev, f) { on[ev]?.delete(f); },
    send(text) {
      let p;
      const r = new Promise((resolve, reject) => (p = { cid: prefix + "-" + ++seq, seq, text, resolve, reject }));
      r.clientMsgId = p.cid;
      const max = limits.max_message_length;
      const e = closed ? ["closed", "chat is closed"]
        : typeof text !== "string" || !text.trim() ? ["empty_message", "message is empty"]
        : [...text].length > max ? ["message_too_long", `message exceeds ${max} characters`]
        : pending.size >= o.maxQueue ? ["queue_full", `more than ${o.maxQueue} messages waiting`] : 0;
      if (e) p.reject(new ChatError(e[0], e[1], p.cid));
      else {
        pending.set(p.cid, p);
        if (state === "open" && !queue.length) { refill(); tokens = Math.max(0, tokens - 1); transmit(p); }
        else { p.q = true; queue.push(p); pump(); }
      }
      return r;
    },
    typing() {
      const t = o.now();
      if (state === "open" && t - typedAt >= 1000) { typedAt = t; ws.send('{"type":"typing"}'); }
    },
    reconnect() { if (!closed && !ws) { C(timer); open(); } },
    close() { finish("closed", "closed by client"); },
    get status() { return state; },
    get users() { return [...users]; },
    get username() { return me; },
    get room() { return welcome.room ?? room; },
    get sessionId() { return welcome.session_id; },
    get limits() { return { ...limits }; },
    get lastId() { return lastId; },
    get epoch() { return epoch; },
    get queued() { return pending.size; },
  };
  open();
  return chat;
}

globalThis.ChatKit = { connect, backoff, buildURL, ChatError };
export { connect, backoff, buildURL, ChatError };
