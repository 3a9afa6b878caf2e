// Loads a TF.js graph model from a local directory in Node with the plain @tensorflow/tfjs package (no
// native tfjs-node): model.json and its weight shards are read from disk and handed to tf.io.fromMemory.
import { readFile } from "node:fs/promises";
import { join } from "node:path";

import * as tf from "@tensorflow/tfjs";

export async function loadGraphModelFromDirectory(directory) {
  const model = JSON.parse(await readFile(join(directory, "model.json"), "utf8"));
  const weightSpecs = [];
  const shards = [];
  for (const group of model.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const path of group.paths) shards.push(await readFile(join(directory, path)));
  }
  const weights = Buffer.concat(shards);
  const weightData = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength);
  return tf.loadGraphModel(
    tf.io.fromMemory({
      modelTopology: model.modelTopology,
      format: model.format,
      generatedBy: model.generatedBy,
      convertedBy: model.convertedBy,
      signature: model.signature,
      userDefinedMetadata: model.userDefinedMetadata,
      weightSpecs,
      weightData,
    }),
  );
}
