// pvtv2 serve: the page's logic (vanilla JavaScript, no library, no network but this server).
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58230", "#911eb4", "#46f0f0", "#f032e6",
                 "#d2f53c", "#fabed4", "#008080", "#dcbeff", "#aa6e28", "#800000"];
// matplotlib's "inferno" at 0, 1/8, ..., 1 (linear in between)
const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                 [250, 193, 39], [245, 233, 110], [252, 255, 164]];

const state = { info: null, image: null, photo: null, gen: 0, detections: [], query: null, started: 0 };

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

async function api(path, body, raw) {
  const opts = body === undefined ? {} : {
    method: "POST", body: raw ? body : JSON.stringify(body),
    headers: { "Content-Type": raw ? "application/octet-stream" : "application/json" },
  };
  const t0 = performance.now();
  let response;
  try {
    response = await fetch(path, opts);
  } catch (e) {
    throw new Error("the server does not answer (was it stopped?)");
  }
  let data;
  try {
    data = await response.json();
  } catch (e) {
    throw new Error(`HTTP ${response.status}: the server's answer is not JSON`);
  }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  data.rtt = performance.now() - t0;
  return data;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show the image"));
    img.src = src;
  });
}

function fmtMs(data) { return `model ${Math.round(data.ms)} ms · round trip ${Math.round(data.rtt)} ms`; }

// --- start-up: the panels' models, the limits, the examples ---------------------------------------------------
async function init() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    showError(`cannot read the server's description: ${e.message}`);
    return;
  }
  const { panels, limits, examples } = state.info;
  for (const task of ["classify", "detect", "segment", "attention"]) {
    if (!panels[task]) { $(`panel-${task}`).dataset.state = "off"; continue; }
    showModel(task, panels[task]);
    if (task === "detect") { $("det-score").value = panels[task].default_score; updateThresh(); }
  }
  for (const [task, c] of Object.entries(state.info.choices || {})) {
    const select = $(`${task}-choice`);
    if (!select || !panels[task]) continue;
    for (const o of c.options) select.add(new Option(o.label, o.id, false, o.id === c.current));
    select.dataset.current = c.current;
    select.addEventListener("change", () => chooseModel(task, select));
    $(`${task}-choose`).hidden = c.options.length < 2;
  }
  $("limits").textContent = `JPEG, PNG, WebP, GIF, BMP, TIFF; at most ${limits.max_bytes / 1048576} MB and ` +
    `${limits.max_pixels / 1e6} megapixels; shrunk to ${limits.work_side} px for the models`;
  for (const name of examples) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.example = name;
    b.innerHTML = `<img alt="" src="/api/example/${name}.jpg"><span>${name}</span>`;
    b.addEventListener("click", () => pickExample(name));
    $("examples").appendChild(b);
  }
  setStatus("ready: drop a photo or pick an example");
}

function showModel(task, p) {
  const label = $(`${task}-model`);
  label.textContent = p.random ? p.name : `${p.name} · ${p.source}`;
  if (p.random) label.insertAdjacentHTML("beforeend", ' <span class="badge">random weights</span>');
}

// --- choosing a panel's model: the server loads one of the choices it listed, then the panel runs again ------------
async function chooseModel(task, select) {
  const panel = $(`panel-${task}`), gen = state.gen;
  showError("");
  panel.dataset.state = "busy";
  select.disabled = true;
  let data;
  try {
    data = await api("/api/model", { panel: task, choice: select.value });
  } catch (e) {
    showError(`${task} model: ${e.message}`);
    select.value = select.dataset.current;  // the panel keeps its model
    panel.dataset.state = "error";
    return;
  } finally {
    select.disabled = false;
  }
  select.dataset.current = data.choice;
  for (const [t, p] of Object.entries(data.panels)) { state.info.panels[t] = p; showModel(t, p); }
  setStatus(`${task}: ${select.selectedOptions[0].text} loaded in ${Math.round(data.ms)} ms`);
  if (task === "classify") {  // attention follows the classifier
    if (!data.attention) delete state.info.panels.attention;
    $("panel-attention").dataset.state = data.attention ? "idle" : "off";
    $("attn-maps").innerHTML = "";
    $("attention-ms").textContent = "";
  }
  if (task === "detect") { $("det-score").value = data.panels.detect.default_score; updateThresh(); }
  $(`${task}-ms`).textContent = "";
  if (state.image && gen === state.gen) await runTask(task, gen);
  else panel.dataset.state = "idle";
  if (task === "classify" && state.query && data.attention && gen === state.gen) {
    const [y, x] = state.query;
    runTask("attention", gen, { y, x });
  }
}

