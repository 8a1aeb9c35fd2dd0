// The page: load the model with onnxruntime-web (wasm backend, from vendor/), check its SHA-256, take a photo from
// the picker, the camera or a drop, preprocess it exactly as predict.py does (preprocess.js), run the model, show the
// crop, the prediction, the calibrated P(malignant) against the threshold, what that threshold means, the
// cautions, the most likely lesion types (a lesion-type model) and the heat map. Nothing leaves the browser.
// A photo unlike the training photos (its familiarity_distance beyond the model's limit) gets no answer: the
// page says why instead, with a button that shows the answer anyway, marked unreliable (as predict.py does).
// The functions that say what predict.py says carry the names of their Python twins (decisionTexts is
// answer.decision_texts, isBorderline answer.is_borderline, isUnfamiliar familiarity.is_unfamiliar, likelyTypes
// answer.likely_types, modelCautions answer.model_cautions, classProbabilities
// model.class_probabilities, calibratedProbabilities model.calibrated_probabilities, malignantSumText
// predict.malignant_sum_text, reweighted metrics.reweighted, predictiveValues metrics.predictive_values,
// weakModelWarning metrics.weak_model_warning, prevalenceTexts answer.prevalence_texts, unfamiliarSentence
// familiarity.unfamiliar_sentence, answerShown answer.answer_shown, marked answer.marked, percentText
// messages.percent_text); tests/test_web.py checks that they exist and agree. Once the model is ready, a service
// worker (sw.js) keeps this build for the next visit, offline too.
import * as ort from "./vendor/ort.wasm.bundle.min.mjs";
import {
  centreCrop, imageSize, loadImage, MAX_ASPECT, normalise, tooElongated, upsampleBilinear,
} from "./preprocess.js";

const MAX_BYTES = 30e6; // larger files are refused before they are read
const MAX_PIXELS = 40e6; // photos of 40 megapixels or more are refused before they are decoded
const SIDES = ["benign", "malignant"]; // model.CLASSES: the label is malignant when P(malignant) reaches the threshold
const CARD_FILE = "model_card.md"; // what serve_web.py serves when the model has a card
const OUTPUTS = ["logits", "p_malignant", "cam"]; // what export_onnx.py writes
const STRAYED = "this int8 model's answers strayed from the full model's on its validation photos; use the full "
  + "ONNX file"; // answer.STRAYED
const UNRELIABLE = "Unreliable: "; // answer.UNRELIABLE: marks each line of an answer shown anyway

const $ = (id) => document.getElementById(id);
const app = $("app");
$("limits").textContent = `up to ${MAX_BYTES / 1e6} MB and under ${MAX_PIXELS / 1e6} megapixels`;

// the wasm file serve_web.py copied, nothing else: the bundle holds its loader (ort-wasm-simd-threaded.mjs)
ort.env.wasm.wasmPaths = { wasm: new URL("vendor/ort-wasm-simd-threaded.wasm", import.meta.url).href };
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

// Whether the server has the model card (asked once, while the model loads: no request is made after that).
async function hasCard() {
  try {
    return (await fetch(CARD_FILE, { method: "HEAD" })).ok;
  } catch {
    return false;
  }
}

async function loadModel() {
  let card;
  try {
    config = await (await fetchOk("model.json")).json();
    card = hasCard();
    const bytes = new Uint8Array(await (await fetchOk(config.model_file)).arrayBuffer());
    await checkSha256(bytes, config.model_sha256);
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    const missing = OUTPUTS.filter((name) => !session.outputNames.includes(name));
    if (config.familiarity) missing.push(...["familiarity_distance"].filter((name) => !session.outputNames.includes(name)));
    if (missing.length) throw new Error(`the model has no '${missing.join("', '")}' output; export it with export_onnx.py`);
  } catch (error) {
    $("status").textContent = readyText = "The model did not load.";
    showMessage(`The model failed to load (${error.message}). Start the page with 'python serve_web.py' `
      + "(or 'make web') in the project folder, then reload this page.");
    app.dataset.state = "model-error";
    throw error;
  }
  showAbout(config.card_summary, await card);
  $("model-variant").textContent = `This page runs ${config.model_variant || "the full model"}.`;
  const size = config.image_size;
  readyText = `Model ready (${size} × ${size} pixel input, threshold ${config.threshold.toFixed(3)}). Choose a photo.`;
  $("status").textContent = readyText;
  window.__modelReadyAt = performance.now();
  app.dataset.state = "ready";
  keepForOffline();
}

