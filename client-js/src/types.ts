import type { BrokerError, MistError } from "./errors.js";

/** One JSON object of the wire protocol (docs/protocol.md, "Framing"). */
export interface Message {
  command: string;
  tags?: string[];
  data?: string;
  error?: string;
}

/** A message another client published, as the broker delivered it. */
export interface Delivery {
  /** Exactly the publisher's tags, in its order. */
  tags: string[];
  data: string;
}

/** Where the token goes when connecting. */
export type TokenTransport =
  /** the `x-auth-token` query parameter: works everywhere, browsers included */
  | "query"
  /** the `X-AUTH-TOKEN` header: Node only (uses the `ws` package) */
  | "header"
  /** an `auth` command as the connection's first message: an unknown token is then reported (an `error` event) */
  | "auth";

/** What `new WebSocket(...)` must provide; the browser's, Node's and the `ws` package's all do. */
export interface SocketLike {
  readonly readyState: number;
  /** The subprotocol the server agreed to, once open ("" for none). */
  readonly protocol?: string;
  send(data: string): void;
  close(code?: number): void;
  /** The `ws` package's immediate teardown, used when present. */
  terminate?(): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type SocketConstructor = new (url: string, protocols?: string[], options?: object) => SocketLike;

export interface ClientOptions {
  /** The token presented at each connect. */
  token?: string;
  /** Called before each (re)connect for the token to present; overrides `token`. */
  getToken?: () => string | Promise<string>;
  /** Default `"query"`. */
  tokenIn?: TokenTransport;
  /** Reconnect after a lost connection or a failed attempt. Default true. */
  reconnect?: boolean;
  /**
   * Backoff with full jitter: attempt n (1, 2, ...) after a loss waits a
   * random time in [0, min(maxDelay, minDelay·2ⁿ⁻¹)] ms. Defaults 500 and 20000.
   */
  minDelay?: number;
  maxDelay?: number;
  /** Send a ping after this long without hearing from the broker (ms). Default 15000. */
  pingInterval?: number;
  /** A ping unanswered this long, in wall time, ends the connection (ms). Default 10000. */
  pingTimeout?: number;
  /** A connect (socket open, token check, resubscribe) not done by then is abandoned (ms). Default 10000. */
  connectTimeout?: number;
  /** Publishes kept while disconnected, sent after the next connect. Default 0: such a publish fails at once. */
  queueLimit?: number;
  /**
   * Ask for the `mist.lines` subprotocol (docs/protocol.md): the broker then
   * sends deliveries many to a frame, and each request goes out with its
   * barrier ping in one frame. Default true. A broker too old to know it
   * agrees to no subprotocol, and browsers then refuse the connection: set
   * false for those.
   */
  lines?: boolean;
  /** The WebSocket implementation; default the global one, else the `ws` package. */
  WebSocket?: SocketConstructor;
  /** Options for the `ws` package's constructor in Node (`ca`, `headers`, ...); giving them selects `ws`. */
  wsOptions?: Record<string, unknown>;
}

export type DisconnectReason =
  /** `close()` was called */
  | "closed"
  /** the socket closed or failed; `code` and `detail` say more when known */
  | "socket"
  /** our ping went unanswered for `pingTimeout` */
  | "ping-timeout"
  /** the connect did not finish within `connectTimeout` */
  | "connect-timeout"
  /** `refreshToken()` reconnects to present the new token */
  | "token-refresh";

/** A subscription that could not be made again after a reconnect. */
export interface ResubscribeFailure {
  tags: string[];
  error: MistError;
}

export interface ClientEvents {
  /** A connection is ready: token presented, subscriptions made again. */
  connected: {
    /** 1 for the first connection, then one more per reconnect. */
    count: number;
    /** The subscriptions made again on this connection (sorted tag sets). */
    resubscribed: string[][];
    /** Those the broker refused this time; their handles are ended. */
    failed: ResubscribeFailure[];
  };
  /** A ready connection ended. */
  disconnected: {
    reason: DisconnectReason;
    code?: number;
    detail?: string;
    willReconnect: boolean;
  };
  /** The next connect attempt is due in `delay` ms. */
  reconnecting: { attempt: number; delay: number; reason: DisconnectReason };
  /** The broker took a subscription away (an admin `unset`, an expired token). */
  revoked: { tags: string[]; error: string };
  /**
   * Something went wrong outside any request: a token refused at connect
   * (`tokenIn: "auth"`, a {@link BrokerError}), a failed `getToken()` or a
   * missing `ws` package (then the connect is retried), a frame that is not
   * JSON, or whatever a subscription handler or event listener
   * threw (reported here so that the client's own state stays whole).
   */
  error: Error;
  /** A message that is no reply, delivery or notice (a plugin's, say). */
  unsolicited: Message;
}
