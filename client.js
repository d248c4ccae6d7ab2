// chatkit browser client: a dependency-free ES module, no build step; types in client.d.ts,
// the wire protocol in PROTOCOL.md.
//   import { connect } from "/chatkit.js"; const chat = connect("/ws", { username, room });
// As a module it also sets globalThis.ChatKit; /chatkit.js?classic is served without the last
// line (`export`), as a classic script. A handshake refused with HTTP 4xx looks like a network
// failure to a browser, so it is retried (opts.maxRetries bounds it); names are checked first.

class ChatError extends Error {
  constructor(code, message, clientMsgId, retryAfterMs) {
    super(message);
    Object.assign(this, { name: "ChatError", code, clientMsgId, retryAfterMs });
  }
}

/** Full-jitter delay in ms before reconnect attempt n (0-based): random in [0, min(cap, base*2^n)). */
function backoff(n, random = Math.random, base = 500, cap = 30000) {
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(n, 30)));
}

/** ws:/wss: URL of path relative to loc (http: gives ws:, https: wss:), with params (null skipped). */
function buildURL(path, loc, params = {}) {
  const url = new URL(path, loc?.href);
  url.protocol = url.protocol.replace(/^http/, "ws");
  for (const [key, value] of Object.entries(params)) {
    if (value != null) url.searchParams.set(key, String(value));
  }
  return url.href;
}

const STABLE_MS = 60000; // a connection up this long starts the backoff over
const GHOST_MS = 60000; // how long after a lost session "username taken" may be that session
const PAGE_MAX = 100; // the server's largest history page
const FILL_PAGES = 10; // pages a truncated resume may read to fill its hole

