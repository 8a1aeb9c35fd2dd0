// The page: load the model with onnxruntime-web (wasm backend, from vendor/), take a photo from the picker,
// the camera or a drop, preprocess it exactly as predict.py does (preprocess.js), run the model, and show the
// crop, the prediction, P(malignant) against the threshold and the heat map. Nothing leaves the browser.
import * as ort from "./vendor/ort.wasm.min.mjs";
import { centreCrop, decode, imageSize, normalise, upsampleBilinear } from "./preprocess.js";

const MAX_BYTES = 30e6; // larger files are refused before they are read
const MAX_PIXELS = 40e6; // photos of 40 megapixels or more are refused before they are decoded

const $ = (id) => document.getElementById(id);
const app = $("app");
$("limits").textContent = `up to ${MAX_BYTES / 1e6} MB and under ${MAX_PIXELS / 1e6} megapixels`;

ort.env.wasm.wasmPaths = new URL("vendor/", import.meta.url).href; // the files serve_web.py copied, nothing else
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation (COOP/COEP headers); one is fast enough
ort.env.wasm.proxy = false;

let config, session, readyText = "Loading the model…";
const ready = loadModel();
ready.catch(() => {}); // a failure is shown on the page; each check awaits `ready` again
let queue = Promise.resolve(); // photos are checked one after the other

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`HTTP ${response.status} for ${url}`);
  return response;
}

async function loadModel() {
  try {
    config = await (await fetchOk("model.json")).json();
    const bytes = new Uint8Array(await (await fetchOk(config.model_file)).arrayBuffer());
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    if (!session.outputNames.includes("cam")) throw new Error("the model has no 'cam' output");
  } catch (error) {
    $("status").textContent = readyText = "The model did not load.";
    showMessage(`The model failed to load (${error.message}). Start the page with 'python serve_web.py' `
      + "(or 'make web') in the project folder, then reload this page.");
    app.dataset.state = "model-error";
    throw error;
  }
  const size = config.image_size;
  readyText = `Model ready (${size} × ${size} pixel input, threshold ${config.threshold.toFixed(3)}). Choose a photo.`;
  $("status").textContent = readyText;
  if (config.at_chance) {
    $("caution").textContent = "Caution: on its validation photos this model could not be told from chance (the 95% "
      + "interval of its ROC-AUC includes 0.5), so its answers here mean little.";
    $("caution").hidden = false;
  }
  window.__modelReadyAt = performance.now();
  app.dataset.state = "ready";
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = false;
}

function clearResult() {
  for (const id of ["label", "probability", "borderline", "heat-text", "figure", "heat-controls", "timing", "message"]) {
    $(id).hidden = true;
  }
  $("placeholder").hidden = false;
}

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
const quoted = (file) => `“${file.name || "the file"}”`;

function tooLarge(file, width, height) {
  return `${quoted(file)} is ${width} × ${height} pixels (${(width * height / 1e6).toFixed(1)} megapixels); this page takes `
    + `photos under ${MAX_PIXELS / 1e6} megapixels. Choose a smaller photo, or save it at a lower resolution first.`;
}

// Why a file cannot be checked, or null: its size, and its pixel count from its header, before any heavy work.
async function refusal(file) {
  if (file.size === 0) return `${quoted(file)} is empty (0 bytes). Choose another photo.`;
  if (file.size > MAX_BYTES) {
    return `${quoted(file)} is ${(file.size / 1e6).toFixed(1)} MB; this page takes photos up to ${MAX_BYTES / 1e6} MB. `
      + "Choose a smaller photo, or save it at a lower resolution first.";
  }
  const size = imageSize(new Uint8Array(await file.slice(0, 1 << 20).arrayBuffer()));
  return size && size[0] * size[1] >= MAX_PIXELS ? tooLarge(file, ...size) : null;
}

async function check(file) {
  clearResult();
  app.dataset.state = "busy";
  $("status").textContent = `Checking “${file.name}”…`;
  const why = await refusal(file);
  if (why) return fail(why);
  try {
    await ready;
  } catch {
    return fail($("message").textContent || "The model failed to load; reload the page.", "model-error");
  }
  await nextFrame(); // let the status line paint before the heavy work
  const size = config.image_size, t0 = performance.now();
  let photo;
  try {
    photo = await decode(file, MAX_PIXELS); // the pixel count is checked again: not every format has a header we read
  } catch {
    return fail(`${quoted(file)} is not an image this browser can read${file.type ? ` (${file.type})` : ""}. `
      + "Choose a JPEG or PNG photo.");
  }
  if (!photo.rgba) return fail(tooLarge(file, photo.width, photo.height));
  const t1 = performance.now();
  const crop = centreCrop(photo.rgba, photo.width, photo.height, 4, size, config.crop_pct);
  photo = null; // the decoded pixels can go
  const x = normalise(crop, size, config.mean, config.std);
  const t2 = performance.now();
  const outputs = await session.run({ [session.inputNames[0]]: new ort.Tensor("float32", x, [1, 3, size, size]) });
  const t3 = performance.now();
  const [l0, l1] = outputs.logits.data;
  const p = 1 / (1 + Math.exp(l0 - l1)); // softmax(logits)[malignant]
  if (!(p >= 0 && p <= 1)) { // NaN or worse: a broken model is an error, never a label
    return fail(`The model gave no valid probability for ${quoted(file)} (P = ${p}); the model file is broken: `
      + "export it again with export_onnx.py.");
  }
  const [, h, w] = outputs.cam.dims;
  const run = {
    name: file.name, size, crop, p, threshold: config.threshold, label: config.classes[p >= config.threshold ? 1 : 0],
    borderline: Math.abs(p - config.threshold) < config.borderline_margin, cam: Array.from(outputs.cam.data), camShape: [h, w],
    timings: { decode: t1 - t0, preprocess: t2 - t1, inference: t3 - t2, total: t3 - t0 },
  };
  show(run);
  window.__lastRun = run; // for the tests: the crop the model saw, P, timings
  app.dataset.state = "done";
}