async function pickExample(name) {
  try {
    const r = await fetch(`/api/example/${name}.jpg`);
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    await upload(await r.blob(), `${name}.jpg`);
  } catch (e) {
    showError(`example ${name}: ${e.message}`);
  }
}

function handleFile(file) {
  if (!file) return;
  const limit = state.info ? state.info.limits.max_bytes : Infinity;
  if (file.size > limit) {
    showError(`${file.name}: the file is ${(file.size / 1048576).toFixed(1)} MB: the limit is ${limit / 1048576} MB`);
    return;
  }
  upload(file, file.name);
}

// --- one upload: decode on the server, then run the panels one after the other ----------------------------------
async function upload(blob, name) {
  const gen = ++state.gen;
  showError("");
  state.started = performance.now();
  setStatus(`uploading ${name}...`);
  let data;
  try {
    data = await api("/api/image", blob, true);
  } catch (e) {
    if (gen === state.gen) { showError(`${name}: ${e.message}`); setStatus("the photo was refused"); }
    return;
  }
  if (gen !== state.gen) return;
  state.image = data;
  state.photo = await loadImage(data.preview);
  state.query = null;
  drawPhoto();
  $("photo-empty").hidden = true;
  $("photo-info").textContent = `${name}: ${data.note}`;
  $("attn-maps").innerHTML = "";
  $("attention-ms").textContent = "";
  let first = null;
  for (const task of ["classify", "segment", "detect"]) {
    if (!state.info.panels[task]) continue;
    const ok = await runTask(task, gen);
    if (gen !== state.gen) return;
    if (ok && first === null) first = (performance.now() - state.started) / 1000;
  }
  const total = (performance.now() - state.started) / 1000;
  setStatus(`${name}: first result ${first === null ? "-" : first.toFixed(2) + " s"} after the upload began, ` +
            `all in ${total.toFixed(2)} s; click the photo for attention maps`);
  $("status").dataset.first = first === null ? "" : first.toFixed(3);
}

async function runTask(task, gen, extra) {
  const panel = $(`panel-${task}`);
  panel.dataset.state = "busy";
  try {
    const data = await api(`/api/${task}`, { id: state.image.id, ...(extra || {}) });
    if (gen !== state.gen) return false;
    ({ classify: renderClassify, detect: renderDetect, segment: renderSegment, attention: renderAttention })[task](data);
    $(`${task}-ms`).textContent = fmtMs(data);
    panel.dataset.state = "done";
    return true;
  } catch (e) {
    if (gen === state.gen) { showError(`${task}: ${e.message}`); panel.dataset.state = "error"; }
    return false;
  }
}

// --- the photo (click: attention) -----------------------------------------------------------------------------
function drawPhoto() {
  const c = $("photo"), img = state.photo;
  c.width = img.width;
  c.height = img.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  if (state.query) cross(ctx, state.query[1], state.query[0], Math.max(8, img.width / 40));
}

