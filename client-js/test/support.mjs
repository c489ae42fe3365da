// @ts-check
// What every test file needs: the real `mist` binary, brokers started and
// stopped by the tests, and bounded waits.
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Client } from "mist-client";

/** The bound on every wait. Generous: the machine may be loaded. */
export const TIMEOUT = 20_000;

const repo = fileURLToPath(new URL("../..", import.meta.url));

/** @type {string | undefined} */
let binary;

/**
 * The `mist` binary: `$MIST_BIN` (scripts/test sets it), else built here.
 * The build command is the one tests/support/server.rs uses, so that both
 * share one set of compiled dependencies in target/.
 */
export function mistBinary() {
  if (binary) return binary;
  if (process.env.MIST_BIN) return (binary = process.env.MIST_BIN);
  const out = execFileSync(
    "cargo",
    ["build", "--workspace", "--lib", "--bins", "--examples", "--message-format=json"],
    { cwd: repo, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 256 << 20 },
  );
  for (const line of out.split("\n")) {
    if (!line.includes('"executable"')) continue;
    const artifact = JSON.parse(line);
    if (artifact.target?.name === "mist" && artifact.executable) binary = artifact.executable;
  }
  if (!binary) throw new Error("cargo built no `mist` executable");
  return binary;
}

/** Every broker started, so that none outlives the test process. */
const running = new Set();
process.on("exit", () => {
  for (const child of running) {
    try {
      child.kill("SIGCONT");
      child.kill("SIGKILL");
    } catch {
      // gone already
    }
  }
});

/** A `mist --server` started by a test. */
export class Broker {
  /**
   * @param {string[]} listeners e.g. `["ws://127.0.0.1:0"]`
   * @param {string[]} [args] more flags
   */
  static async start(listeners, args = []) {
    const broker = new Broker(listeners, args);
    await broker.started;
    return broker;
  }

  /**
   * @param {string[]} listeners
   * @param {string[]} args
   */
  constructor(listeners, args) {
    this.args = args;
    this.log = "";
    /** @type {string[]} `scheme://host:port` as the broker logged them */
    this.listeners = [];
    const env = { ...process.env };
    delete env.MIST_TOKEN;
    this.child = spawn(mistBinary(), ["--server", "--listeners", listeners.join(","), ...args], {
      stdio: ["ignore", "ignore", "pipe"],
      env,
    });
    running.add(this.child);
    this.exited = once(this.child, "exit").then(() => running.delete(this.child));
    this.started = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`mist did not listen in time:\n${this.log}`)), TIMEOUT);
      this.child.stderr?.setEncoding("utf8").on("data", (/** @type {string} */ text) => {
        this.log += text;
        for (const match of text.matchAll(/listening on (\S+)/g)) this.listeners.push(match[1]);
        if (this.listeners.length >= listeners.length) {
          clearTimeout(timer);
          resolve(undefined);
        }
      });
      this.child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`mist exited (${code}) before listening:\n${this.log}`));
      });
    });
  }

  /**
   * `scheme://host:port` of the first listener of `scheme`.
   * @param {string} scheme
   */
  url(scheme) {
    const found = this.listeners.find((l) => l.startsWith(`${scheme}://`));
    if (!found) throw new Error(`no ${scheme} listener in ${this.listeners}`);
    return found;
  }

  /** Kills it outright (SIGKILL) and waits until it is gone. */
  async kill() {
    this.child.kill("SIGCONT");
    this.child.kill("SIGKILL");
    await this.exited;
  }

  /** Starts it again on the same addresses, after `kill()`. */
  restart() {
    return Broker.start(this.listeners, this.args);
  }

  /**
   * Stops it with SIGSTOP, and waits until every thread has stopped: the
   * signal takes effect when the kernel next schedules each thread, and a
   * thread running on another core meanwhile could still answer.
   */
  async pause() {
    this.child.kill("SIGSTOP");
    const tasks = `/proc/${this.child.pid}/task`;
    const deadline = Date.now() + TIMEOUT;
    const stopped = () =>
      readdirSync(tasks).every((t) => {
        // The state follows the command name, which is in parentheses.
        const stat = readFileSync(`${tasks}/${t}/stat`, "utf8");
        return stat.slice(stat.lastIndexOf(")") + 2).startsWith("T");
      });
    while (!stopped()) {
      if (Date.now() > deadline) throw new Error("mist did not stop on SIGSTOP in time");
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  resume() {
    this.child.kill("SIGCONT");
  }
}

/**
 * Resolves with `promise`, or rejects naming `what` after `ms`.
 * @template T
 * @param {Promise<T>} promise
 * @param {string} what
 * @param {number} [ms]
 * @returns {Promise<T>}
 */
export function within(promise, what, ms = TIMEOUT) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, late])).finally(() => clearTimeout(timer));
}

/**
 * The next `event` of `client` for which `accept` holds, within `ms`.
 * @template {keyof import("mist-client").ClientEvents} K
 * @param {Client} client
 * @param {K} event
 * @param {(value: import("mist-client").ClientEvents[K]) => boolean} [accept]
 * @param {number} [ms]
 * @returns {Promise<import("mist-client").ClientEvents[K]>}
 */
export function next(client, event, accept = () => true, ms = TIMEOUT) {
  /** @type {() => void} */
  let off = () => {};
  const seen = new Promise((resolve) => {
    off = client.on(event, (value) => {
      if (accept(value)) resolve(value);
    });
  });
  return within(/** @type {Promise<import("mist-client").ClientEvents[K]>} */ (seen), `the ${event} event`, ms).finally(off);
}

/**
 * A subscription handler that keeps what it receives, and a wait for the
 * nth delivery.
 */
export function collector() {
  /** @type {import("mist-client").Delivery[]} */
  const got = [];
  /** @type {Array<{ count: number, resolve: () => void }>} */
  let waiters = [];
  return {
    got,
    /** @param {import("mist-client").Delivery} delivery */
    handler: (delivery) => {
      got.push(delivery);
      waiters = waiters.filter((w) => (got.length >= w.count ? (w.resolve(), false) : true));
    },
    /**
     * @param {number} count
     * @param {number} [ms]
     */
    until(count, ms = TIMEOUT) {
      if (got.length >= count) return Promise.resolve();
      return within(
        new Promise((resolve) => waiters.push({ count, resolve: () => resolve(undefined) })),
        `${count} deliveries (have ${got.length})`,
        ms,
      );
    },
  };
}

/**
 * A connected client; closed by `closeAll()`.
 * @param {string} url
 * @param {import("mist-client").ClientOptions} [options]
 */
export async function connected(url, options = {}) {
  const client = new Client(url, options);
  clients.add(client);
  await within(client.connect(), `a connection to ${url}`);
  return client;
}

/** @type {Set<Client>} */
const clients = new Set();

/** Closes every client `connected()` made. */
export function closeAll() {
  for (const client of clients) client.close();
  clients.clear();
}
