// Vendors @tensorflow/tfjs (installed from the npm registry by `npm ci`) into vendor/, so the page loads no CDN.
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, "node_modules", "@tensorflow", "tfjs", "dist", "tf.min.js");
await mkdir(join(here, "vendor"), { recursive: true });
await copyFile(source, join(here, "vendor", "tf.min.js"));
console.log(`vendored ${source} -> vendor/tf.min.js`);