/** Opens a chat session that reconnects by itself. See client.d.ts for options and events. */
function connect(path, opts = {}) {
  const options = { maxQueue: 100, maxRetries: Infinity, random: Math.random, now: Date.now, ...opts };
  const { now, random } = options;
  const setTimer = options.setTimeout || ((f, ms) => setTimeout(f, ms));
  const clearTimer = options.clearTimeout || ((t) => clearTimeout(t));
  const username = options.username?.trim();
  const room = options.room;
  if (options.username != null && (!username || [...username].length > 32 || /\p{Cc}/u.test(username))) {
    throw new ChatError("bad_username", "username must be 1 to 32 characters, no control characters");
  }
  if (room != null && !/^[A-Za-z0-9._-]{1,64}$/.test(room)) {
    throw new ChatError("bad_room", "room must be 1 to 64 of A-Z a-z 0-9 . _ -");
  }

  const listeners = {}; // event name -> Set

  function emit(event, data) {
    for (const f of [...(listeners[event] || [])]) {
      try {
        f(data);
      } catch (e) {
        (globalThis.reportError || console.error)(e); // a listener's bug does not stop the client
      }
    }
  }

  // ---- Connection and reconnect

  let ws = null; // the current socket; null while waiting to reconnect
  let state = "connecting";
  let closed = false;
  let reconnectTimer = null;
  let attempt = 0; // reconnects since the connection was last stable: the backoff's exponent
  let failures = 0; // consecutive attempts without a welcome, bounded by maxRetries
  let welcomedAt = 0;
  // Until then "username taken" may be this client's own session on a server node that died,
  // listed until the cluster's presence TTL: keep reconnecting.
  let ghostUntil = 0;

  function setStatus(next, details) {
    state = next;
    emit("status", { state: next, ...details });
  }

  function open() {
    reconnectTimer = null;
    const params = options.params;
    const query = { ...(typeof params === "function" ? params() : params) };
    if (username != null) query.username = username;
    if (room != null) query.room = room;
    if (seen) {
      query.since = lastId;
      query.epoch = epoch;
    }
    const url = buildURL(path, options.location ?? globalThis.location, query);
    const socket = new (options.WebSocket || globalThis.WebSocket)(url, ["chatkit.v1"]); // batches: "\n"-separated
    ws = socket;
    let welcomed = false;
    socket.onmessage = (e) => {
      for (const line of String(e.data).split("\n")) {
        if (socket !== ws) return; // given up while reading the batch
        let event;
        try {
          event = JSON.parse(line);
        } catch {
          continue;
        }
        if (event.type === "welcome") welcomed = true;
        handle(event);
      }
    };
    socket.onclose = (e) => {
      if (socket === ws) dropped(e.code, e.reason, welcomed);
    };
  }

  function handle(event) {
    switch (event.type) {
      case "welcome":
        return onWelcome(event);
      case "chat_message":
        if (filling) return filling.hold(event);
        return emitMessage(event, false);
      case "ack":
        return settle(event.client_msg_id, event.id);
      case "user_joined":
      case "user_left":
        return onPresence(event);
      case "typing":
        return emit("typing", event);
      case "history":
        return onHistoryAnswer(event, null);
      case "error":
        return onError(event);
    }
  }

  function onError(event) {
    const error = new ChatError(event.code, event.error, event.client_msg_id, event.retry_after_ms);
    if (event.request_id != null) return onHistoryAnswer(event, error);
    const p = pending.get(event.client_msg_id);
    if (p) return onSendError(p, event, error);
    emit("error", error);
  }

  function dropped(code, reason, welcomed) {
    ws = null;
    clearTimer(paceTimer);
    paceTimer = null;
    filling?.abandon(); // the resume asks again from the last message emitted
    const maybeGhost = now() < ghostUntil;
    if (welcomed) ghostUntil = now() + GHOST_MS;
    if (code === 1008 && reason === "username taken" && !maybeGhost) {
      return finish("username_taken", "username taken", code);
    }
    if ([1003, 1007, 1009].includes(code)) return finish("protocol_error", reason || "close " + code, code);
    if (!welcomed && ++failures > options.maxRetries) return finish("connect_failed", "could not connect", code);
    if (welcomedAt && now() - welcomedAt >= STABLE_MS) attempt = 0;
    welcomedAt = 0;
    const delayMs = backoff(attempt++, random);
    reconnectTimer = setTimer(reopen, delayMs);
    setStatus("reconnecting", { code, reason, delayMs, attempt });
  }

  function reopen() {
    try {
      open();
    } catch (e) {
      finish("connect_failed", e.message);
    }
  }

  function finish(code, reason, closeCode) {
    if (closed) return;
    closed = true;
    clearTimer(reconnectTimer);
    clearTimer(paceTimer);
    if (ws) {
      ws.onclose = null;
      ws.close(1000);
      ws = null;
    }
    const error = new ChatError(code, reason);
    for (const p of pending.values()) p.reject(error);
    pending.clear();
    queue = [];
    filling = null;
    for (const request of historyRequests) {
      clearTimer(request.retryTimer);
      request.fail(error);
    }
    historyRequests.clear();
    setStatus("closed", { code: closeCode, reason });
    if (code !== "closed") emit("error", error);
  }

  // ---- Resume state: a reconnect asks for what came after lastId; nothing is emitted twice

  let seen = false; // a welcome came: reconnects resume with since and epoch
  let lastId = 0; // the highest id emitted
  let epoch;
  let welcome = {};
  let limits = {};
  let me = username;

  // A second welcome on an open connection is handled as a reconnect's: both resume from lastId.
  function onWelcome(event) {
    // It follows what the server sent on this connection, held or not: emit that first.
    if (filling) filling.finish(false);
    const history = event.history || [];
    const since = lastId;
    const truncated = seen && event.history_truncated;
    // another epoch, or old ids only: the room's ids restarted
    const reset = seen && (event.epoch !== epoch || (truncated && history.length > 0 && history.at(-1).id <= since));
    const fillable = truncated && !reset && history.length > 0;
    seen = true;
    epoch = event.epoch;
    welcome = event;
    me = event.username ?? me;
    limits = event.limits || {};
    tokens = limits.burst || 10;
    welcomedAt = tokensAt = now();
    failures = 0;
    if (reset) {
      oldestId = undefined; // scrollback starts again from the newest
      reachedBeginning = false;
    }
    setStatus("open");
    emit("welcome", event);
    setUsers(event.active_users);
    for (const m of history) settleOwn(m); // stored: not sent again
    if (!fillable) emitResumed(history, reset || truncated ? { reset, since } : null);
    resendPending();
    for (const request of historyRequests) sendHistoryRequest(request); // below what was emitted
    if (fillable) startFill(since, history); // after the resend, so that its first page is asked once
  }

  function emitResumed(messages, gap) {
    if (gap) {
      lastId = 0; // only newer ids follow a truncated history, or they restarted
      emit("gap", gap);
    }
    for (const m of messages) emitMessage(m, true);
  }

  function emitMessage(m, fromHistory) {
    if (m.id <= lastId) return; // seen already
    lastId = m.id;
    noteOldest(m.id);
    settleOwn(m);
    emit("message", { ...m, history: fromHistory });
  }

  // ---- Filling a truncated resume: the hole is often still in the store. It is read first, then
  // all is emitted in id order (live ones held meanwhile), so that a page never shows a hole.

  let filling = null; // the fill under way

  function startFill(since, history) {
    const found = new Map(); // id -> message of the hole
    const held = []; // live messages that came meanwhile
    let oldest = history[0].id; // the oldest id read so far
    let pages = 0;
    let request = null;
    const fill = {
      hold: (m) => held.push(m),
      finish(complete) {
        fill.abandon();
        const messages = [...found.values(), ...history].sort((a, b) => a.id - b.id);
        emitResumed(messages, complete ? null : { reset: false, since });
        for (const m of held) emitMessage(m, false);
      },
      abandon() {
        filling = null;
        clearTimer(request?.retryTimer);
        historyRequests.delete(request);
      },
    };
    function onPage(messages, hasMore) {
      pages++;
      for (const m of messages) {
        if (m.id > since && m.id < history[0].id) found.set(m.id, m);
        oldest = Math.min(oldest, m.id);
      }
      if (oldest <= since + 1) return fill.finish(true);
      if (!hasMore || pages >= FILL_PAGES) return fill.finish(false);
      readPage();
    }
    function onFail() {
      if (filling === fill) fill.finish(false); // not when closed
    }
    function readPage() {
      request = requestHistory(() => oldest, PAGE_MAX, onPage, onFail);
    }

    filling = fill;
    const missing = oldest - since - 1;
    if (missing <= 0) return fill.finish(true);
    if (missing > FILL_PAGES * PAGE_MAX) return fill.finish(false); // too many to read: a gap
    readPage();
  }

  // ---- History requests (scrollback, fills); rate_limited and unavailable are waited out

  const historyRequests = new Set(); // outstanding: { before(), limit, onPage, fail, id, ... }
  let requestSeq = 0;

  function requestHistory(before, limit, onPage, fail) {
    const request = { before, limit, onPage, fail, id: null, retryTimer: null };
    historyRequests.add(request);
    sendHistoryRequest(request);
    return request;
  }

  function sendHistoryRequest(request) {
    clearTimer(request.retryTimer);
    request.id = null;
    if (state !== "open") return; // asked after the welcome
    request.id = "h-" + ++requestSeq; // a new id each time: an answer to an earlier one is ignored
    const frame = { type: "history", before: request.before(), limit: request.limit, request_id: request.id };
    ws.send(JSON.stringify(frame));
  }

  function onHistoryAnswer(event, error) {
    const request = [...historyRequests].find((r) => r.id === event.request_id);
    if (!request) return; // to a request asked again since
    if (error && (event.code === "rate_limited" || event.code === "unavailable")) {
      request.id = null;
      request.retryTimer = setTimer(() => sendHistoryRequest(request), retryDelay(event, request));
      return;
    }
    if (!error && event.epoch && event.epoch !== epoch) {
      request.id = null; // of an epoch without a welcome yet: asked again after it
      return;
    }
    historyRequests.delete(request);
    if (error) request.fail(error);
    else request.onPage(event.messages || [], event.has_more !== false);
  }

  function retryDelay(event, item) {
    if (event.code !== "unavailable") return event.retry_after_ms || 1000;
    item.tries = (item.tries || 0) + 1;
    return 500 + backoff(item.tries, random, 500, 10000); // the store may be down a while
  }

  // ---- Scrollback: loadOlder() walks back from the oldest message seen, one page at a time

  let oldestId; // the lowest id emitted or returned by loadOlder in this epoch
  let reachedBeginning = false; // a page had has_more false
  let olderPage = null; // the loadOlder() promise under way, shared by concurrent calls

  function noteOldest(id) {
    if (oldestId === undefined || id < oldestId) oldestId = id;
  }

  // below everything seen; with nothing seen, below what may still come live
  const olderBound = () => oldestId ?? lastId + 1;

  function loadOlder(limit = 50) {
    if (closed) return Promise.reject(new ChatError("closed", "chat is closed"));
    if (olderPage) return olderPage;
    if (reachedBeginning) return Promise.resolve({ messages: [], hasMore: false });
    olderPage = new Promise((resolve, reject) => {
      function onPage(messages, hasMore) {
        olderPage = null;
        const byId = new Map(); // never an id seen already, never one twice
        for (const m of messages) {
          if (m.id < olderBound()) byId.set(m.id, { ...m, history: true });
        }
        const page = [...byId.values()].sort((a, b) => a.id - b.id);
        if (page.length > 0) noteOldest(page[0].id);
        if (!hasMore) reachedBeginning = true;
        resolve({ messages: page, hasMore });
      }
      function fail(error) {
        olderPage = null;
        reject(error);
      }
      requestHistory(olderBound, limit, onPage, fail);
    });
    return olderPage;
  }

  // ---- Send queue: paced, and resent with the same client_msg_id after a resume

  const pending = new Map(); // client_msg_id -> send not acknowledged yet
  let queue = []; // sends waiting for the socket or the pacer
  let paceTimer = null;
  let sendSeq = 0;
  const idPrefix = random().toString(36).slice(2, 10) || "c";
  // A token bucket a margin under the server's (welcome.limits), so that queued sends are not refused.
  let tokens = 0;
  let tokensAt = 0;
  let holdUntil = 0; // the end of the wait after a rate_limited or unavailable
  const rate = () => (limits.rate === 0 ? Infinity : (limits.rate || 5) * 0.9); // per second; 0: no limit

  function refill() {
    const t = now();
    tokens = rate() === Infinity ? Infinity : Math.min(limits.burst || 10, tokens + ((t - tokensAt) * rate()) / 1000);
    tokensAt = t;
  }

  function paceDelay() {
    if (holdUntil > now()) return holdUntil - now();
    refill();
    return tokens >= 1 ? 0 : Math.ceil(((1 - tokens) * 1000) / rate());
  }

  function hold(waitMs) {
    tokens = 0;
    tokensAt = holdUntil = now() + waitMs;
  }

  function transmit(p) {
    ws.send(JSON.stringify({ type: "chat_message", text: p.text, client_msg_id: p.cid }));
  }

  function enqueue(p) {
    p.queued = true; // a queued send is retried when rate_limited; a direct one rejects
    queue.push(p);
  }

  function pump() {
    if (state !== "open" || paceTimer) return;
    while (queue.length > 0) {
      const waitMs = paceDelay();
      if (waitMs > 0) {
        paceTimer = setTimer(() => {
          paceTimer = null;
          pump();
        }, waitMs);
        return;
      }
      tokens--;
      transmit(queue.shift());
    }
  }

  // The server stores a client_msg_id once: what was not acknowledged is sent again.
  function resendPending() {
    queue = [];
    for (const p of pending.values()) enqueue(p);
    pump();
  }

  function settle(cid, id) {
    const p = pending.get(cid);
    if (!p) return;
    pending.delete(cid);
    queue = queue.filter((x) => x !== p);
    p.resolve({ id, clientMsgId: cid });
  }

  function settleOwn(m) {
    if (m.client_msg_id && m.username === me) settle(m.client_msg_id, m.id);
  }

  function onSendError(p, event, error) {
    // unavailable: the store did not answer, and may have stored it; the same client_msg_id makes
    // a retry safe. A queued one that was rate_limited: wait and send it again.
    if (event.code === "unavailable" || (event.code === "rate_limited" && p.queued)) {
      hold(retryDelay(event, p));
      enqueue(p);
      queue.sort((a, b) => a.seq - b.seq);
      return pump();
    }
    pending.delete(p.cid);
    p.reject(error);
  }

  function refusal(text) {
    const max = limits.max_message_length;
    if (closed) return ["closed", "chat is closed"];
    if (typeof text !== "string" || !text.trim()) return ["empty_message", "message is empty"];
    if ([...text].length > max) return ["message_too_long", `message exceeds ${max} characters`];
    if (pending.size >= options.maxQueue) return ["queue_full", `more than ${options.maxQueue} messages waiting`];
    return null;
  }

  function send(text) {
    let p;
    const promise = new Promise((resolve, reject) => {
      sendSeq++;
      p = { cid: idPrefix + "-" + sendSeq, seq: sendSeq, text, resolve, reject };
    });
    promise.clientMsgId = p.cid;
    const refused = refusal(text);
    if (refused) {
      p.reject(new ChatError(refused[0], refused[1], p.cid));
      return promise;
    }
    pending.set(p.cid, p);
    if (state === "open" && queue.length === 0) {
      refill();
      tokens = Math.max(0, tokens - 1); // sent at once, it may find the bucket empty
      transmit(p);
    } else {
      enqueue(p);
      pump();
    }
    return promise;
  }

  // ---- Presence and typing

  let users = [];
  let typedAt = -Infinity;

  function setUsers(list) {
    if (Array.isArray(list)) users = [...list];
    emit("users", [...users]);
  }

  function onPresence(event) {
    const joined = event.type === "user_joined";
    const others = users.filter((u) => u !== event.username);
    // chatkit.v1 omits active_users: the change is applied to the list of the welcome
    setUsers(event.active_users || (joined ? [...others, event.username].sort() : others));
    emit(joined ? "join" : "leave", event);
  }

  function typing() {
    const t = now();
    if (state === "open" && t - typedAt >= 1000) {
      typedAt = t;
      ws.send('{"type":"typing"}');
    }
  }

  // ---- The Chat object

  const chat = {
    on(event, f) {
      (listeners[event] ||= new Set()).add(f);
      return () => listeners[event].delete(f);
    },
    off(event, f) {
      listeners[event]?.delete(f);
    },
    send,
    typing,
    loadOlder,
    reconnect() {
      if (closed || ws) return;
      clearTimer(reconnectTimer);
      open();
    },
    close() {
      finish("closed", "closed by client");
    },
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
