// Types for client.js, the chatkit browser client (served by chatkit.ClientJS(), e.g. at /chatkit.js).
// The wire protocol behind these events is described in PROTOCOL.md.

/** A chat message as the server sends it (`chat_message`), plus `history`. */
export interface ChatMessage {
  type: "chat_message";
  room: string;
  /** Per-room id: starts at 1 and grows by exactly 1 per stored message. */
  id: number;
  /** "" for a system message sent with Server.Broadcast. */
  username: string;
  text: string;
  /** RFC 3339, UTC, milliseconds: "2026-11-28T07:30:00.120Z". */
  timestamp: string;
  /** Only when the sender gave one (send() always does). */
  client_msg_id?: string;
  /** true when it came from the server's history (the welcome's, a truncated resume's fill, or a loadOlder() page), false when live. */
  history: boolean;
}

export interface Limits {
  /** In Unicode code points. */
  max_message_length: number;
  /** Messages per second (token bucket rate) and burst. */
  rate: number;
  burst: number;
  history_size: number;
  ping_interval_ms: number;
}

export interface WelcomeEvent {
  type: "welcome";
  room: string;
  username: string;
  session_id: string;
  /** Incarnation of the room; a different one after a reconnect means ids restarted. */
  epoch: string;
  active_users: string[];
  /** Raw history. Do not render it: its new messages are also emitted as "message" events, deduplicated. */
  history: Omit<ChatMessage, "history">[];
  history_truncated: boolean;
  limits: Limits;
}

/** `user_joined` (the "join" event) or `user_left` (the "leave" event). */
export interface PresenceEvent {
  type: "user_joined" | "user_left";
  room: string;
  username: string;
  /** Sorted. Absent with the chatkit.v1 subprotocol (client.js offers it); `chat.users` is kept either way. */
  active_users?: string[];
  timestamp: string;
}

export interface TypingEvent {
  type: "typing";
  room: string;
  username: string;
}

/**
 * Some messages may be missing between what was shown and what follows. After a truncated resume (same epoch)
 * the client first reads the missing messages back with history requests (up to 10 pages of 100) and emits
 * them in order with no gap; "gap" is emitted only when the server no longer has them all, or there are more.
 */
export interface GapEvent {
  /** true when the room's ids restarted (server restart, room freed): shown messages belong to an old incarnation. */
  reset: boolean;
  /** The last message id seen before the reconnect. */
  since: number;
}

/** One page of scrollback from loadOlder(), oldest first. */
export interface OlderPage {
  /** Older than every message emitted or returned before (in this epoch), each once; `history` is true. */
  messages: ChatMessage[];
  /** false once the page reaches the oldest message the server still keeps: loadOlder() then returns no more. */
  hasMore: boolean;
}

export type State = "connecting" | "open" | "reconnecting" | "closed";

export interface StatusEvent {
  state: State;
  /** WebSocket close code that caused "reconnecting" or "closed" (1006: could not connect or connection lost). */
  code?: number;
  reason?: string;
  /** "reconnecting" only: when the next attempt starts, and its number (1-based). */
  delayMs?: number;
  attempt?: number;
}

/**
 * Error codes: the server's `message_too_long`, `empty_message`, `rate_limited`, `bad_request` (also for a
 * loadOlder() the server refuses, e.g. a limit below 1), `rejected`;
 * the client's `message_too_long` and `empty_message` (checked before sending), `queue_full`, `closed`
 * (send after close, or pending sends when close() is called), `bad_username`, `bad_room` (thrown by connect),
 * and the fatal ones that end the session: `username_taken` (close 1008; within a minute of a lost session it is
 * retried instead, since a cluster node that died may still list that session), `protocol_error` (close 1003, 1007,
 * 1009), `connect_failed` (opts.maxRetries consecutive attempts failed).
 * The server's `unavailable` (its store did not answer) never rejects a send: the message stays queued and is sent
 * again with backoff and the same client_msg_id, which the server stores at most once. Nor does it reject
 * loadOlder(), which asks again with backoff, and after a `rate_limited` after the wait.
 */
export class ChatError extends Error {
  name: "ChatError";
  code: string;
  /** The send() this error is about, if any. */
  clientMsgId?: string;
  /** rate_limited: how long to wait before trying again. */
  retryAfterMs?: number;
}

export interface ChatEvents {
  /** Every change of state, including each scheduled retry. Initial state "connecting" is not emitted: read chat.status. */
  status: StatusEvent;
  /** On every (re)connect; followed by "users", maybe "gap", then the history as "message" events. */
  welcome: WelcomeEvent;
  /**
   * Every chat message once, in id order, never twice (history and live, deduplicated across reconnects).
   * Messages a truncated resume reads back come before the welcome's history and the live ones held meanwhile.
   * Not the pages of loadOlder(), which it returns instead.
   */
  message: ChatMessage;
  join: PresenceEvent;
  leave: PresenceEvent;
  /** Another member is typing (not sent for yourself). Show it for a few seconds. */
  typing: TypingEvent;
  /** The active users, sorted, whenever they may have changed. */
  users: string[];
  gap: GapEvent;
  /** Errors not tied to a send() (whose own errors reject its promise), and the fatal ones that close the session. */
  error: ChatError;
}

