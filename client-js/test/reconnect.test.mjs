// @ts-check
// Losing the broker: killed and restarted, paused (SIGSTOP), or never there;
// and a frozen event loop that must not count as a dead broker.
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, test } from "node:test";
import WebSocket from "ws";
import { Client, ConnectionError } from "mist-client";
import { Broker, TIMEOUT, closeAll, collector, connected, next, within } from "./support.mjs";

/** @typedef {import("mist-client").SocketLike} SocketLike */

/** @type {Broker[]} */
const brokers = [];
after(async () => {
  closeAll();
  for (const broker of brokers) await broker.kill();
});

/** @param {string[]} [args] */
async function start(args = []) {
  const broker = await Broker.start(["ws://127.0.0.1:0"], args);
  brokers.push(broker);
  return broker;
}

/**
 * The full-jitter bound of attempt `n` (1, 2, ...).
 * @param {number} attempt
 * @param {number} min
 * @param {number} max
 */
const bound = (attempt, min, max) => Math.min(max, min * 2 ** (attempt - 1));

test("a broker killed and restarted mid-stream: reconnect within the backoff bound, subscriptions back, the app told", { timeout: 60_000 }, async () => {
  const minDelay = 100;
  const maxDelay = 800;
  let broker = await start();
  const subscriber = await connected(broker.url("ws"), { minDelay, maxDelay });
  const publisher = await connected(broker.url("ws"), { minDelay, maxDelay, queueLimit: 3 });
  const stream = collector();
  const narrow = collector();
  await subscriber.subscribe(["stream"], stream.handler);
  await subscriber.subscribe(["stream", "b"], narrow.handler);

  /** @type {import("mist-client").ClientEvents["reconnecting"][]} */
  const attempts = [];
  subscriber.on("reconnecting", (e) => attempts.push(e));
  const disconnected = next(subscriber, "disconnected");

  // Mid-stream: the publisher goes on while the broker dies under it.
  let sent = 0;
  for (; sent < 50; sent++) await publisher.publish(["stream"], String(sent));
  await stream.until(50);
  await broker.kill();

  const lost = await disconnected;
  assert.equal(lost.reason, "socket");
  assert.equal(lost.willReconnect, true);
  assert.equal(subscriber.state, "connecting");

  // While disconnected: fail fast by default, queue up to queueLimit when asked.
  const fast = await subscriber.publish(["stream"], "x").catch((e) => e);
  assert.ok(fast instanceof ConnectionError);
  assert.equal(fast.code, "not-connected");
  await next(publisher, "reconnecting");
  const queued = [0, 1, 2].map((i) => publisher.publish(["stream"], `queued ${i}`));
  const over = await publisher.publish(["stream"], "one too many").catch((e) => e);
  assert.ok(over instanceof ConnectionError);
  assert.equal(over.code, "queue-full");

  // Let the backoff climb to its ceiling before the broker comes back.
  while (attempts.length < 5) await next(subscriber, "reconnecting");
  attempts.forEach((a, i) => {
    assert.equal(a.attempt, i + 1);
    assert.ok(a.delay >= 0 && a.delay <= bound(a.attempt, minDelay, maxDelay), `attempt ${a.attempt} waits ${a.delay} ms`);
  });
  const back = next(subscriber, "connected", () => true, maxDelay + TIMEOUT);
  const publisherBack = next(publisher, "connected", () => true, maxDelay + TIMEOUT);
  broker = await broker.restart();
  brokers.push(broker);

  const ready = await back;
  assert.equal(ready.count, 2);
  assert.deepEqual(ready.resubscribed.sort(), [["b", "stream"], ["stream"]]);
  assert.deepEqual(ready.failed, []);
  assert.equal(subscriber.state, "connected");
  assert.deepEqual(await subscriber.list(), [["b", "stream"], ["stream"]]);
  await publisherBack;
  await within(Promise.all(queued), "the queued publishes, sent after the reconnect");

  // The stream goes on to the restored subscriptions.
  await publisher.publish(["stream", "b"], "after");
  await subscriber.ping();
  const after = stream.got.filter((d) => d.data === "after");
  assert.equal(after.length, 1);
  assert.deepEqual(narrow.got.map((d) => d.data), ["after"]);
});

test("a dead connection is found by ping timeout (broker paused with SIGSTOP), then reconnects", { timeout: 60_000 }, async () => {
  const broker = await start();
  const options = { pingInterval: 200, pingTimeout: 500, connectTimeout: 1000, minDelay: 50, maxDelay: 200 };
  const subscriber = await connected(broker.url("ws"), options);
  const got = collector();
  await subscriber.subscribe(["p"], got.handler);
  const lost = next(subscriber, "disconnected");
  try {
    await broker.pause();
    const pending = subscriber.ping().catch((e) => e);
    const event = await lost;
    assert.equal(event.reason, "ping-timeout");
    assert.equal(event.willReconnect, true);
    const failed = await within(pending, "the pending ping to fail");
    assert.ok(failed instanceof ConnectionError);
    assert.equal(failed.code, "disconnected");
    // The kernel still accepts the TCP connection; the handshake never comes.
    await next(subscriber, "reconnecting", (e) => e.reason === "connect-timeout");
  } finally {
    broker.resume();
  }
  const ready = await next(subscriber, "connected");
  assert.deepEqual(ready.resubscribed, [["p"]]);
  const publisher = await connected(broker.url("ws"));
  await publisher.publish(["p"], "alive again");
  await got.until(1);
  assert.deepEqual(got.got, [{ tags: ["p"], data: "alive again" }]);
});

