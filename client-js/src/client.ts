import { BrokerError, ConnectionError, type ConnectionErrorCode, MistError } from "./errors.js";
import type {
  ClientEvents,
  ClientOptions,
  Delivery,
  DisconnectReason,
  Message,
  ResubscribeFailure,
  SocketConstructor,
  SocketLike,
} from "./types.js";

type Listener<K extends keyof ClientEvents> = (event: ClientEvents[K]) => void;

/** A request waiting for its pong (docs/protocol.md, "Writing a client"). */
interface Waiting {
  command: string;
  reply?: Message;
  error?: Message;
  resolve(reply: Message | undefined): void;
  reject(error: MistError): void;
}

/** A publish kept while disconnected (`queueLimit`). */
interface Queued {
  message: Message;
  resolve(): void;
  reject(error: MistError): void;
}

const PING = '{"command":"ping"}';
/** The subprotocol for several messages per frame (docs/protocol.md). */
const LINES = "mist.lines";
const noop = () => {};

/** A tag set's identity: the broker treats `["b","a","a"]` as `["a","b"]`. */
const keyOf = (tags: readonly string[]) => JSON.stringify([...new Set(tags)].sort());

const closedError = (code: ConnectionErrorCode, text: string) => new ConnectionError(text, code);

/** Throws `error` outside the current call stack, where nothing can swallow it. */
const rethrowLater = (error: unknown) =>
  setTimeout(() => {
    throw error;
  });

/** One `subscribe()`: its tags, its handler, and whether it still holds. */
export class Subscription {
  /**
   * `active` until `unsubscribe()` (`unsubscribed`), a `revoked` notice
   * (`revoked`), a refusal after a reconnect (`failed`, see `error`), or
   * `close()` (`closed`).
   */
  state: "active" | "unsubscribed" | "revoked" | "failed" | "closed" = "active";
  /** Why the broker ended it, for `revoked` and `failed`. */
  error?: MistError;
  /** @internal */
  readonly key: string;

  /** @internal */
  constructor(
    private readonly client: Client,
    /** The tags as given to `subscribe()`. */
    readonly tags: string[],
    /** @internal */
    readonly handler: (delivery: Delivery) => void,
  ) {
    this.key = keyOf(tags);
  }

  /**
   * Stops deliveries to this handler. The broker's subscription goes when no
   * other handle holds the same tag set. While disconnected it only ends
   * the handle (the connection took the broker's side with it).
   */
  unsubscribe(): Promise<void> {
    return this.client._drop(this);
  }
}

/**
 * A Mist client over WebSocket. Requests are answered in order, each
 * followed by a ping whose pong ends its answer; deliveries and `revoked`
 * notices arriving in between are told apart from replies by their command.
 */
export class Client {
  private readonly options: Required<
    Omit<ClientOptions, "token" | "getToken" | "WebSocket" | "wsOptions">
  > &
    ClientOptions;
  private token?: string;
  /** A token to present at the next connect instead of asking `getToken`. */
  private nextToken?: string;
  private socket?: SocketLike;
  /** Bumped whenever a socket is abandoned: events of older sockets are ignored. */
  private generation = 0;
  private status: "idle" | "connecting" | "connected" | "closed" = "idle";
  private waiting: Waiting[] = [];
  private queue: Queued[] = [];
  private subscriptions = new Set<Subscription>();
  private listeners: { [K in keyof ClientEvents]?: Set<Listener<K>> } = {};
  /** Consecutive failed attempts: the exponent of the backoff. */
  private failures = 0;
  private connections = 0;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private connectTimer?: ReturnType<typeof setTimeout>;
  private heartbeat?: ReturnType<typeof setInterval>;
  /** Whether the open socket speaks `mist.lines`: a request and its ping go in one frame. */
  private lines = false;
  /** Wall time of the last frame received, and how many have come. */
  private lastHeard = 0;
  private heard = 0;
  /** Our liveness ping in flight: when it was sent and `heard` then. */
  private probeSentAt = 0;
  private probeHeard = 0;
  private probeSuspect = false;
  private ready: Array<{ resolve(): void; reject(e: MistError): void }> = [];