export interface ConnectOptions {
  /** Sent as ?username= (trimmed, 1-32 characters, no control characters). Omit when a custom auth decides it. */
  username?: string;
  /** Sent as ?room= (1-64 of A-Z a-z 0-9 . _ -). Omit for the server's default. */
  room?: string;
  /** Extra query parameters (e.g. a token), or a function called before each attempt. */
  params?: Record<string, string | number | boolean | null | undefined> | (() => Record<string, string | number | boolean | null | undefined>);
  /** Unacknowledged send()s allowed at once (queued while offline plus in flight); past it send() rejects with queue_full. Default 100. */
  maxQueue?: number;
  /** Give up (status "closed", error connect_failed) after this many consecutive attempts that got no welcome. Default Infinity. */
  maxRetries?: number;
  /** Injection points, for tests and non-browser hosts. */
  /** Called as new WebSocket(url, ["chatkit.v1"]): the client reads batched frames. */
  WebSocket?: new (url: string, protocols?: string[]) => WebSocketLike;
  location?: { href: string };
  setTimeout?: (f: () => void, ms: number) => unknown;
  clearTimeout?: (t: unknown) => void;
  random?: () => number;
  now?: () => number;
}

export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((e: { data: any }) => void) | null;
  onclose: ((e: { code: number; reason: string }) => void) | null;
}

/** What send() returns: a promise with the client_msg_id it will use, known at once. */
export interface SendPromise extends Promise<{ id: number; clientMsgId: string }> {
  clientMsgId: string;
}

export interface Chat {
  /** Subscribe; returns a function that unsubscribes. */
  on<K extends keyof ChatEvents>(event: K, listener: (e: ChatEvents[K]) => void): () => void;
  off<K extends keyof ChatEvents>(event: K, listener: (e: ChatEvents[K]) => void): void;
  /**
   * Sends a message; resolves with its id when the server has stored it (ack, or its chat_message coming back).
   * While not connected it is queued and sent after the resume with the same client_msg_id, so it is stored once.
   * Rejects with a ChatError (code, message, retryAfterMs for rate_limited).
   */
  send(text: string): SendPromise;
  /** Tells the others you are typing; throttled to once a second, ignored while not open. */
  typing(): void;
  /**
   * Scrollback: the next page of older messages, below the oldest this client has seen (welcome history, live
   * messages, earlier pages), so that repeated calls walk back page by page. limit defaults to 50; the server
   * gives at most 100. Concurrent calls share one request. While offline it waits for the connection; the
   * server's rate_limited and unavailable are waited out and asked again. Rejects with a ChatError only on
   * bad_request, or when the chat is closed. After a reconnect to a new epoch (reset) it starts again from the
   * newest. Resolves at once with no messages and hasMore false once the beginning was reached.
   */
  loadOlder(limit?: number): Promise<OlderPage>;
  /** Skip the backoff wait and try now (e.g. a "retry now" button). No-op when open or closed. */
  reconnect(): void;
  /** Closes for good; pending sends reject with code "closed". */
  close(): void;
  readonly status: State;
  /** Active users, sorted, kept up to date. */
  readonly users: string[];
  /** Your username as the server confirmed it (after the first welcome). */
  readonly username: string | undefined;
  readonly room: string | undefined;
  readonly sessionId: string | undefined;
  readonly limits: Partial<Limits>;
  /** Highest message id seen (0 before any). */
  readonly lastId: number;
  readonly epoch: string | undefined;
  /** Number of send()s not acknowledged yet. */
  readonly queued: number;
}

/** Opens a session to the chat handler at path ("/ws" is resolved against the page: ws: or wss: to match http: or https:). */
export function connect(path: string, opts?: ConnectOptions): Chat;
/** Full-jitter backoff delay in ms for 0-based attempt n: random in [0, min(cap, base * 2^n)). */
export function backoff(n: number, random?: () => number, base?: number, cap?: number): number;
/** The absolute ws:/wss: URL for path, with params set (null/undefined skipped). */
export function buildURL(path: string, loc?: { href: string }, params?: Record<string, unknown>): string;

declare global {
  /** Set when client.js is loaded as a module. */
  var ChatKit: {
    connect: typeof connect;
    backoff: typeof backoff;
    buildURL: typeof buildURL;
    ChatError: typeof ChatError;
  };
}
