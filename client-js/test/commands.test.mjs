// @ts-check
// Every command against a real broker, and the broker's error text kept in
// typed errors.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { BrokerError, Client, ConnectionError } from "mist-client";
import WebSocket from "ws";
import { Broker, closeAll, collector, connected, within } from "./support.mjs";

/** @param {unknown} error */
const brokerError = (error) => {
  assert.ok(error instanceof BrokerError, `a BrokerError, not ${error}`);
  return error;
};

describe("basic commands, no authenticator", () => {
  /** @type {Broker} */
  let broker;
  before(async () => {
    broker = await Broker.start(["ws://127.0.0.1:0", "http://127.0.0.1:0"]);
  });
  after(async () => {
    closeAll();
    await broker.kill();
  });

  test("ping, subscribe, publish, list, unsubscribe over the ws listener", { timeout: 30_000 }, async () => {
    const a = await connected(broker.url("ws"));
    const b = await connected(broker.url("ws"));
    await a.ping();
    const hello = collector();
    const sub = await a.subscribe(["hello", "world"], hello.handler);
    assert.equal(sub.state, "active");
    assert.deepEqual(await a.list(), [["hello", "world"]]);

    await b.publish(["world", "hello", "extra"], 'hi, "quoted" é\nline two');
    await b.publish(["hello"], "not a match: lacks world");
    await b.publish(["hello", "world"], "second");
    await hello.until(2);
    assert.deepEqual(hello.got, [
      { tags: ["world", "hello", "extra"], data: 'hi, "quoted" é\nline two' },
      { tags: ["hello", "world"], data: "second" },
    ]);

    await sub.unsubscribe();
    assert.equal(sub.state, "unsubscribed");
    assert.deepEqual(await a.list(), []);
    await b.publish(["hello", "world"], "after unsubscribe");
    await a.ping(); // b's publish was taken before b's pong; a's ping comes after it
    assert.equal(hello.got.length, 2, "nothing after unsubscribe");
  });

  test("the HTTP listener's /subscribe/websocket speaks the same", { timeout: 30_000 }, async () => {
    const a = await connected(`${broker.url("http").replace("http", "ws")}/subscribe/websocket`);
    const b = await connected(broker.url("ws"));
    const got = collector();
    await a.subscribe(["h"], got.handler);
    await b.publish(["h"], "via http");
    await got.until(1);
    assert.deepEqual(got.got, [{ tags: ["h"], data: "via http" }]);
  });

  test("mist.lines by default: deliveries many to a frame; lines: false keeps one per frame", { timeout: 30_000 }, async () => {
    /** @type {number[]} frames each socket the clients opened has received, in order of opening */
    const frames = [];
    class Counting extends WebSocket {
      /** @param {string} url @param {string[] | undefined} protocols @param {object | undefined} options */
      constructor(url, protocols, options) {
        super(url, protocols, options);
        const index = frames.push(0) - 1;
        this.on("message", () => frames[index]++);
      }
    }
    const batched = collector();
    const single = collector();
    const a = await connected(broker.url("ws"), { WebSocket: /** @type {any} */ (Counting) });
    const b = await connected(broker.url("ws"), { WebSocket: /** @type {any} */ (Counting), lines: false });
    await a.subscribe(["burst"], batched.handler);
    await b.subscribe(["burst"], single.handler);
    const [aBefore, bBefore] = frames;

    // 200 publishes in one frame, fed to the broker as one batch.
    const publisher = new WebSocket(broker.url("ws"), ["mist.lines"]);
    await within(new Promise((resolve, reject) => {
      publisher.once("open", resolve);
      publisher.once("error", reject);
    }), "the publisher's connection");
    assert.equal(publisher.protocol, "mist.lines");
    const lines = [];
    for (let i = 0; i < 200; i++) lines.push(JSON.stringify({ command: "publish", tags: ["burst"], data: String(i) }));
    publisher.send(lines.join("\n"));
    await batched.until(200);
    await single.until(200);
    publisher.close();
    const expected = Array.from({ length: 200 }, (_, i) => ({ tags: ["burst"], data: String(i) }));
    assert.deepEqual(batched.got, expected);
    assert.deepEqual(single.got, expected);
    assert.equal(frames[1] - bBefore, 200, "lines: false gets one frame per delivery");
    assert.ok(frames[0] - aBefore < 20, `200 deliveries of one batch came in ${frames[0] - aBefore} frames`);
  });

  test("two handles on one tag set: each gets every message once, the set stays until both go", { timeout: 30_000 }, async () => {
    const a = await connected(broker.url("ws"));
    const b = await connected(broker.url("ws"));
    const first = collector();
    const second = collector();
    const wide = collector();
    const h1 = await a.subscribe(["x", "y"], first.handler);
    const h2 = await a.subscribe(["y", "x", "y"], second.handler);
    await a.subscribe(["x"], wide.handler);
    assert.deepEqual(await a.list(), [["x"], ["x", "y"]]);

    await b.publish(["x", "y"], "1");
    await Promise.all([first.until(1), second.until(1), wide.until(1)]);
    await h1.unsubscribe();
    assert.deepEqual(await a.list(), [["x"], ["x", "y"]], "h2 still holds the set");
    await b.publish(["x", "y"], "2");
    await Promise.all([second.until(2), wide.until(2)]);
    await h2.unsubscribe();
    assert.deepEqual(await a.list(), [["x"]]);
    await b.publish(["x", "y"], "3");
    await wide.until(3);
    assert.deepEqual(first.got.map((d) => d.data), ["1"]);
    assert.deepEqual(second.got.map((d) => d.data), ["1", "2"]);
    assert.deepEqual(wide.got.map((d) => d.data), ["1", "2", "3"]);
  });

  test("Node's own global WebSocket is used where there is one (node --experimental-websocket)", { timeout: 30_000 }, async () => {
    // Counts the sockets made by the global class, to show the client took it and not `ws`.
    const script = `
      import { Client } from "mist-client";
      let made = 0;
      const Native = globalThis.WebSocket;
      globalThis.WebSocket = class extends Native {
        constructor(...args) { super(...args); made++; }
      };
      const client = new Client(process.argv[1], { reconnect: false });
      await client.connect();
      const got = new Promise((resolve) => client.subscribe(["native"], resolve));
      await client.ping();
      console.log(made);
      console.log(JSON.stringify(await got));
      client.close();
    `;
    const child = spawn(process.execPath, ["--experimental-websocket", "--no-warnings", "--input-type=module", "-e", script, broker.url("ws")], {
      cwd: new URL(".", import.meta.url).pathname,
      stdio: ["ignore", "pipe", "inherit"],
    });
    const lines = createInterface({ input: /** @type {import("node:stream").Readable} */ (child.stdout) })[Symbol.asyncIterator]();
    try {
      assert.equal((await within(lines.next(), "the child's first line")).value, "1");
      const b = await connected(broker.url("ws"));
      await b.publish(["native"], "to the global WebSocket");
      assert.deepEqual(JSON.parse((await within(lines.next(), "the child's delivery")).value), {
        tags: ["native"],
        data: "to the global WebSocket",
      });
    } finally {
      child.kill();
    }
  });

  test("who without an authenticator", { timeout: 30_000 }, async () => {
    const a = await connected(broker.url("ws"));
    await a.subscribe(["w"], () => {});
    const who = await a.who();
    assert.equal(typeof who.connections, "number");
    assert.ok(/** @type {number} */ (who.connections) >= 1);
    assert.ok(/** @type {number} */ (who.subscriptions) >= 1);
  });

  test("refusals reject with the broker's own text, the connection stays", { timeout: 30_000 }, async () => {
    const a = await connected(broker.url("ws"));
    const empty = brokerError(await a.publish([], "x").catch((e) => e));
    assert.equal(empty.message, "missing tags");
    assert.equal(empty.command, "publish");
    assert.equal(empty.code, "broker");

    const blank = brokerError(await a.subscribe(["ok", ""], () => {}).catch((e) => e));
    assert.equal(blank.message, "empty tag: every tag must be a non-empty string");
    assert.equal(blank.command, "subscribe");

    const unknown = brokerError(await a.request({ command: "dance" }).catch((e) => e));
    assert.equal(unknown.message, 'unknown command "dance"');
    assert.equal(unknown.command, "dance");

    // An admin command with no authenticator: refused, not confused with anything.
    const admin = brokerError(await a.register("t", ["a"]).catch((e) => e));
    assert.equal(admin.message, "admin commands need the server to run with an authenticator");

    // And the connection carries on, answers still matched in order.
    await a.ping();
    assert.deepEqual(await a.list(), []);
  });

  test("requests before connect() or after close() fail at once with a ConnectionError", { timeout: 30_000 }, async () => {
    const idle = new Client(broker.url("ws"));
    const before = await idle.publish(["a"], "x").catch((e) => e);
    assert.ok(before instanceof ConnectionError);
    assert.equal(before.code, "not-connected");

    const a = await connected(broker.url("ws"));
    const sub = await a.subscribe(["c"], () => {});
    a.close();
    assert.equal(sub.state, "closed");
    const afterClose = await a.ping().catch((e) => e);
    assert.ok(afterClose instanceof ConnectionError);
    assert.equal(afterClose.code, "closed");
  });

  test("refreshToken where the broker accepts a later auth: in place, no reconnect", { timeout: 30_000 }, async () => {
    // Without an authenticator the broker accepts (and ignores) any auth.
    const a = await connected(broker.url("ws"), { token: "first" });
    const b = await connected(broker.url("ws"));
    const got = collector();
    await a.subscribe(["r"], got.handler);
    let disconnects = 0;
    a.on("disconnected", () => disconnects++);
    const result = await within(a.refreshToken("second"), "refreshToken");
    assert.deepEqual(result, { inPlace: true });
    await b.publish(["r"], "still here");
    await got.until(1);
    assert.equal(disconnects, 0);
    assert.equal(a.state, "connected");
  });
});

