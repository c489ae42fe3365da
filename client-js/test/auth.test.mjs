// @ts-check
// Tokens against a broker in admin mode with a memory:// store: revocation,
// bad tokens, the three ways to present a token, getToken, refreshToken;
// and refreshToken in place against the jwt:// authenticator, where the
// broker has one.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { BrokerError, Client } from "mist-client";
import { Broker, closeAll, collector, connected, next, within } from "./support.mjs";

/** @type {Broker} */
let broker;
/** @type {Client} */
let admin;
before(async () => {
  broker = await Broker.start(["ws://127.0.0.1:0"], ["--authenticator", "memory://", "--token", "ADMIN"]);
  admin = await connected(broker.url("ws"), { token: "ADMIN" });
});
after(async () => {
  closeAll();
  await broker.kill();
});

test("a revoked subscription: the notice is an event, never a reply; the handle ends, the rest stays", { timeout: 30_000 }, async () => {
  await admin.register("rev", ["chat", "news"]);
  const user = await connected(broker.url("ws"), { token: "rev" });
  const chat = collector();
  const news = collector();
  const both = collector();
  const chatSub = await user.subscribe(["chat"], chat.handler);
  const newsSub = await user.subscribe(["news"], news.handler);
  const bothSub = await user.subscribe(["news", "chat"], both.handler);
  /** @type {import("mist-client").ClientEvents["revoked"][]} */
  const revoked = [];
  user.on("revoked", (e) => revoked.push(e));
  /** @type {unknown[]} */
  const stray = [];
  user.on("unsolicited", (m) => stray.push(m));

  // Requests in flight on the user's connection while the notices arrive.
  const inFlight = [user.list(), user.ping(), user.list()];
  await admin.unset("rev", ["news"]); // revoked before the admin's pong
  const [first, , second] = await Promise.all(inFlight);
  // Two connections have no order between them: each list is from before or after the unset.
  const full = [["chat"], ["chat", "news"], ["news"]];
  for (const list of [first, second]) {
    assert.ok([JSON.stringify(full), '[["chat"]]'].includes(JSON.stringify(list)), `a list reply: ${JSON.stringify(list)}`);
  }

  await user.ping(); // the notices came before this pong
  assert.deepEqual(
    revoked.map((e) => e.tags).sort(),
    [["chat", "news"], ["news"]],
  );
  for (const e of revoked) assert.match(e.error, /^subscription revoked: /);
  assert.equal(newsSub.state, "revoked");
  assert.equal(bothSub.state, "revoked");
  assert.ok(newsSub.error instanceof BrokerError);
  assert.equal(chatSub.state, "active");
  assert.deepEqual(await user.list(), [["chat"]]);
  assert.deepEqual(stray, []);

  await admin.publish(["chat", "news"], "after");
  await chat.until(1);
  await user.ping();
  assert.deepEqual(chat.got, [{ tags: ["chat", "news"], data: "after" }]);
  assert.equal(news.got.length + both.got.length, 0);
});

test("a bad token in the query: the connection is anonymous, requests say so", { timeout: 30_000 }, async () => {
  const user = await connected(broker.url("ws"), { token: "nobody-knows-me" });
  await user.ping(); // always allowed
  const refused = await user.subscribe(["chat"], () => {}).catch((e) => e);
  assert.ok(refused instanceof BrokerError);
  // The broker says why: the token given at connect was refused.
  assert.match(refused.message, /^not authenticated: the token given at connect was refused/);
  assert.equal(refused.command, "subscribe");
});

test('a bad token sent with tokenIn "auth": an error event with the broker\'s text', { timeout: 30_000 }, async () => {
  const user = new Client(broker.url("ws"), { token: "nobody-knows-me", tokenIn: "auth" });
  const error = next(user, "error");
  await within(user.connect(), "connect");
  const refused = await error;
  assert.ok(refused instanceof BrokerError);
  assert.equal(refused.message, "invalid token");
  assert.equal(refused.command, "auth");
  user.close();

  // And a good one that way works.
  await admin.register("by-auth", ["a"]);
  const good = await connected(broker.url("ws"), { token: "by-auth", tokenIn: "auth" });
  await good.subscribe(["a"], () => {});
});

test("a token in the X-AUTH-TOKEN header (Node)", { timeout: 30_000 }, async () => {
  await admin.register("by-header", ["h"]);
  const user = await connected(broker.url("ws"), { token: "by-header", tokenIn: "header" });
  const got = collector();
  await user.subscribe(["h"], got.handler);
  await admin.publish(["h"], "to the header's holder");
  await got.until(1);
  const denied = await user.subscribe(["x"], () => {}).catch((e) => e);
  assert.ok(denied instanceof BrokerError);
  assert.equal(denied.message, "permission denied: the token does not hold every one of these tags");
});

