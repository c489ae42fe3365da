// @ts-check
// The built bundle in Debian's headless Chromium (driven by playwright-core),
// in a page served here, against a real broker: subscribe, publish, receive,
// and reconnect after the broker is killed and restarted.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { Broker, TIMEOUT, closeAll, collector, connected, next } from "./support.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Chromium may take a while to start on a loaded two-core machine. */
const BROWSER_TIMEOUT = 60_000;

const bundle = readFileSync(new URL("../dist/mist.js", import.meta.url));
const PAGE = `<!doctype html><meta charset="utf-8"><title>mist-client</title>
<script type="module">
  import { Client } from "/mist.js";
  // What the test reads back: deliveries and events, in order.
  window.got = [];
  window.events = [];
  window.start = async (url) => {
    const client = new Client(url, { minDelay: 100, maxDelay: 1000 });
    for (const name of ["connected", "disconnected", "reconnecting", "revoked", "error"]) {
      client.on(name, (e) => window.events.push({ name, reason: e.reason, resubscribed: e.resubscribed }));
    }
    await client.connect();
    await client.subscribe(["browser"], (d) => window.got.push(d));
    window.client = client;
    return await client.list();
  };
  window.publish = (tags, data) => window.client.publish(tags, data);
  window.ready = true;
</script>`;

/** @type {Broker} */
let broker;
/** @type {import("node:http").Server} */
let pages;
/** @type {import("playwright-core").Browser} */
let browser;
before(async () => {
  broker = await Broker.start(["http://127.0.0.1:0", "ws://127.0.0.1:0"]);
  pages = createServer((request, response) => {
    if (request.url === "/mist.js") {
      response.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
    } else if (request.url === "/") {
      response.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
    } else {
      response.writeHead(404).end();
    }
  });
  await new Promise((resolve) => pages.listen(0, "127.0.0.1", () => resolve(undefined)));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: BROWSER_TIMEOUT,
    // As tests/support/browser.rs starts it: no sandbox as root, and none of
    // the background traffic that this machine's closed network refuses.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});
after(async () => {
  closeAll();
  await browser?.close();
  pages?.close();
  await broker?.kill();
});

test("the bundle in Chromium: subscribe, publish, receive, reconnect after a restart", { timeout: 120_000 }, async () => {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  /** @type {string[]} */
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push(String(e)));
  const address = /** @type {import("node:net").AddressInfo} */ (pages.address());
  await page.goto(`http://127.0.0.1:${address.port}/`);
  await page.waitForFunction(() => /** @type {any} */ (window).ready === true);

  // The page connects to the HTTP listener's WebSocket path, as browser code does.
  const wsUrl = `${broker.url("http").replace("http", "ws")}/subscribe/websocket`;
  const list = await page.evaluate((url) => /** @type {any} */ (window).start(url), wsUrl);
  assert.deepEqual(list, [["browser"]]);

  // Node publishes, the page receives; the page publishes, Node receives.
  const node = await connected(broker.url("ws"), { minDelay: 100, maxDelay: 1000 });
  const fromPage = collector();
  await node.subscribe(["from-page"], fromPage.handler);
  await node.publish(["browser", "extra"], "hello, page");
  await page.waitForFunction(() => /** @type {any} */ (window).got.length >= 1);
  await page.evaluate(() => /** @type {any} */ (window).publish(["from-page"], "hello, node"));
  await fromPage.until(1);
  assert.deepEqual(fromPage.got, [{ tags: ["from-page"], data: "hello, node" }]);

  // Kill the broker; the page's client must notice, back off, and come back.
  const nodeBack = next(node, "connected");
  await broker.kill();
  await page.waitForFunction(() =>
    /** @type {any} */ (window).events.some((/** @type {any} */ e) => e.name === "disconnected"),
  );
  broker = await broker.restart();
  await page.waitForFunction(
    () => /** @type {any} */ (window).events.filter((/** @type {any} */ e) => e.name === "connected").length >= 2,
    undefined,
    { timeout: 1000 + TIMEOUT },
  );
  await nodeBack;
  await node.publish(["browser"], "after the restart");
  await page.waitForFunction(() => /** @type {any} */ (window).got.length >= 2);

  const got = await page.evaluate(() => /** @type {any} */ (window).got);
  assert.deepEqual(got, [
    { tags: ["browser", "extra"], data: "hello, page" },
    { tags: ["browser"], data: "after the restart" },
  ], logs.join("\n"));
  /** @type {{ name: string, reason?: string, resubscribed?: string[][] }[]} */
  const events = await page.evaluate(() => /** @type {any} */ (window).events);
  const names = events.map((e) => e.name);
  assert.equal(names[0], "connected");
  assert.equal(names[1], "disconnected");
  assert.equal(events[1].reason, "socket");
  assert.ok(names.includes("reconnecting"));
  const second = events.filter((e) => e.name === "connected")[1];
  assert.deepEqual(second.resubscribed, [["browser"]]);
  await page.close();
});