function fail(text, state = "error") {
  showMessage(text);
  $("status").textContent = readyText;
  app.dataset.state = state;
}

// P and the threshold with enough digits (3 to 6) to see which side P lies on, as predict.py prints them.
function decisionTexts(p, threshold) {
  for (let digits = 3; digits < 7; digits++) {
    if (p.toFixed(digits) !== threshold.toFixed(digits) || digits === 6) return [p.toFixed(digits), threshold.toFixed(digits)];
  }
}

function show(run) {
  const { size, p, threshold } = run;
  $("placeholder").hidden = true;
  $("label").textContent = `Prediction: ${run.label}`;
  $("label").className = `label ${run.label}`;
  const [pText, tText] = decisionTexts(p, threshold);
  $("probability").textContent = `P(malignant) = ${pText} (threshold ${tText}; malignant from the threshold up)`;
  $("borderline").textContent = `Borderline: P(malignant) is within ${config.borderline_margin} of the threshold, so this `
    + "result could go either way. Do not read it as a confident answer.";
  const canvas = $("crop");
  canvas.width = canvas.height = size;
  const pixels = new ImageData(size, size);
  for (let i = 0; i < size * size; i++) {
    for (let c = 0; c < 3; c++) pixels.data[i * 4 + c] = run.crop[i * 3 + c];
    pixels.data[i * 4 + 3] = 255;
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  $("caption").textContent = `The photo as the model saw it: the centre crop, ${size} × ${size} pixels.`;
  drawHeatMap(run.cam, ...run.camShape, size);
  for (const id of ["label", "probability", "figure", "timing"]) $(id).hidden = false;
  $("borderline").hidden = !run.borderline;
  $("timing").textContent = `Checked in ${Math.round(run.timings.total)} ms on this device (the model itself: `
    + `${Math.round(run.timings.inference)} ms).`;
  $("status").textContent = `Checked “${run.name}”. Choose another photo to check it.`;
}

// Inferno-like colour ramp, dark to bright; alpha grows with the value (squared) so that little evidence
// leaves the photo visible and none leaves it clear.
const RAMP = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
function colour(v) {
  const s = v * (RAMP.length - 1), i = Math.min(Math.floor(s), RAMP.length - 2), f = s - i;
  return [...RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * f)), Math.round(255 * v * v)];
}

// The cam (h x w: > 0 where the evidence is for malignant, < 0 for benign) clipped at 0, normalised by its
// maximum, upsampled bilinearly to the crop, coloured, over the crop.
// An all-zero map (or one below 1e-6: float noise, which the normalising would blow up) is said in words
// instead of drawn. Exported for the tests.
export function drawHeatMap(cam, h, w, size) {
  cam = cam.map((v) => Math.max(v, 0)); // the evidence for malignant
  const max = cam.reduce((a, b) => Math.max(a, b), 0);
  const text = $("heat-text");
  text.hidden = false;
  if (!(max > 1e-6)) {
    text.textContent = "Heat map: no evidence for malignant found in this photo.";
    $("heat").hidden = $("heat-controls").hidden = true;
    return false;
  }
  const up = upsampleBilinear(cam.map((v) => v / max), h, w, size);
  const canvas = $("heat");
  canvas.width = canvas.height = size;
  const pixels = new ImageData(size, size);
  let best = 0;
  for (let i = 0; i < size * size; i++) {
    pixels.data.set(colour(Math.min(Math.max(up[i], 0), 1)), i * 4);
    if (up[i] > up[best]) best = i;
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  const row = ["upper", "middle", "lower"][Math.min(2, Math.floor((3 * Math.floor(best / size)) / size))];
  const col = ["left", "centre", "right"][Math.min(2, Math.floor((3 * (best % size)) / size))];
  const where = row === "middle" && col === "centre" ? "the centre" : `the ${row} ${col}`;
  text.textContent = `Heat map: the brighter, the more evidence for malignant the model found there; the most is in ${where} `
    + "of the crop. It shows what the model looked at, not a diagnosis.";
  $("heat-controls").hidden = false;
  $("heat").hidden = !$("show-heat").checked;
  return true;
}

function enqueue(file) {
  if (!file) return;
  queue = queue.then(() => check(file)).catch((error) => fail(`Something went wrong while checking the photo: ${error.message}`));
}

for (const id of ["file", "camera"]) {
  $(id).addEventListener("change", (event) => {
    enqueue(event.target.files[0]);
    event.target.value = ""; // choosing the same photo again checks it again
  });
}
$("show-heat").addEventListener("change", (event) => {
  $("heat").hidden = !event.target.checked;
  $("legend").hidden = !event.target.checked;
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  const files = event.dataTransfer?.files;
  if (!files?.length) return fail("Only files can be dropped here: drop a photo.");
  enqueue(files[0]);
});