// The model's bytes must be those model.json describes (its model_sha256): bytes of another build are refused.
// The browser computes SHA-256 only in a secure context (https, or this computer): elsewhere the page runs nothing.
async function checkSha256(bytes, expected) {
  if (!globalThis.crypto?.subtle) {
    throw new Error("this page can check its model file only over https or at 127.0.0.1 (a secure context); "
      + "serve it there: nothing was run");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const found = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  if (found !== expected) {
    throw new Error(`the model file's SHA-256 ${found} is not the ${expected} that model.json names: the page `
      + "got files of two different builds; nothing was run");
  }
}

// Once the model is ready (so it never slows the first result): the service worker (sw.js) that caches this build
// for the next visit, offline too. A worker of a new build that takes over a page a worker served reloads it, so
// that old and new files never mix (a first visit's page was served by the network and has all it needs).
function keepForOffline() {
  if (!navigator.serviceWorker) return; // an old browser, or not a secure context: online only
  navigator.serviceWorker.register("sw.js").catch((error) => {
    window.__offlineError = error.message; // the page works as before; only the next visit needs the network
  });
}
const servedByWorker = Boolean(navigator.serviceWorker?.controller);
navigator.serviceWorker?.addEventListener("controllerchange", () => {
  if (servedByWorker) window.location.reload();
});

// "About this model": the model card's summary (what export_onnx.py stored), and a link to the whole card.
function showAbout(summary, card) {
  if (summary) {
    $("trained-on").textContent = summary.trained_on;
    $("how-well").textContent = summary.how_well;
    $("intended-use").textContent = summary.intended_use;
    fillList($("card-limits"), summary.limits);
  }
  $("model-name").textContent = config.model_name || "model.onnx";
  $("model-sha256").textContent = config.model_sha256 || "unknown";
  $("card-summary").hidden = !summary;
  $("no-summary").hidden = Boolean(summary);
  $("card-link").hidden = !card;
  $("no-familiarity").hidden = Boolean(config.familiarity);
  $("about").hidden = false;
}

// A list element's items: one <li> per text (as text, never as HTML).
function fillList(list, texts) {
  list.replaceChildren(...texts.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = false;
}

function clearResult() {
  for (const id of ["label", "probability", "cautions", "operating-point", "types", "malignant-types", "tested",
    "externals", "assumes", "prevalence-field", "at-prevalence", "heat-text", "figure", "heat-controls", "timing", "message",
    "unfamiliar", "show-anyway", "unreliable"]) {
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

function elongated(file, width, height) {
  return `${quoted(file)} is ${width} × ${height} pixels, one side over ${MAX_ASPECT} times the other: `
    + "not a photo of a lesion. Crop it to the lesion first.";
}

// Why a file cannot be checked, or null: its size, and its pixel count from its header, before any heavy work.
async function refusal(file) {
  if (file.size === 0) return `${quoted(file)} is empty (0 bytes). Choose another photo.`;
  if (file.size > MAX_BYTES) {
    return `${quoted(file)} is ${(file.size / 1e6).toFixed(1)} MB; this page takes photos up to ${MAX_BYTES / 1e6} MB. `
      + "Choose a smaller photo, or save it at a lower resolution first.";
  }
  const size = imageSize(new Uint8Array(await file.slice(0, 1 << 20).arrayBuffer()));
  if (size && tooElongated(...size)) return elongated(file, ...size);
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
    photo = await loadImage(file, MAX_PIXELS); // the pixel count is checked again: not every format has a header we read
  } catch {
    return fail(`${quoted(file)} is not an image this browser can read${file.type ? ` (${file.type})` : ""}. `
      + "Choose a JPEG or PNG photo.");
  }
  if (tooElongated(photo.width, photo.height)) return fail(elongated(file, photo.width, photo.height));
  if (!photo.rgba) return fail(tooLarge(file, photo.width, photo.height));
  const t1 = performance.now();
  const crop = centreCrop(photo.rgba, photo.width, photo.height, 4, size, config.crop_pct);
  photo = null; // the decoded pixels can go
  const x = normalise(crop, size, config.mean, config.std);
  const t2 = performance.now();
  const outputs = await session.run({ [session.inputNames[0]]: new ort.Tensor("float32", x, [1, 3, size, size]) });
  const t3 = performance.now();
  const p = outputs.p_malignant.data[0]; // calibrated: the malignant classes' summed probability, through the calibration
  if (!(p >= 0 && p <= 1)) { // NaN or worse: a broken model is an error, never a label
    return fail(`The model gave no valid probability for ${quoted(file)} (P = ${p}); the model file is broken: `
      + "export it again with export_onnx.py.");
  }
  const [, h, w] = outputs.cam.dims;
  const distance = config.familiarity ? outputs.familiarity_distance.data[0] : null; // the photo's, against the limit
  const probabilities = calibratedProbabilities(Array.from(outputs.logits.data), config); // p is their malignant sum
  const run = {
    name: file.name, size, crop, p, threshold: config.threshold, label: SIDES[p >= config.threshold ? 1 : 0],
    borderline: isBorderline(p, config.threshold, config.borderline_margin), probabilities,
    types: config.classes.length > 2 ? likelyTypes(probabilities, config) : [],
    cam: Array.from(outputs.cam.data), camShape: [h, w], distance,
    unfamiliar: Boolean(config.familiarity) && isUnfamiliar(distance, config.familiarity.limit), revealed: false,
    timings: { decode: t1 - t0, preprocess: t2 - t1, inference: t3 - t2, total: t3 - t0 },
  };
  show(run);
  window.__lastRun = run; // for the tests: the crop the model saw, P, the types, timings
  app.dataset.state = "done";
}

function fail(text, state = "error") {
  showMessage(text);
  $("status").textContent = readyText;
  app.dataset.state = state;
}

// Python's f"{x:.{digits}f}": toFixed rounds the exact binary value as Python does, except a tie (a value whose
// exact decimal ends in the 5 just past the last digit, as 0.0625 to 3 digits), which toFixed rounds up and
// Python to even.
export function fixed(x, digits) {
  const text = x.toFixed(digits);
  if (!Number.isFinite(x) || Math.abs(x) >= 1e21) return text;
  const exact = x.toFixed(100).replace(/0+$/, ""); // every digit of the binary value, for the values a tie can be
  const decimals = exact.split(".")[1] || "";
  if (decimals.length !== digits + 1 || !decimals.endsWith("5") || Number(text.at(-1)) % 2 === 0) return text;
  return exact.slice(0, -1).replace(/\.$/, ""); // the odd digit rounded up: the even one below is Python's
}

// familiarity.is_unfamiliar, the rule: a photo is unfamiliar when its distance lies beyond the limit, or is not a
// number (NaN: a distance that could not be measured is never familiar); at the limit it is familiar.
export function isUnfamiliar(distance, limit) {
  return !(distance <= limit);
}

// answer.is_borderline, the rule: P(malignant) is borderline when it lies within margin of the threshold (at margin
// exactly it is not; NaN is not).
export function isBorderline(p, threshold, margin) {
  return Math.abs(p - threshold) < margin;
}

// answer.decision_texts: P and the threshold with enough digits (3 to 6) to see which side P lies on (past 6,
// "just below" or "just above" the threshold), and "borderline" when P is within margin of the threshold, else "".
export function decisionTexts(p, threshold, margin) {
  let digits = 6;
  for (let d = 3; d < 7; d++) {
    if (fixed(p, d) !== fixed(threshold, d)) {
      digits = d;
      break;
    }
  }
  let pText = fixed(p, digits);
  const tText = fixed(threshold, digits);
  if (pText === tText && p !== threshold) pText = `just ${p < threshold ? "below" : "above"} ${tText}`;
  return [pText, tText, isBorderline(p, threshold, margin) ? "borderline" : ""];
}

// answer.answer_shown: whether a photo's answer (P, P at a prevalence, PPV and NPV, the type, the heat map) is
// shown: not for a photo unlike the training photos, unless the user asks for it anyway (the button).
export function answerShown(unfamiliar, asked) {
  return asked || !unfamiliar;
}

// answer.marked: a line of a photo's answer, marked unreliable where the photo is unfamiliar.
export function marked(text, unfamiliar) {
  return unfamiliar ? `${UNRELIABLE}${text}` : text;
}

// messages.percent_text: a share as a percentage with one decimal, or as many as show its first two significant digits
// (and those of 1 - share), trailing zeros cut: 0.0001 is "0.01%", never "0.0%".
export function percentText(share) {
  const closest = 100 * Math.min(share, 1 - share);
  const digits = closest > 0 ? Math.max(1, 1 - Math.floor(Math.log10(closest))) : 1;
  const text = fixed(100 * share, digits);
  return `${digits > 1 ? text.replace(/0+$/, "").replace(/\.$/, "") : text}%`;
}

// model.class_probabilities: the softmax of one photo's logits (float64).
export function classProbabilities(logits) {
  const top = Math.max(...logits), e = logits.map((l) => Math.exp(l - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

// model.calibrated_probabilities: the one calibrated distribution over the classes, softmax(a * logits + b *
// malignant) with the model's calibration {a, b} (none: the softmax itself); its malignant classes add up to p.
export function calibratedProbabilities(logits, meta) {
  const fitted = meta.calibration || {}, a = fitted.a ?? 1, b = fitted.b ?? 0;
  const malignant = meta.malignant_classes || ["malignant"];
  return classProbabilities(logits.map((l, i) => a * l + (malignant.includes(meta.classes[i]) ? b : 0)));
}

// predict.malignant_sum_text: "Melanoma 0.219 + Basal cell carcinoma 0.010 = 0.229", the malignant types'
// calibrated probabilities and their sum, P(malignant).
export function malignantSumText(probabilities, meta) {
  const names = meta.class_names || meta.classes, malignant = meta.malignant_classes || ["malignant"];
  const at = meta.classes.map((c, i) => i).filter((i) => malignant.includes(meta.classes[i]));
  const sum = at.reduce((total, i) => total + probabilities[i], 0);
  return `${at.map((i) => `${names[i]} ${fixed(probabilities[i], 3)}`).join(" + ")} = ${fixed(sum, 3)}`;
}

// metrics.reweighted: P(malignant) where a share prevalence of photos is malignant, from P that assumes prior
// (its odds times the ratio of the prior odds: Bayes' rule).
export function reweighted(p, prior, prevalence) {
  const odds = (p / (1 - p)) * (prevalence / (1 - prevalence)) / (prior / (1 - prior));
  return Number.isFinite(odds) ? odds / (1 + odds) : 1;
}

// metrics.predictive_values: [PPV, NPV], the chance that a 'malignant' call is right and that a 'benign' call is
// right at that prevalence, for a test of this sensitivity and specificity.
export function predictiveValues(sensitivity, specificity, prevalence) {
  const caught = sensitivity * prevalence, falseAlarms = (1 - specificity) * (1 - prevalence);
  const cleared = specificity * (1 - prevalence), missed = (1 - sensitivity) * prevalence;
  return [caught + falseAlarms > 0 ? caught / (caught + falseAlarms) : NaN,
    cleared + missed > 0 ? cleared / (cleared + missed) : NaN];
}

// metrics.weak_model_warning: a caution when the model itself is weak, else null.
export function weakModelWarning(op, aucCi) {
  const found = [];
  if (op && op.specificity != null && op.specificity < 0.5) {
    found.push(`at its threshold it cleared only ${fixed(100 * op.specificity, 0)}% of benign validation photos`);
  }
  if (aucCi && aucCi[0] < 0.7) {
    found.push(`its validation ROC-AUC may be as low as ${fixed(aucCi[0], 2)} (lower end of the 95% interval)`);
  }
  return found.length ? `this model is weak: ${found.join(" and ")}` : null;
}

// answer.prevalence_texts: [what P assumes (with the hint where no prevalence was given), what P means at this
// prevalence (PPV and NPV of the calls, from the test figures where the model has them and the validation ones
// beside them), or null].
export function prevalenceTexts(meta, prevalence, thresholdGiven, tested) {
  const prior = meta.prior_malignant;
  if (prior == null) return [null, null];
  let assumes = `P(malignant) assumes about ${fixed(100 * prior, 0)}% of photos are malignant, as in the training `
    + "photos";
  if (prevalence == null) assumes += "; where they are rarer or more common, pass --prevalence (e.g. --prevalence 0.05)";
  const figures = [["test", tested], ["validation", meta.operating_point]].filter(([, found]) => found);
  if (prevalence == null || !figures.length || thresholdGiven) return [assumes, null];
  const said = figures.map(([split, found]) => {
    const [ppv, npv] = predictiveValues(found.sensitivity, found.specificity, prevalence);
    return `from the ${split} sensitivity and specificity at this threshold, a 'malignant' call is right `
      + `${fixed(100 * ppv, 0)}% of the time (PPV) and a 'benign' call ${fixed(100 * npv, 0)}% of the time (NPV)`;
  });
  return [assumes, `at a prevalence of ${percentText(prevalence)}, ${said.join("; ")}`];
}

// The prevalence lines under a result: P re-weighted for the share in the field, and the calls' PPV and NPV;
// none for an unfamiliar photo whose answer is withheld, each marked unreliable once it is shown anyway.
function showPrevalence(run) {
  const field = $("prevalence").value.trim(), percent = Number(field);
  const given = field !== "" && percent > 0 && percent < 100;
  const tested = config.card_summary ? config.card_summary.test_point : null;
  const [assumes, atPrevalence] = prevalenceTexts(config, given ? percent / 100 : null, false, tested);
  const shown = answerShown(run.unfamiliar, run.revealed);
  $("assumes").textContent = assumes ? `Note: ${assumes.replace("pass --prevalence (e.g. --prevalence 0.05)",
    "enter their share below")}.` : "";
  $("prevalence-field").hidden = !assumes; // the setting may be typed any time; what it says of P is withheld
  $("assumes").hidden = !assumes || !shown;
  const lines = [];
  if (!shown) {
    // no P was shown: nothing is said of it at any prevalence
  } else if (given && assumes) {
    const at = reweighted(run.p, config.prior_malignant, percent / 100);
    const share = percentText(percent / 100);
    lines.push(marked(`At a prevalence of ${share}: P(malignant) = ${fixed(at, 3)} (the call above uses P).`,
      run.unfamiliar));
    if (atPrevalence) lines.push(marked(`Prevalence: ${atPrevalence}.`, run.unfamiliar));
  } else if (field !== "") {
    lines.push("Enter a share of malignant photos between 0.01 and 99.99%.");
  }
  $("at-prevalence").textContent = lines.join(" ");
  $("at-prevalence").hidden = !lines.length;
}

// answer.likely_types: [[type name, P]] of a lesion-type model, most likely first (ties in the model's order),
// named by the original label values where known.
export function likelyTypes(probabilities, meta) {
  const names = meta.class_names || meta.classes;
  return probabilities.map((p, i) => [names[i], p]).sort((a, b) => b[1] - a[1]);
}

// The Type line predict.py prints: the most likely type and the next two.
function typeText(ranked) {
  const then = ranked.slice(1, 3).map(([name, p]) => `${name} (P = ${fixed(p, 3)})`).join(", ");
  return `Type: ${ranked[0][0]} (P = ${fixed(ranked[0][1], 3)}); next: ${then}`;
}

// familiarity.unfamiliar_sentence: what is said instead of an answer for a photo unlike the training photos.
export function unfamiliarSentence(meta) {
  const types = (meta.familiarity || {}).image_types || [];
  return `the photo does not look like the ${types.length ? types.join(" or ") : "training"} photos the model learned from`;
}

// The line predict.py prints under "Prediction: unfamiliar", up to its command-line hint.
function unfamiliarText(run) {
  const why = `${unfamiliarSentence(config)} (familiarity distance ${fixed(run.distance, 2)}, limit `
    + `${fixed(config.familiarity.limit, 2)})`;
  return run.revealed ? `${why}; the answer below is unreliable` : `${why}: no benign/malignant answer`;
}

// answer.model_cautions: what the model says about itself that a reader must know with every result.
export function modelCautions(meta) {
  const cautions = [];
  if (meta.at_chance) {
    const ci = meta.val_auc_ci95;
    const interval = ci ? ` (its validation ROC-AUC 95% interval ${fixed(ci[0], 3)}-${fixed(ci[1], 3)} includes 0.5)` : "";
    cautions.push(`this model cannot be told from chance${interval}; do not rely on its predictions`);
  }
  if (meta.operating_point_warning) cautions.push(`${meta.operating_point_warning} on its validation photos`);
  const weak = meta.at_chance ? null : weakModelWarning(meta.operating_point, meta.val_auc_ci95);
  if (weak) cautions.push(`${weak}; read its answers as a rough guide at best`);
  if (meta.quantised && !meta.quantised.within_tolerance) cautions.push(STRAYED);
  return cautions;
}

function show(run) {
  const { size, p, threshold } = run;
  $("placeholder").hidden = true;
  $("label").textContent = `Prediction: ${run.unfamiliar ? "unfamiliar" : run.label}`;
  $("label").className = `label ${run.unfamiliar ? "unfamiliar" : run.label}`;
  $("unfamiliar").textContent = run.unfamiliar ? unfamiliarText(run) : "";
  $("unfamiliar").hidden = !run.unfamiliar;
  $("show-anyway").hidden = !run.unfamiliar || run.revealed;
  $("unreliable").textContent = `Unreliable answer: ${run.label}`;
  $("unreliable").hidden = !run.revealed;
  const withheld = !answerShown(run.unfamiliar, run.revealed); // no P, prevalence, type or heat map: predict.py's rule
  const [pText, tText, near] = decisionTexts(p, threshold, config.borderline_margin);
  $("probability").textContent = marked(`P(malignant) = ${pText} (threshold ${tText}; malignant from the threshold `
    + "up)", run.unfamiliar);
  const cautions = modelCautions(config).map((text) => `Caution: ${text}.`);
  if (near) {
    cautions.push(marked(`Borderline: P(malignant) is within ${config.borderline_margin} of the threshold, so this `
      + "result could go either way. Do not read it as a confident answer.", run.unfamiliar));
  }
  fillList($("cautions"), cautions);
  $("cautions").hidden = cautions.length === 0 || withheld;
  $("operating-point").textContent = `Operating point: ${config.operating_point_text}.`;
  $("operating-point").hidden = !config.operating_point_text || withheld;
  $("types").textContent = run.types.length ? marked(typeText(run.types), run.unfamiliar) : "";
  $("types").hidden = !run.types.length || withheld;
  $("malignant-types").textContent = run.types.length ? marked("Malignant types (they add up to P(malignant)): "
    + malignantSumText(run.probabilities, config), run.unfamiliar) : "";
  $("malignant-types").hidden = !run.types.length || withheld;
  const summary = config.card_summary || {};
  $("tested").textContent = summary.tested ? `Tested: ${summary.tested}.` : "";
  $("tested").hidden = !summary.tested || withheld;
  const externals = (summary.externals || []).map((text) => `External validation: ${text}.`);
  $("externals").textContent = externals.join(" ");
  $("externals").hidden = !externals.length || withheld;
  showPrevalence(run);
  const canvas = $("crop");
  canvas.width = canvas.height = size;
  const pixels = new ImageData(size, size);
  for (let i = 0; i < size * size; i++) {
    for (let c = 0; c < 3; c++) pixels.data[i * 4 + c] = run.crop[i * 3 + c];
    pixels.data[i * 4 + 3] = 255;
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  $("caption").textContent = `The photo as the model saw it: the centre crop, ${size} × ${size} pixels.`;
  for (const id of ["label", "probability", "figure", "timing"]) $(id).hidden = false;
  $("probability").hidden = withheld;
  if (withheld) {
    $("heat").hidden = $("heat-controls").hidden = $("heat-text").hidden = true;
  } else {
    drawHeatMap(run.cam, ...run.camShape, size);
    $("heat-text").textContent = marked($("heat-text").textContent, run.unfamiliar);
  }
  $("timing").textContent = `Checked in ${Math.round(run.timings.total)} ms on this device (the model itself: `
    + `${Math.round(run.timings.inference)} ms).`;
  $("status").textContent = `Checked “${run.name}”. Choose another photo to check it.`;
}

// matplotlib's inferno at 17 evenly spaced values (0, 1/16, ..., 1), the colour scale of predict.py --explain
// (skinlesion/explain.py's overlay), from colormaps["inferno"](np.linspace(0, 1, 17)) * 255, rounded: linear
// between them, within 7/255 of matplotlib's own 256 colours (tests/test_web.py checks it).
const INFERNO = [
  [0, 0, 4], [11, 7, 36], [33, 12, 74], [61, 9, 101], [87, 16, 110], [113, 25, 110], [138, 34, 106], [163, 44, 97],
  [188, 55, 84], [210, 70, 68], [228, 90, 49], [241, 115, 29], [249, 142, 9], [252, 172, 17], [249, 203, 53],
  [242, 234, 105], [252, 255, 164],
];

// The RGBA (0..255) of one value in [0, 1], as explain.overlay colours it: inferno, alpha the value squared, so
// that little evidence leaves the photo visible and none leaves it clear.
export function colour(v) {
  const s = v * (INFERNO.length - 1), i = Math.min(Math.floor(s), INFERNO.length - 2), f = s - i;
  return [...INFERNO[i].map((c, k) => Math.round(c + (INFERNO[i + 1][k] - c) * f)), Math.round(255 * v * v)];
}

// The legend: the same ramp, opaque (as predict.py --explain's colour bar).
function drawLegend() {
  const canvas = $("ramp"), pixels = new ImageData(canvas.width, 1);
  for (let x = 0; x < canvas.width; x++) {
    pixels.data.set([...colour(x / (canvas.width - 1)).slice(0, 3), 255], x * 4);
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
}

// Whether the heat map, its legend and the sentence that describes it are shown: the checkbox.
function showHeatMap(on) {
  for (const id of ["heat", "legend", "heat-text"]) $(id).hidden = !on;
}

// The cam (h x w: > 0 where the evidence is for malignant, < 0 for benign) clipped at 0, normalised by its
// maximum, upsampled bilinearly to the crop, coloured, over the crop.
// An all-zero map (or one below 1e-6: float noise, which the normalising would blow up) is said in words
// instead of drawn. Exported for the tests.
export function drawHeatMap(cam, h, w, size) {
  cam = cam.map((v) => Math.max(v, 0)); // the evidence for malignant
  const max = cam.reduce((a, b) => Math.max(a, b), 0);
  const text = $("heat-text");
  if (!(max > 1e-6)) {
    text.textContent = "Heat map: no region of the photo stands out as evidence for malignant (the map is empty); "
      + "the P(malignant) above is the model's answer for the photo as a whole.";
    text.hidden = false;
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
  text.textContent = "Heat map: the brighter and the more opaque, the more evidence for malignant the model found "
    + `there; the most is in ${where} of the crop. It shows what the model looked at, not a diagnosis.`;
  $("heat-controls").hidden = false;
  showHeatMap($("show-heat").checked);
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
$("show-heat").addEventListener("change", (event) => showHeatMap(event.target.checked));
$("prevalence").addEventListener("input", () => {
  if (window.__lastRun) showPrevalence(window.__lastRun);
});

$("show-anyway").addEventListener("click", () => { // the last photo's answer, marked unreliable
  if (!window.__lastRun?.unfamiliar) return;
  window.__lastRun.revealed = true;
  show(window.__lastRun);
});
drawLegend();
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  const files = event.dataTransfer?.files;
  if (!files?.length) return fail("Only files can be dropped here: drop a photo.");
  enqueue(files[0]);
});