test("getToken is asked before each connect, reconnects included, and by refreshToken()", { timeout: 60_000 }, async () => {
  // A scribble:// store keeps its tokens across the broker's restart.
  const db = mkdtempSync(join(tmpdir(), "mist-client-scribble-"));
  let store = await Broker.start(["ws://127.0.0.1:0"], ["--authenticator", `scribble://?db=${db}`, "--token", "ADMIN"]);
  try {
    const quick = { minDelay: 10, maxDelay: 100 };
    const storeAdmin = await connected(store.url("ws"), { token: "ADMIN", ...quick });
    for (const token of ["fetched-1", "fetched-2", "fetched-3"]) await storeAdmin.register(token, ["g"]);
    let calls = 0;
    let current = "fetched-1";
    const getToken = async () => {
      calls++;
      return current;
    };
    const user = await connected(store.url("ws"), { getToken, ...quick });
    assert.equal(calls, 1);
    const got = collector();
    const sub = await user.subscribe(["g"], got.handler);

    const userBack = next(user, "connected");
    const adminBack = next(storeAdmin, "connected");
    current = "fetched-2";
    await store.kill();
    store = await store.restart();
    assert.deepEqual((await userBack).resubscribed, [["g"]]);
    await adminBack;
    assert.ok(calls >= 2, "asked again before reconnecting");
    // The connection holds fetched-2 now: taking fetched-1 away changes nothing for it.
    await storeAdmin.unregister("fetched-1");
    await storeAdmin.publish(["g"], "to fetched-2");
    await got.until(1);
    assert.equal(sub.state, "active");

    // refreshToken() without a token asks getToken once, and this broker takes it by reconnecting.
    current = "fetched-3";
    const before = calls;
    const result = await within(user.refreshToken(), "refreshToken");
    assert.equal(result.inPlace, false);
    assert.equal(calls, before + 1, "the reconnect uses the token refreshToken() got");
    await storeAdmin.unregister("fetched-2");
    await storeAdmin.publish(["g"], "to fetched-3");
    await got.until(2);
    assert.equal(sub.state, "active");
    assert.deepEqual(got.got.map((d) => d.data), ["to fetched-2", "to fetched-3"]);
  } finally {
    await store.kill();
    rmSync(db, { recursive: true, force: true });
  }
});

test("refreshToken on a broker that refuses a later auth: reconnects with the new token and reports what could not be resubscribed", { timeout: 30_000 }, async () => {
  await admin.register("old", ["chat", "news"]);
  await admin.register("new", ["chat"]);
  const user = await connected(broker.url("ws"), { token: "old" });
  const chat = collector();
  const chatSub = await user.subscribe(["chat"], chat.handler);
  const newsSub = await user.subscribe(["news"], () => {});
  const lost = next(user, "disconnected");
  const ready = next(user, "connected");

  const result = await within(user.refreshToken("new"), "refreshToken");
  assert.equal(result.inPlace, false);
  assert.ok(result.refusal instanceof BrokerError);
  assert.equal(result.refusal.message, "auth must be the first command of a connection");

  assert.equal((await lost).reason, "token-refresh");
  const event = await ready;
  assert.deepEqual(event.resubscribed, [["chat"]]);
  assert.equal(event.failed.length, 1);
  assert.deepEqual(event.failed[0].tags, ["news"]);
  assert.equal(event.failed[0].error.message, "permission denied: the token does not hold every one of these tags");
  assert.equal(newsSub.state, "failed");
  assert.equal(chatSub.state, "active");
  assert.deepEqual(await user.list(), [["chat"]]);

  // The new connection holds the new token: what "old" alone held is gone.
  await admin.unregister("old");
  await admin.publish(["chat"], "for the new token");
  await chat.until(1);
  assert.equal(chatSub.state, "active");
});

/**
 * An HS256 JWT holding `tags`, as issue 29's `jwt://` authenticator reads it.
 * @param {string} secret
 * @param {string[]} tags
 */
function jwt(secret, tags) {
  const part = (/** @type {object} */ value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ tags, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

test("refreshToken on a broker that replaces a live connection's JWT: in place, narrowed by revocation, no reconnect", { timeout: 30_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "mist-client-jwt-"));
  const secret = "a secret of the test's own, 32 bytes or more long";
  writeFileSync(join(dir, "secret"), secret);
  /** @type {Broker} */
  let jwtBroker;
  try {
    jwtBroker = await Broker.start(["ws://127.0.0.1:0"], ["--authenticator", `jwt://?secret-file=${join(dir, "secret")}`, "--token", "ADMIN"]);
  } catch (error) {
    // The jwt authenticator (issue 29) is built on another branch; until it is merged this broker has none.
    if (String(error).includes("no loaded plugin provides authenticator jwt")) {
      rmSync(dir, { recursive: true, force: true });
      return t.skip("this mist has no jwt:// authenticator yet (issue 29)");
    }
    throw error;
  }
  try {
    const publisher = await connected(jwtBroker.url("ws"), { token: "ADMIN" });
    const user = await connected(jwtBroker.url("ws"), { token: jwt(secret, ["chat", "news"]) });
    const chat = collector();
    const chatSub = await user.subscribe(["chat"], chat.handler);
    const newsSub = await user.subscribe(["news"], () => {});
    /** @type {unknown[]} */
    const disconnects = [];
    user.on("disconnected", (e) => disconnects.push(e));
    const revoked = next(user, "revoked");

    const result = await within(user.refreshToken(jwt(secret, ["chat"])), "refreshToken");
    assert.deepEqual(result, { inPlace: true });
    assert.deepEqual((await revoked).tags, ["news"]);
    assert.equal(newsSub.state, "revoked");
    assert.equal(chatSub.state, "active");
    assert.deepEqual(await user.list(), [["chat"]]);
    await publisher.publish(["chat"], "no gap");
    await chat.until(1);
    assert.deepEqual(disconnects, []);
  } finally {
    await jwtBroker.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});
