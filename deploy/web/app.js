// Segments the image the user picks with the TF.js graph model of a DeepLab Trainer export and draws the class
// overlay. Query parameters: model= (the model.json URL; default model/model.json), image= (an image URL to
// segment at once), backend= (a TF.js backend, e.g. cpu or webgl; default: the best TF.js finds).
/* global tf */
const params = new URLSearchParams(window.location.search);
const modelUrl = params.get("model") || "model/model.json";
const statusLine = document.getElementById("status");
const OVERLAY_ALPHA = 0.5;
// Each displayed image is scaled by a whole factor (nearest neighbour) so small inputs stay visible.
const DISPLAY_SIZE = 320;

// PASCAL VOC's palette, as trainer.common.images.voc_palette: the bits of each class id spread over R, G, B.
function vocColor(id) {
  const color = [0, 0, 0];
  for (let bit = 0; bit < 8; bit++) {
    for (let channel = 0; channel < 3; channel++) color[channel] |= ((id >> (3 * bit + channel)) & 1) << (7 - bit);
  }
  return color;
}

async function loadLabels() {
  const response = await fetch(new URL("labels.txt", new URL(modelUrl, window.location.href)));
  return response.ok ? (await response.text()).split("\n").filter((line) => line.length > 0) : [];
}

function drawScaled(canvas, rgba, width, height, scale) {
  canvas.width = width * scale;
  canvas.height = height * scale;
  const scaled = new ImageData(width * scale, height * scale);
  for (let y = 0; y < height * scale; y++) {
    for (let x = 0; x < width * scale; x++) {
      const from = (Math.floor(y / scale) * width + Math.floor(x / scale)) * 4;
      scaled.data.set(rgba.subarray(from, from + 4), (y * width * scale + x) * 4);
    }
  }
  canvas.getContext("2d").putImageData(scaled, 0, 0);
}

function showLegend(counts, labels) {
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  for (const [id, count] of [...counts.entries()].sort((a, b) => b[1] - a[1])) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.style.background = `rgb(${vocColor(id).join(",")})`;
    item.append(swatch, `${labels[id] ?? `class ${id}`}: ${count} px`);
    legend.append(item);
  }
}

async function segment(model, labels, image) {
  const { naturalWidth: width, naturalHeight: height } = image;
  const source = document.createElement("canvas");
  source.width = width;
  source.height = height;
  const context = source.getContext("2d");
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, width, height).data;
  const images = tf.tidy(() => tf.browser.fromPixels(source).expandDims(0));
  const output = model.execute({ images }, "class_map");
  const classMap = await output.data();
  tf.dispose([images, output]);
  const blended = new Uint8ClampedArray(pixels.length);
  const counts = new Map();
  for (let index = 0; index < classMap.length; index++) {
    const color = vocColor(classMap[index]);
    for (let channel = 0; channel < 3; channel++) {
      const value = (1 - OVERLAY_ALPHA) * pixels[index * 4 + channel] + OVERLAY_ALPHA * color[channel];
      blended[index * 4 + channel] = Math.round(value);
    }
    blended[index * 4 + 3] = 255;
    counts.set(classMap[index], (counts.get(classMap[index]) ?? 0) + 1);
  }
  const scale = Math.max(1, Math.floor(DISPLAY_SIZE / Math.max(width, height)));
  drawScaled(document.getElementById("image"), pixels, width, height, scale);
  const overlay = document.getElementById("overlay");
  drawScaled(overlay, blended, width, height, scale);
  showLegend(counts, labels);
  const box = overlay.getBoundingClientRect();
  const result = { status: "done", backend: tf.getBackend(), width, height, scale, x: box.x, y: box.y };
  document.getElementById("result").textContent = JSON.stringify(result);
  statusLine.textContent = `${width}×${height} px segmented (TF.js ${tf.version.tfjs}, ${tf.getBackend()} backend).`;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`could not load the image ${url}`));
    image.src = url;
  });
}

async function main() {
  if (params.get("backend")) await tf.setBackend(params.get("backend"));
  await tf.ready();
  const [model, labels] = await Promise.all([tf.loadGraphModel(modelUrl), loadLabels()]);
  statusLine.textContent = `Model loaded (${tf.getBackend()} backend): pick an image.`;
  document.getElementById("file").addEventListener("change", async (event) => {
    const [file] = event.target.files;
    if (!file) return;
    const url = URL.createObjectURL(file);
    try {
      await segment(model, labels, await loadImage(url));
    } finally {
      URL.revokeObjectURL(url);
    }
  });
  if (params.get("image")) await segment(model, labels, await loadImage(params.get("image")));
}

main().catch((error) => {
  statusLine.textContent = `Error: ${error.message}`;
  document.getElementById("result").textContent = JSON.stringify({ status: "error", message: error.message });
});
