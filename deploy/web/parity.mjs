// Runs a TF.js graph model on raw uint8 images in Node (CPU backend) and writes the class maps, for the parity
// report of `--mode=export` with export.formats including 'tfjs'.
//
//   node parity.mjs MODEL_DIR IMAGES.u8 N H W CLASS_MAPS.i32
//
// IMAGES.u8 holds N*H*W*3 bytes (RGB, row-major); CLASS_MAPS.i32 receives N*H*W little-endian int32 class ids.
import { readFile, writeFile } from "node:fs/promises";

import * as tf from "@tensorflow/tfjs";

import { loadGraphModelFromDirectory } from "./model_io.mjs";

const [modelDir, imagesFile, count, height, width, outputFile] = process.argv.slice(2);
const [n, h, w] = [count, height, width].map(Number);
if (!outputFile || ![n, h, w].every((value) => Number.isInteger(value) && value > 0)) {
  console.error("usage: node parity.mjs MODEL_DIR IMAGES.u8 N H W CLASS_MAPS.i32");
  process.exit(2);
}
await tf.setBackend("cpu");
const model = await loadGraphModelFromDirectory(modelDir);
const pixels = new Uint8Array(await readFile(imagesFile));
if (pixels.length !== n * h * w * 3) {
  console.error(`${imagesFile}: expected ${n * h * w * 3} bytes (${n}x${h}x${w}x3), received ${pixels.length}`);
  process.exit(2);
}
const classMaps = new Int32Array(n * h * w);
for (let index = 0; index < n; index++) {
  const image = tf.tensor4d(pixels.subarray(index * h * w * 3, (index + 1) * h * w * 3), [1, h, w, 3], "int32");
  const outputs = model.execute({ images: image }, "class_map");
  classMaps.set(await outputs.data(), index * h * w);
  tf.dispose([image, outputs]);
}
await writeFile(outputFile, Buffer.from(classMaps.buffer));
console.log(`tfjs ${tf.version.tfjs} (${tf.getBackend()} backend): ${n} class maps written to ${outputFile}`);
