// @ts-check
// `npm test`'s runner: finds (or builds) the mist binary once, then runs
// every test file with it, two at a time.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { mistBinary } from "./support.mjs";

const dir = fileURLToPath(new URL(".", import.meta.url));
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".test.mjs"))
  .sort()
  .map((f) => `${dir}${f}`);
const binary = mistBinary();
console.log(`mist-client tests: ${files.length} files against ${binary}`);
const run = spawnSync(process.execPath, ["--test", "--test-concurrency=2", ...files], {
  stdio: "inherit",
  env: { ...process.env, MIST_BIN: binary },
});
process.exit(run.status ?? 1);