  constructor(
    /** `ws://host:port/`, `wss://...`, or the HTTP listener's `.../subscribe/websocket`. */
    readonly url: string,
    options: ClientOptions = {},
  ) {
    this.options = {
      tokenIn: "query",
      reconnect: true,
      minDelay: 500,
      maxDelay: 20_000,
      pingInterval: 15_000,
      pingTimeout: 10_000,
      connectTimeout: 10_000,
      queueLimit: 0,
      lines: true,
      // An option given as undefined keeps its default.
      ...Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)),
    };
    this.token = options.token;
  }

  /** `idle` before `connect()`, then `connecting`/`connected`, `closed` after `close()`. */
  get state() {
    return this.status;
  }

  /** Listens to an event; returns the function that stops listening. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<K>): () => void {
    const all = this.listeners as { [k: string]: Set<Listener<K>> | undefined };
    const set = (all[event] ??= new Set());
    set.add(listener);
    return () => set.delete(listener);
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]) {
    for (const listener of [...(this.listeners[event] ?? [])]) {
      this.guard(() => (listener as Listener<K>)(value));
    }
  }

  /** Runs application code so that what it throws cannot break the client's state. */
  private guard(call: () => void) {
    try {
      call();
    } catch (error) {
      if (this.listeners.error?.size) this.emit("error", error as Error);
      else rethrowLater(error);
    }
  }

  /**
   * Connects, and resolves once the connection is ready. With `reconnect`
   * (the default) failed attempts are retried with backoff until one
   * succeeds or `close()` is called; without it the first failure rejects.
   */
  connect(): Promise<void> {
    if (this.status === "connected") return Promise.resolve();
    const ready = new Promise<void>((resolve, reject) => this.ready.push({ resolve, reject }));
    if (this.status === "idle" || this.status === "closed") {
      this.status = "connecting";
      this.open();
    }
    return ready;
  }

  /** Closes the connection for good: waiting requests, queued publishes and subscriptions end. */
  close(): void {
    const error = closedError("closed", "the client was closed");
    this.abandon("closed", "closed");
    for (const queued of this.queue.splice(0)) queued.reject(error);
    for (const waiter of this.ready.splice(0)) waiter.reject(error);
    for (const subscription of this.subscriptions) subscription.state = "closed";
    this.subscriptions.clear();
  }

  private async open() {
    const generation = ++this.generation;
    const { tokenIn, connectTimeout, wsOptions } = this.options;
    this.connectTimer = setTimeout(
      () => this.lost(generation, "connect-timeout"),
      connectTimeout,
    );
    let socket: SocketLike;
    try {
      let token = this.nextToken;
      this.nextToken = undefined;
      if (token === undefined) token = this.options.getToken ? await this.options.getToken() : this.token;
      this.token = token;
      const Socket = await this.implementation();
      if (generation !== this.generation) return;
      const url = new URL(this.url);
      const headers: Record<string, string> = { ...(wsOptions?.headers as object) };
      if (token !== undefined && tokenIn === "query") url.searchParams.set("x-auth-token", token);
      if (token !== undefined && tokenIn === "header") headers["X-AUTH-TOKEN"] = token;
      // Browsers ignore the third argument; the `ws` package takes its options there.
      const protocols = this.options.lines ? [LINES] : [];
      socket = new Socket(url.href, protocols, { ...wsOptions, headers });
    } catch (error) {
      // getToken failed, or the `ws` package is missing: tell, and try again later.
      if (generation === this.generation) this.emit("error", error as Error);
      return this.lost(generation, "socket", undefined, String(error));
    }
    if (generation !== this.generation) return socket.close();
    this.socket = socket;
    socket.onopen = () => {
      this.lines = socket.protocol === LINES;
      this.handshake(generation);
    };
    socket.onmessage = (event) => generation === this.generation && this.receive(event.data);
    socket.onclose = (event) => this.lost(generation, "socket", event.code, event.reason || undefined);
    // Keep a listener: the `ws` package throws an `error` event nobody listens to.
    socket.onerror = (event) =>
      this.lost(generation, "socket", undefined, (event as { message?: string }).message || "error");
  }

  /** The global WebSocket, unless Node options ask for the `ws` package. */
  private async implementation(): Promise<SocketConstructor> {
    const { WebSocket, wsOptions, tokenIn } = this.options;
    if (WebSocket) return WebSocket;
    const global = (globalThis as { WebSocket?: SocketConstructor }).WebSocket;
    if (global && !wsOptions && tokenIn !== "header") return global;
    // Browser bundlers skip it: package.json's "browser" field maps `ws` to nothing.
    const ws = await import("ws");
    return (ws.default ?? ws.WebSocket) as unknown as SocketConstructor;
  }

  /** The socket is open: present the token, check with a ping, subscribe again. */
  private async handshake(generation: number) {
    this.lastHeard = Date.now();
    const failed: ResubscribeFailure[] = [];
    const resubscribed: string[][] = [];
    try {
      if (this.options.tokenIn === "auth" && this.token !== undefined) {
        await this.send({ command: "auth", data: this.token }).catch((error) => {
          if (!(error instanceof BrokerError)) throw error;
          this.emit("error", error); // the connection goes on, anonymous
        });
      }
      await this.send({ command: "ping" });
      const byKey = new Map<string, Subscription[]>();
      for (const subscription of this.subscriptions) {
        const same = byKey.get(subscription.key);
        if (same) same.push(subscription);
        else byKey.set(subscription.key, [subscription]);
      }
      // All in flight at once: one round trip, however many there are.
      await Promise.all(
        [...byKey].map(async ([key, subscriptions]) => {
          const tags = JSON.parse(key) as string[];
          try {
            await this.send({ command: "subscribe", tags });
            resubscribed.push(tags);
          } catch (error) {
            if (!(error instanceof BrokerError)) throw error;
            failed.push({ tags, error });
            for (const subscription of subscriptions) this.end(subscription, "failed", error);
          }
        }),
      );
    } catch {
      return; // the socket went away meanwhile; `lost` has dealt with it
    }
    if (generation !== this.generation) return;
    clearTimeout(this.connectTimer);
    this.status = "connected";
    this.failures = 0;
    this.connections++;
    this.startHeartbeat(generation);
    for (const queued of this.queue.splice(0)) {
      this.send(queued.message).then(() => queued.resolve(), queued.reject);
    }
    this.emit("connected", { count: this.connections, resubscribed, failed });
    for (const waiter of this.ready.splice(0)) waiter.resolve();
  }

  /**
   * Liveness by our own pings, judged on wall time: a ping unanswered for
   * `pingTimeout` is only suspect at the first check that sees it, and the
   * verdict comes at the next one. In between the event loop has run, so a
   * pong that waited in the queue while timers were throttled (a background
   * tab) or the process was suspended has been read by then.
   */
  private startHeartbeat(generation: number) {
    const { pingInterval, pingTimeout } = this.options;
    this.probeSentAt = 0;
    this.heartbeat = setInterval(
      () => {
        const now = Date.now();
        if (this.probeSentAt && this.heard !== this.probeHeard) this.probeSentAt = 0;
        if (!this.probeSentAt) {
          if (now - this.lastHeard >= pingInterval) {
            this.probeSentAt = now;
            this.probeHeard = this.heard;
            this.probeSuspect = false;
            this.send({ command: "ping" }).catch(noop);
          }
        } else if (now - this.probeSentAt >= pingTimeout) {
          if (this.probeSuspect) this.lost(generation, "ping-timeout");
          this.probeSuspect = true;
        }
      },
      Math.max(10, Math.min(pingInterval, pingTimeout) / 2),
    );
    // Node: the socket, not this timer, keeps the process running.
    (this.heartbeat as { unref?: () => void }).unref?.();
  }

  /**
   * Ends the socket of `generation` (if still current), fails what waited on
   * it, tells the application, and schedules the next attempt.
   */
  private lost(generation: number, reason: DisconnectReason, code?: number, detail?: string, delay?: number) {
    if (generation !== this.generation || this.status === "closed") return;
    const { reconnect, minDelay, maxDelay } = this.options;
    const again = reconnect || reason === "token-refresh";
    this.abandon(again ? "connecting" : "idle", reason, code, detail);
    if (!again) {
      const error = closedError("not-connected", `could not connect: ${detail ?? reason}`);
      for (const queued of this.queue.splice(0)) queued.reject(error);
      for (const waiter of this.ready.splice(0)) waiter.reject(error);
      return;
    }
    // Full jitter: uniformly random up to the exponential bound.
    const bound = Math.min(maxDelay, minDelay * 2 ** this.failures++);
    const wait = delay ?? Math.random() * bound;
    this.emit("reconnecting", { attempt: this.failures, delay: wait, reason });
    this.reconnectTimer = setTimeout(() => this.open(), wait);
  }

  /** Drops the current socket and everything tied to it, and moves to `next`. */
  private abandon(next: "connecting" | "idle" | "closed", reason: DisconnectReason, code?: number, detail?: string) {
    const wasReady = this.status === "connected";
    this.status = next;
    this.generation++;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.connectTimer);
    clearInterval(this.heartbeat);
    const socket = this.socket;
    this.socket = undefined;
    if (socket) {
      socket.onopen = null;
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = noop;
      try {
        // A dead peer never answers a close handshake: drop it outright where we can.
        if (socket.terminate) socket.terminate();
        else socket.close();
      } catch {
        // already closed
      }
    }
    const error =
      next === "closed"
        ? closedError("closed", "the client was closed before the answer")
        : closedError("disconnected", `the connection ended (${detail ?? reason}) before the answer`);
    for (const waiting of this.waiting.splice(0)) waiting.reject(error);
    if (wasReady) this.emit("disconnected", { reason, code, detail, willReconnect: next === "connecting" });
  }

  /**
   * One frame: one message, or under `mist.lines` one or more lines of them.
   * Split either way: a one-message frame holds no raw newline (JSON has
   * none outside its whitespace, and the broker writes none), so this does
   * not depend on the socket reporting its subprotocol.
   */
  private receive(raw: unknown) {
    this.lastHeard = Date.now();
    this.heard++;
    for (const line of String(raw).split("\n")) if (line) this.receiveOne(line);
  }

  /** Sorts one message: a delivery, a notice, or part of the oldest request's answer. */
  private receiveOne(raw: string) {
    let message: Message;
    try {
      message = JSON.parse(raw);
      if (typeof message !== "object" || !message) throw 0;
    } catch {
      return this.emit("error", new Error(`the broker sent a message that is no JSON object: ${raw.slice(0, 100)}`));
    }
    const { command, error } = message;
    if (command === "publish" && error === undefined) return this.deliver(message);
    if (command === "revoked") return this.revoked(message);
    const oldest = this.waiting[0];
    if (command === "ping" && message.data === "pong" && error === undefined && oldest) {
      this.waiting.shift();
      if (oldest.error) oldest.reject(new BrokerError(oldest.error.error!, oldest.error.command));
      else oldest.resolve(oldest.reply);
    } else if (oldest && (command === oldest.command || command === "")) {
      if (error !== undefined) oldest.error ??= message;
      else oldest.reply ??= message;
    } else {
      this.emit("unsolicited", message);
    }
  }

  private deliver(message: Message) {
    const delivery: Delivery = { tags: Array.isArray(message.tags) ? message.tags : [], data: message.data ?? "" };
    const tags = new Set(delivery.tags);
    for (const subscription of this.subscriptions) {
      if (subscription.tags.every((tag) => tags.has(tag))) {
        this.guard(() => subscription.handler(delivery));
      }
    }
  }

  private revoked(message: Message) {
    const tags = Array.isArray(message.tags) ? message.tags : [];
    const key = keyOf(tags);
    const error = new BrokerError(message.error ?? "subscription revoked", "revoked");
    for (const subscription of this.subscriptions) {
      if (subscription.key === key) this.end(subscription, "revoked", error);
    }
    this.emit("revoked", { tags, error: error.message });
  }

  private end(subscription: Subscription, state: "revoked" | "failed", error: MistError) {
    this.subscriptions.delete(subscription);
    subscription.state = state;
    subscription.error = error;
  }

  /**
   * Writes a request and its barrier ping, and registers it as waiting in
   * the same step (nothing can be read in between), so that the order of
   * `waiting` is the order on the wire.
   */
  private send(message: Message): Promise<Message | undefined> {
    const socket = this.socket;
    if (!socket) return Promise.reject(closedError("not-connected", "not connected"));
    return new Promise((resolve, reject) => {
      const text = JSON.stringify(message);
      if (message.command === "ping") socket.send(text);
      // One frame for the request and its barrier (JSON.stringify never
      // writes a raw newline).
      else if (this.lines) socket.send(`${text}\n${PING}`);
      else {
        socket.send(text);
        socket.send(PING);
      }
      this.waiting.push({ command: message.command, resolve, reject });
    });
  }

  /**
   * Sends any command (a plugin's, say) and resolves with its reply, or
   * undefined for a command that answers nothing on success. Rejects with a
   * {@link BrokerError} when the broker refuses it.
   */
  request(message: Message): Promise<Message | undefined> {
    if (this.status !== "connected") {
      return Promise.reject(
        closedError(this.status === "closed" ? "closed" : "not-connected", "not connected"),
      );
    }
    return this.send(message);
  }

  /** Resolves at the broker's pong. */
  async ping(): Promise<void> {
    await this.request({ command: "ping" });
  }

  /**
   * Publishes; resolves once the broker has taken the message (the pong
   * after it), rejects with the broker's refusal. While disconnected it
   * fails at once, unless `queueLimit` lets it wait for the next connect.
   */
  publish(tags: readonly string[], data = ""): Promise<void> {
    // Key order as the broker's fast path expects: command, tags, data.
    const message = { command: "publish", tags: [...tags], data };
    if (this.status === "connecting" && this.queue.length < this.options.queueLimit) {
      return new Promise((resolve, reject) => this.queue.push({ message, resolve, reject }));
    }
    if (this.status === "connecting" && this.options.queueLimit) {
      return Promise.reject(
        closedError("queue-full", `not connected, and ${this.options.queueLimit} publishes are waiting already`),
      );
    }
    return this.request(message).then(noop);
  }

  /**
   * Subscribes `handler` to every message carrying all of `tags`; resolves
   * once the subscription is live. It is made again after each reconnect.
   */
  async subscribe(tags: readonly string[], handler: (delivery: Delivery) => void): Promise<Subscription> {
    const subscription = new Subscription(this, [...tags], handler);
    // Registered before the request: deliveries may arrive before the pong.
    const request = this.request({ command: "subscribe", tags: subscription.tags });
    if (this.status === "connected") this.subscriptions.add(subscription);
    try {
      await request;
    } catch (error) {
      this.subscriptions.delete(subscription);
      subscription.state = "failed";
      subscription.error = error as MistError;
      throw error;
    }
    return subscription;
  }

  /** @internal `Subscription.unsubscribe()`. */
  async _drop(subscription: Subscription): Promise<void> {
    if (!this.subscriptions.delete(subscription)) return;
    subscription.state = "unsubscribed";
    for (const other of this.subscriptions) if (other.key === subscription.key) return;
    try {
      await this.request({ command: "unsubscribe", tags: subscription.tags });
    } catch (error) {
      // Without a connection the broker holds nothing of it any more.
      if (error instanceof BrokerError) throw error;
    }
  }

  /** This connection's subscriptions as the broker holds them: sorted tag sets. */
  async list(): Promise<string[][]> {
    const reply = await this.request({ command: "list" });
    return JSON.parse(reply?.data ?? "[]");
  }

  /** The broker's figures (`connections`, `subscriptions`, ...); admin mode with an authenticator. */
  async who(): Promise<Record<string, unknown>> {
    const reply = await this.request({ command: "who" });
    return JSON.parse(reply?.data ?? "{}");
  }

  /** Admin: creates `token` holding `tags`. */
  async register(token: string, tags: readonly string[] = []): Promise<void> {
    await this.request({ command: "register", tags: [...tags], data: token });
  }

  /** Admin: deletes `token`; its connections lose every subscription. */
  async unregister(token: string): Promise<void> {
    await this.request({ command: "unregister", data: token });
  }

  /** Admin: adds `tags` to `token`. */
  async set(token: string, tags: readonly string[]): Promise<void> {
    await this.request({ command: "set", tags: [...tags], data: token });
  }

  /** Admin: takes `tags` from `token`; subscriptions holding one are revoked. */
  async unset(token: string, tags: readonly string[]): Promise<void> {
    await this.request({ command: "unset", tags: [...tags], data: token });
  }

  /** Admin: the tags `token` holds, sorted. */
  async tags(token: string): Promise<string[]> {
    const reply = await this.request({ command: "tags", data: token });
    return reply?.tags ?? [];
  }

  /**
   * Presents a new token (`token`, else one from `getToken`). It is sent as
   * `auth` on the live connection; a broker that accepts a later `auth`
   * (a JWT authenticator) replaces the token in place, without a gap. A
   * broker that refuses it gets the new token by a reconnect instead, with
   * every subscription made again (see the `connected` event's `failed`).
   * Resolves once the new token is in use; `inPlace` says which way.
   * While disconnected the token is kept for the next connect.
   */
  async refreshToken(token?: string): Promise<{ inPlace: boolean; refusal?: BrokerError }> {
    token ??= await this.options.getToken?.();
    if (token === undefined) throw new TypeError("refreshToken needs a token or a getToken option");
    this.token = token;
    if (this.status !== "connected") {
      this.nextToken = token;
      return { inPlace: false };
    }
    try {
      await this.send({ command: "auth", data: token });
      return { inPlace: true };
    } catch (error) {
      // Lost meanwhile: the next connect presents the new token.
      this.nextToken = token;
      if (!(error instanceof BrokerError)) throw error;
      const ready = new Promise<void>((resolve, reject) => this.ready.push({ resolve, reject }));
      this.lost(this.generation, "token-refresh", undefined, error.message, 0);
      await ready;
      return { inPlace: false, refusal: error };
    }
  }
}
