// @ts-check
// Replies matched to their requests while 10,000 deliveries stream in on the
// same connection.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { BrokerError } from "mist-client";
import { Broker, closeAll, collector, connected } from "./support.mjs";

const MESSAGES = 10_000;

/** @type {Broker} */
let broker;
before(async () => {
  broker = await Broker.start(["ws://127.0.0.1:0"]);
});
after(async () => {
  closeAll();
  await broker.kill();
});

test("10,000 deliveries interleaved with replies: every reply to its request, every delivery in order", { timeout: 90_000 }, async () => {
  const subscriber = await connected(broker.url("ws"));
  const publisher = await connected(broker.url("ws"));
  /** @type {unknown[]} */
  const stray = [];
  subscriber.on("unsolicited", (m) => stray.push(m));
  subscriber.on("error", (e) => stray.push(e));

  const load = collector();
  await subscriber.subscribe(["load"], load.handler);
  const other = collector();
  await subscriber.subscribe(["other"], other.handler);

  // The publisher sends in bursts of 100 (each publish resolves at its own
  // pong), so that the stream lasts while the subscriber asks.
  const published = (async () => {
    for (let i = 0; i < MESSAGES; i += 100) {
      await Promise.all(
        Array.from({ length: 100 }, (_, j) => publisher.publish(["load", `n${(i + j) % 7}`], String(i + j))),
      );
    }
  })();

  // Meanwhile the subscriber keeps asking, until the stream has passed.
  let rounds = 0;
  let refused = 0;
  /** Rounds during which deliveries arrived between the requests and their replies. */
  let interleaved = 0;
  while (load.got.length < MESSAGES && rounds < 100_000) {
    rounds++;
    const seen = load.got.length;
    const tags = [`t${rounds}`];
    // All written at once; the unsubscribe goes out when the subscribe's pong is in.
    const [before, , error, , afterSubscribe] = await Promise.all([
      subscriber.list(),
      subscriber.ping(),
      subscriber.publish([], "refused").catch((e) => e),
      subscriber.subscribe(tags, () => {}).then((s) => s.unsubscribe()),
      subscriber.list(),
    ]);
    assert.deepEqual(before, [["load"], ["other"]]);
    assert.deepEqual(afterSubscribe, [["load"], ["other"], tags]);
    assert.ok(error instanceof BrokerError);
    assert.equal(error.message, "missing tags");
    refused++;
    if (load.got.length > seen) interleaved++;
  }
  await published;
  await load.until(MESSAGES, 60_000);

  assert.ok(interleaved >= 10, `requests were answered while deliveries arrived (${interleaved} of ${rounds} rounds)`);
  assert.equal(load.got.length, MESSAGES);
  for (let i = 0; i < MESSAGES; i++) {
    assert.deepEqual(load.got[i], { tags: ["load", `n${i % 7}`], data: String(i) });
  }
  assert.equal(other.got.length, 0, "no delivery for a subscription that does not match");
  assert.equal(refused, rounds);
  assert.deepEqual(stray, [], "nothing unmatched");
  console.log(`${rounds} rounds of 5 requests, ${interleaved} with deliveries arriving in between`);
  const who = await subscriber.who();
  assert.equal(who.dropped, 0, "the broker dropped nothing for this reader");
});