function cross(ctx, x, y, r) {
  for (const [color, width] of [["#000", 5], ["#0ff", 2]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.moveTo(x - r, y); ctx.lineTo(x + r, y);
    ctx.moveTo(x, y - r); ctx.lineTo(x, y + r);
    ctx.stroke();
  }
}

$("photo").addEventListener("click", (e) => {
  if (!state.image || !state.info.panels.attention) return;
  const rect = e.target.getBoundingClientRect();
  const x = Math.min(Math.max(0, (e.clientX - rect.left) * state.image.width / rect.width), state.image.width - 0.01);
  const y = Math.min(Math.max(0, (e.clientY - rect.top) * state.image.height / rect.height), state.image.height - 0.01);
  state.query = [y, x];
  drawPhoto();
  runTask("attention", state.gen, { y, x });
});

// --- classification -------------------------------------------------------------------------------------------
function renderClassify(data) {
  const box = $("top5");
  box.innerHTML = "";
  for (const { class: name, prob } of data.top) {
    const row = document.createElement("div");
    row.className = "row";
    row.innerHTML = `<span class="name"></span><div class="bar"><div></div></div><span class="pct"></span>`;
    row.querySelector(".name").textContent = name;
    row.querySelector(".name").title = name;
    row.querySelector(".bar div").style.width = `${(100 * prob).toFixed(1)}%`;
    row.querySelector(".pct").textContent = `${(100 * prob).toFixed(prob < 0.1 ? 2 : 1)}%`;
    box.appendChild(row);
  }
  $("classify-input").textContent = `model input ${data.input[0]}×${data.input[1]} (the classifier's own ` +
    "evaluation preprocessing)";
}

// --- detection: every detection comes once; the slider filters them here --------------------------------------
async function renderDetect(data) {
  const dets = data.detections;
  await Promise.all(dets.map(async (d) => {
    if (!d.mask) return;
    const img = await loadImage(d.mask.png);
    const c = document.createElement("canvas");  // the mask in the class colour: alpha from the PNG
    c.width = img.width;
    c.height = img.height;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    ctx.globalCompositeOperation = "source-in";
    ctx.fillStyle = PALETTE[d.label % PALETTE.length];
    ctx.fillRect(0, 0, c.width, c.height);
    d.layer = c;
  }));
  state.detections = dets;
  drawDetections();
}

function updateThresh() { $("det-thresh").textContent = Number($("det-score").value).toFixed(2); }

function drawDetections() {
  if (!state.photo) return;
  const t = Number($("det-score").value), c = $("det-canvas"), img = state.photo;
  c.width = img.width;
  c.height = img.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const shown = state.detections.filter((d) => d.score >= t);
  ctx.globalAlpha = 0.45;
  for (const d of shown) if (d.layer) ctx.drawImage(d.layer, d.mask.x, d.mask.y);
  ctx.globalAlpha = 1;
  const lw = Math.max(2, img.width / 320), fs = Math.max(11, Math.round(img.width / 55));
  ctx.font = `${fs}px system-ui, "DejaVu Sans", sans-serif`;
  ctx.textBaseline = "top";
  for (const d of shown) {
    const [x1, y1, x2, y2] = d.box, color = PALETTE[d.label % PALETTE.length];
    ctx.strokeStyle = color;
    ctx.lineWidth = lw;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.name} ${d.score.toFixed(2)}`, w = ctx.measureText(text).width + 6;
    const ty = y1 - fs - 4 >= 0 ? y1 - fs - 4 : y1;
    ctx.fillStyle = color;
    ctx.fillRect(x1, ty, w, fs + 4);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x1 + 3, ty + 2);
  }
  const list = $("det-list");
  list.innerHTML = "";
  for (const d of shown.slice(0, 15)) {
    const li = document.createElement("li");
    li.innerHTML = "<i></i><span></span>";
    li.querySelector("i").style.background = PALETTE[d.label % PALETTE.length];
    li.querySelector("span").textContent = `${d.name} ${d.score.toFixed(3)}`;
    list.appendChild(li);
  }
  if (shown.length > 15) list.insertAdjacentHTML("beforeend", `<li class="more">+ ${shown.length - 15} more</li>`);
  const best = state.detections.length ? ` (best score ${state.detections[0].score.toFixed(3)})` : "";
  $("det-count").textContent = `${shown.length} of ${state.detections.length} detections with score ≥ ` +
    `${t.toFixed(2)}${best}`;
}

$("det-score").addEventListener("input", () => { updateThresh(); drawDetections(); });

// --- segmentation ---------------------------------------------------------------------------------------------
async function renderSegment(data) {
  state.segment = { layer: await loadImage(data.overlay), legend: data.legend };
  drawSegment();
  const ul = $("seg-legend");
  ul.innerHTML = "";
  for (const row of data.legend) {
    const li = document.createElement("li");
    li.innerHTML = `<i></i><span></span>`;
    li.querySelector("i").style.background = row.color;
    li.querySelector("span").textContent = `${row.class} ${(100 * row.share).toFixed(1)}%`;
    ul.appendChild(li);
  }
  if (data.classes > data.legend.length) {
    ul.insertAdjacentHTML("beforeend", `<li class="muted">+ ${data.classes - data.legend.length} more classes</li>`);
  }
}

function drawSegment() {
  if (!state.photo || !state.segment) return;
  const c = $("seg-canvas"), img = state.photo;
  c.width = img.width;
  c.height = img.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  ctx.globalAlpha = Number($("seg-alpha").value);
  ctx.drawImage(state.segment.layer, 0, 0, img.width, img.height);
  ctx.globalAlpha = 1;
}

$("seg-alpha").addEventListener("input", drawSegment);

// --- attention: one map per stage over the grey photo ---------------------------------------------------------
function inferno(v) {
  const x = Math.min(Math.max(v, 0), 1) * (INFERNO.length - 1), i = Math.min(Math.floor(x), INFERNO.length - 2);
  const f = x - i, a = INFERNO[i], b = INFERNO[i + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + f * (b[k] - a[k])));
}

const MODES = { sra: (s) => `SRA, R=${s.reduction}`, linear: () => "linear SRA, 7×7 pool", full: () => "no reduction" };

function renderAttention(data) {
  const box = $("attn-maps"), img = state.photo;
  box.innerHTML = "";
  const scale = Math.min(1, 360 / img.width), cw = Math.round(img.width * scale), ch = Math.round(img.height * scale);
  const [H, W] = data.input;
  for (const s of data.stages) {
    const [kh, kw] = s.keys, [ey, ex] = s.extent;
    const heat = document.createElement("canvas");  // the key grid, one pixel per key, coloured by weight
    heat.width = kw;
    heat.height = kh;
    const hctx = heat.getContext("2d"), pixels = hctx.createImageData(kw, kh);
    const span = Math.max(s.max - s.min, 1e-12);
    s.weights.forEach((w, i) => {
      const [r, g, b] = inferno((w - s.min) / span);
      pixels.data.set([r, g, b, 255], 4 * i);
    });
    hctx.putImageData(pixels, 0, 0);
    const fig = document.createElement("figure"), c = document.createElement("canvas");
    c.width = cw;
    c.height = ch;
    c.className = "attn";
    const ctx = c.getContext("2d");
    ctx.filter = "grayscale(1)";
    ctx.drawImage(img, 0, 0, cw, ch);
    ctx.filter = "none";
    ctx.imageSmoothingEnabled = true;  // bilinear, as AttentionMaps.upsampled
    ctx.globalAlpha = 0.65;
    ctx.drawImage(heat, 0, 0, (cw * ex) / W, (ch * ey) / H);
    ctx.globalAlpha = 1;
    cross(ctx, (data.query[1] / img.width) * cw, (data.query[0] / img.height) * ch, 7);
    fig.appendChild(c);
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<b>stage ${s.stage}</b>, block ${s.block}: ${s.queries[0]}×${s.queries[1]} queries → ` +
      `${kh}×${kw} keys (${MODES[s.mode](s)})<br>weights ${s.min.toFixed(3)}–${s.max.toFixed(3)} ` +
      `(uniform ${s.uniform.toFixed(3)})`;
    fig.appendChild(cap);
    box.appendChild(fig);
  }
  $("attention-hint").textContent = `Query (y, x) = (${Math.round(data.query[0])}, ${Math.round(data.query[1])}) ` +
    `of the photo, input ${H}×${W}; click elsewhere for another point.`;
}

// --- file input and drag and drop -----------------------------------------------------------------------------
$("file").addEventListener("change", (e) => { handleFile(e.target.files[0]); e.target.value = ""; });
const drop = $("drop");
for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => { e.preventDefault(); handleFile(e.dataTransfer.files[0]); });  // the zone too

init();
