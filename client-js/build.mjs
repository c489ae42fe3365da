// Builds dist/: the minified ESM bundle (esbuild) and the .d.ts types (tsc),
// then prints the bundle's min+gzip size and fails over the budget.
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

/** The budget: 5 kB min+gzip. */
const BUDGET = 5000;

const here = new URL(".", import.meta.url).pathname;
rmSync(`${here}dist`, { recursive: true, force: true });

await build({
  entryPoints: [`${here}src/index.ts`],
  outfile: `${here}dist/mist.js`,
  bundle: true,
  format: "esm",
  minify: true,
  sourcemap: true,
  // Browsers from 2020 on, and Node 20.
  target: ["es2020"],
  // Node's fallback when there is no global WebSocket; never reached in a
  // browser (package.json's "browser" field maps it away for bundlers).
  external: ["ws"],
  logLevel: "warning",
});

execFileSync(`${here}node_modules/.bin/tsc`, ["-p", `${here}tsconfig.json`], { stdio: "inherit" });

const bundle = readFileSync(`${here}dist/mist.js`);
const gzipped = gzipSync(bundle, { level: 9 }).length;
console.log(`dist/mist.js: ${bundle.length} B minified, ${gzipped} B min+gzip (budget ${BUDGET} B)`);
if (gzipped > BUDGET) {
  console.error(`dist/mist.js is over the ${BUDGET} B min+gzip budget`);
  process.exit(1);
}