test("a frozen event loop (a throttled or frozen tab) is not taken for a dead broker", { timeout: 60_000 }, async () => {
  const broker = await start();
  let freeze = false;
  /** @type {() => void} */
  let probeSent = () => {};
  /**
   * A socket whose process freezes for 1.5 s right after the heartbeat's
   * ping is written, as a frozen tab or a suspended laptop does. On waking,
   * what arrived meanwhile is read only after the timers due by then have
   * run: the order a browser may use, and the one that fools a detector
   * that believes its timer.
   */
  /** @implements {SocketLike} */
  class FreezingSocket {
    /**
     * @param {string} url
     * @param {string[]} [protocols]
     * @param {object} [options]
     */
    constructor(url, protocols, options) {
      this.ws = new WebSocket(url, protocols, options);
      /** @type {import("mist-client").SocketLike["onopen"]} */
      this.onopen = null;
      /** @type {import("mist-client").SocketLike["onmessage"]} */
      this.onmessage = null;
      /** @type {import("mist-client").SocketLike["onclose"]} */
      this.onclose = null;
      /** @type {import("mist-client").SocketLike["onerror"]} */
      this.onerror = null;
      /** @type {{ data: unknown }[] | undefined} */
      this.held = undefined;
      this.ws.onopen = (e) => this.onopen?.(e);
      this.ws.onclose = (e) => this.onclose?.(e);
      this.ws.onerror = (e) => this.onerror?.(e);
      this.ws.onmessage = (event) => {
        const held = this.held;
        if (!held) return this.onmessage?.(event);
        // Released by a timer set now, after the heartbeat's (already due).
        if (held.push(event) === 1) {
          setTimeout(() => {
            this.held = undefined;
            for (const e of held) this.onmessage?.(e);
          });
        }
      };
    }
    get readyState() {
      return this.ws.readyState;
    }
    /** @param {number} [code] */
    close(code) {
      this.ws.close(code);
    }
    terminate() {
      this.ws.terminate();
    }
    /** @param {string} data */
    send(data) {
      this.ws.send(data);
      if (data !== '{"command":"ping"}') return;
      probeSent();
      if (!freeze) return;
      freeze = false;
      this.held = [];
      const until = Date.now() + 1500;
      while (Date.now() < until);
    }
  }
  /** Resolves at the heartbeat's next probe. */
  const nextProbe = () => within(new Promise((resolve) => (probeSent = () => resolve(undefined))), "a heartbeat ping");
  const client = await connected(broker.url("ws"), {
    pingInterval: 50,
    pingTimeout: 400,
    WebSocket: FreezingSocket,
  });
  /** @type {unknown[]} */
  const disconnects = [];
  client.on("disconnected", (e) => disconnects.push(e));
  // Idle from here on: the next ping is the heartbeat's, and the freeze follows it.
  freeze = true;
  await nextProbe();
  // Several heartbeats later, still the same connection.
  for (let i = 0; i < 5; i++) await nextProbe();
  await client.ping();
  assert.equal(freeze, false, "the freeze happened");
  assert.deepEqual(disconnects, []);
  assert.equal(client.state, "connected");
});

test("attempts against a port nobody serves back off with full jitter; without reconnect, connect() rejects", { timeout: 30_000 }, async () => {
  const port = await new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const address = /** @type {import("node:net").AddressInfo} */ (server.address());
      server.close(() => resolve(address.port));
    });
  });
  const url = `ws://127.0.0.1:${port}/`;

  const once = new Client(url, { reconnect: false });
  const refused = await within(once.connect().catch((e) => e), "connect() to fail");
  assert.ok(refused instanceof ConnectionError);
  assert.equal(refused.code, "not-connected");
  assert.equal(once.state, "idle");

  const minDelay = 10;
  const maxDelay = 80;
  const retrying = new Client(url, { minDelay, maxDelay });
  /** @type {import("mist-client").ClientEvents["reconnecting"][]} */
  const attempts = [];
  const eight = new Promise((resolve) =>
    retrying.on("reconnecting", (e) => attempts.push(e) === 8 && resolve(undefined)),
  );
  const connecting = retrying.connect().catch((e) => e);
  await within(eight, "8 attempts");
  retrying.close();
  const closed = await connecting;
  assert.ok(closed instanceof ConnectionError);
  assert.equal(closed.code, "closed");
  assert.deepEqual(attempts.map((a) => a.attempt), [1, 2, 3, 4, 5, 6, 7, 8]);
  for (const a of attempts) {
    assert.equal(a.reason, "socket");
    assert.ok(a.delay >= 0 && a.delay < bound(a.attempt, minDelay, maxDelay), `attempt ${a.attempt} waits ${a.delay} ms`);
  }
  // Jitter: the waits are not the bounds themselves.
  assert.ok(new Set(attempts.map((a) => a.delay)).size > 1);
});