describe("admin commands (memory:// authenticator)", () => {
  /** @type {Broker} */
  let broker;
  before(async () => {
    broker = await Broker.start(["ws://127.0.0.1:0"], ["--authenticator", "memory://", "--token", "ADMIN"]);
  });
  after(async () => {
    closeAll();
    await broker.kill();
  });

  test("register, set, tags, unset, unregister, who", { timeout: 30_000 }, async () => {
    const admin = await connected(broker.url("ws"), { token: "ADMIN" });
    await admin.register("alice", ["b", "a"]);
    assert.deepEqual(await admin.tags("alice"), ["a", "b"]);
    await admin.set("alice", ["c"]);
    assert.deepEqual(await admin.tags("alice"), ["a", "b", "c"]);
    await admin.unset("alice", ["a"]);
    assert.deepEqual(await admin.tags("alice"), ["b", "c"]);

    const twice = brokerError(await admin.register("alice", ["x"]).catch((e) => e));
    assert.equal(twice.message, "the token is already registered");
    assert.equal(twice.command, "register");

    const alice = await connected(broker.url("ws"), { token: "alice" });
    await alice.subscribe(["b"], () => {});
    const denied = brokerError(await alice.subscribe(["a"], () => {}).catch((e) => e));
    assert.equal(denied.message, "permission denied: the token does not hold every one of these tags");
    const notAdmin = brokerError(await alice.who().catch((e) => e));
    assert.equal(notAdmin.message, "who needs admin mode: auth with the server token first");

    const who = await admin.who();
    assert.equal(who.connections, 2);
    assert.equal(who.subscriptions, 1);

    await admin.unregister("alice");
    const gone = brokerError(await admin.tags("alice").catch((e) => e));
    assert.equal(gone.message, "no such token");
    assert.equal(gone.command, "tags");
  });
});
