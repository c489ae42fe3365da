// @ts-check
// wss:// in Node with a self-signed certificate made here: trusted through
// the ws package's `ca`, through NODE_EXTRA_CA_CERTS, and refused when not
// trusted at all.
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { Client, ConnectionError } from "mist-client";
import { Broker, closeAll, collector, connected, within } from "./support.mjs";

const dir = mkdtempSync(join(tmpdir(), "mist-client-tls-"));
const cert = join(dir, "cert.pem");
const key = join(dir, "key.pem");

/** @type {Broker} */
let broker;
before(async () => {
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
  ], { stdio: "ignore" });
  broker = await Broker.start(["wss://127.0.0.1:0", "ws://127.0.0.1:0"], ["--tls-cert", cert, "--tls-key", key]);
});
after(async () => {
  closeAll();
  await broker.kill();
  rmSync(dir, { recursive: true, force: true });
});

test("wss:// trusted with the ws package's ca option", { timeout: 30_000 }, async () => {
  const url = `${broker.url("wss")}/`;
  assert.match(url, /^wss:\/\/127\.0\.0\.1:\d+\/$/);
  const subscriber = await connected(url, { wsOptions: { ca: readFileSync(cert) } });
  const plain = await connected(broker.url("ws"));
  const got = collector();
  await subscriber.subscribe(["secure"], got.handler);
  await plain.publish(["secure"], "over TLS");
  await got.until(1);
  assert.deepEqual(got.got, [{ tags: ["secure"], data: "over TLS" }]);
  await subscriber.publish(["back"], "from the TLS side");
});

test("wss:// with a certificate nobody trusts is refused", { timeout: 30_000 }, async () => {
  const client = new Client(`${broker.url("wss")}/`, { reconnect: false, wsOptions: {} });
  const refused = await within(client.connect().catch((e) => e), "the refusal");
  assert.ok(refused instanceof ConnectionError);
  assert.match(refused.message, /certificate/);
});

test("wss:// trusted through NODE_EXTRA_CA_CERTS, in a Node process of its own", { timeout: 30_000 }, async () => {
  const script = `
    import { Client } from "mist-client";
    const client = new Client(process.argv[1], { reconnect: false });
    await client.connect();
    await client.ping();
    const subscription = await client.subscribe(["extra"], () => {});
    console.log(JSON.stringify(await client.list()), subscription.state);
    client.close();
  `;
  const { stdout } = await within(
    promisify(execFile)(process.execPath, ["--input-type=module", "-e", script, `${broker.url("wss")}/`], {
      cwd: new URL(".", import.meta.url).pathname,
      env: { ...process.env, NODE_EXTRA_CA_CERTS: cert },
    }),
    "the child process",
  );
  assert.equal(stdout.trim(), '[["extra"]] active');
});
