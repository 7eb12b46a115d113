// diffusio studio: plain JS over the JSON endpoints and server-sent events of diffusio.app.ui.server.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { info: null, ckpt: null, shape: null, job: null, mask: null, maskUpload: null, sourcePng: null };
// timings read by the browser tests (performance.now() milliseconds)
window.studio = { times: {}, events: [], lastDone: null, lastCancelled: null };

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = !msg;
}

async function api(method, url, body) {
  const res = await fetch(url, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) {
    const msg = data.error || (data.detail && JSON.stringify(data.detail)) || `HTTP ${res.status}`;
    showError(`${res.status}: ${msg}`);
    throw new Error(msg);
  }
  showError("");
  return data;
}

function numbers(text) {
  return text.split(/[\s,]+/).filter((s) => s.length).map(Number);
}

async function loadInfo() {
  const info = await api("GET", "/api/info");
  state.info = info;
  $("ckpt").innerHTML = info.checkpoints.map((c) => `<option>${c}</option>`).join("");
  $("solver").innerHTML = `<option value="auto" title="autotune: the solver, grid and options measured best for a budget of model calls">auto (autotune)</option>` +
    info.solvers.map((s) => `<option value="${s.name}" title="${s.summary}">${s.name}</option>`).join("");
  $("solver").value = "heun";
  $("grid-names").innerHTML = info.grids.map((g) => `<option value="${g}">`).join("");
  $("strategy").innerHTML = info.strategies.map((s) => `<option>${s}</option>`).join("");
  $("strategy").value = "best_of_n";
  $("verifier").innerHTML = info.verifiers.map((v) => `<option>${v}</option>`).join("");
  $("search-solver").innerHTML += info.solvers.filter((s) => s.name !== "dpm_adaptive").map((s) => `<option>${s.name}</option>`).join("");
  $("nfe").max = info.max_autotune_nfe;
  $("method").innerHTML = info.methods.map((m) => `<option value="${m.name}" title="${m.summary}">${m.name}</option>`).join("");
  if (!info.checkpoints.length) showError(`no checkpoints under ${info.root}: train one with \`diffusio train moons\``);
  else await selectCheckpoint();
  await loadGallery();
}

async function selectCheckpoint() {
  state.ckpt = $("ckpt").value;
  const d = await api("GET", `/api/checkpoint?path=${encodeURIComponent(state.ckpt)}`);
  state.shape = d.data_shape;
  $("ckpt-info").textContent = `${d.family}, data ${JSON.stringify(d.data_shape)}` + (d.num_classes ? `, ${d.num_classes} classes` : "");
  $("inpaint-panel").hidden = !d.images;
  // named grids, then the searched grids saved for this model (diffusio tune --save NAME)
  $("grid-names").innerHTML = state.info.grids.concat(d.searched_grids.map((g) => `saved:${g}`)).map((g) => `<option value="${g}">`).join("");
  $("verifier").value = d.data && d.data.name === "digits" ? "classifier" : "self";
  if (d.images) { resetMask(); await loadSource(); }
}

function autoMode() {
  const auto = $("solver").value === "auto";
  $("nfe-label").hidden = !auto;
  $("steps").disabled = auto;
  $("grid").disabled = auto;
}

function sampleParams() {
  const p = {
    ckpt: state.ckpt,
    solver: $("solver").value,
    steps: Number($("steps").value),
    scale: Number($("scale").value),
    batch: Number($("batch").value),
    preview_every: Number($("preview-every").value),
    seed: $("random-seed").checked ? "random" : Number($("seed").value),
  };
  if (p.solver === "auto") { p.nfe = Number($("nfe").value); delete p.steps; }
  else if ($("grid").value.trim()) p.grid = $("grid").value.trim();
  if ($("label").value !== "") p.label = Number($("label").value);
  return p;
}

function setRunning(on) {
  $("sample-btn").disabled = on;
  $("inpaint-btn").disabled = on;
  $("compare-btn").disabled = on;
  $("search-btn").disabled = on;
  $("cancel-btn").disabled = !on;
}

function follow(jobId, handlers) {
  state.job = jobId;
  setRunning(true);
  const es = new EventSource(`/api/jobs/${jobId}/events`);
  const on = (name, fn) => es.addEventListener(name, (e) => {
    const data = JSON.parse(e.data);
    window.studio.events.push({ event: name, at: performance.now(), step: data.step });
    fn(data);
  });
  on("progress", (d) => {
    if (window.studio.times.firstPreview === undefined) window.studio.times.firstPreview = performance.now();
    window.studio.times.lastPreview = performance.now();
    if (d.steps) { $("progress").max = d.steps; $("progress").value = d.step; } else $("progress").removeAttribute("value");
    const what = d.phase ? `${d.phase}: ${d.step} model calls` : `step ${d.step} / ${d.steps}`;
    $("status").textContent = what + (d.step_seconds ? ` (${(1000 * d.step_seconds).toFixed(1)} ms/call)` : "");
    (handlers.progress || (() => {}))(d);
  });
  on("status", (d) => { $("status").textContent = d.message; });
  on("done", (d) => { window.studio.times.done = performance.now(); window.studio.lastDone = d; handlers.done(d); loadGallery(); });
  on("cancelled", (d) => {
    window.studio.times.cancelled = performance.now();
    window.studio.lastCancelled = d;
    $("status").textContent = `cancelled after step ${d.step}`;
    if (d.state) (handlers.cancelled || (() => {}))(d);
  });
  on("error", (d) => { showError(`${d.status}: ${d.message}`); $("status").textContent = "failed"; });
  es.addEventListener("end", () => { es.close(); setRunning(false); state.job = null; });
}

async function runSample(params) {
  window.studio.times = { click: performance.now() };
  window.studio.events = [];
  window.studio.lastDone = null;
  window.studio.lastCancelled = null;
  $("status").textContent = "starting";
  let r;
  try { r = await api("POST", "/api/sample", params || sampleParams()); } catch (e) { $("status").textContent = "refused"; return; }
  if (r.params && r.params.seed !== undefined) $("seed").value = r.params.seed;
  follow(r.job, {
    progress: (d) => { $("preview").src = d.preview; $("preview-step").textContent = d.phase ? `(${d.phase})` : `step ${d.step}`; },
    done: (d) => {
      $("result").src = d.image;
      $("result-caption").textContent = describeSample(d.params) + `, ${d.nfe} calls, seed ${d.params.seed}`;
      $("status").textContent = `done in ${d.sampling_seconds.toFixed(2)} s`;
    },
    cancelled: (d) => { $("result").src = d.state; $("result-caption").textContent = `state when cancelled (step ${d.step})`; },
  });
}

function describeSample(p) {
  if (p.solver !== "auto" || !p.plan) return `${p.solver}, ${p.steps} steps`;
  return `auto (${p.nfe} calls): ${p.plan.solver}, ${p.plan.steps} steps on its ${p.plan.grid_source || "tuned"} grid`;
}

async function cancelJob() {
  if (!state.job) return;
  window.studio.times.cancelClick = performance.now();
  await api("POST", `/api/jobs/${state.job}/cancel`);
}

// ------------------------------------------------------------------ inpainting canvas
function resetMask() {
  const [, h, w] = state.shape;
  state.mask = new Uint8Array(h * w);
  state.maskUpload = null;
  drawCanvas();
}

async function loadSource() {
  state.sourcePng = null;
  const d = await api("GET", `/api/source?ckpt=${encodeURIComponent(state.ckpt)}&index=${Number($("source-index").value)}`);
  state.sourceImage = await imageOf(d.image);
  drawCanvas();
}

function imageOf(src) {
  return new Promise((resolve, reject) => {
    const im = new Image();
    im.onload = () => resolve(im);
    im.onerror = reject;
    im.src = src;
  });
}

function fileToDataURL(file) {
  return new Promise((resolve) => {
    const fr = new FileReader();
    fr.onload = () => resolve(fr.result);
    fr.readAsDataURL(file);
  });
}

function drawCanvas() {
  const c = $("mask-canvas");
  const ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, c.width, c.height);
  if (state.sourceImage) {
    // the source PNG is a 1-image grid with a 1 px white border; crop it
    const im = state.sourceImage;
    const pad = im.width > state.shape[2] ? 1 : 0;
    ctx.drawImage(im, pad, pad, state.shape[2], state.shape[1], 0, 0, c.width, c.height);
  }
  if (!state.mask) return;
  const [, h, w] = state.shape;
  ctx.fillStyle = "rgba(255, 40, 40, 0.55)";
  for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
    if (state.mask[i * w + j]) ctx.fillRect(j * c.width / w, i * c.height / h, c.width / w, c.height / h);
  }
}

function paintAt(ev) {
  const c = $("mask-canvas");
  const r = c.getBoundingClientRect();
  const [, h, w] = state.shape;
  const j = Math.floor((ev.clientX - r.left) / r.width * w);
  const i = Math.floor((ev.clientY - r.top) / r.height * h);
  const s = Number($("brush-size").value) - 1;
  const val = document.querySelector("input[name=tool]:checked").value === "brush" ? 1 : 0;
  for (let a = i - s; a <= i + s; a++) for (let b = j - s; b <= j + s; b++) {
    if (a >= 0 && a < h && b >= 0 && b < w) state.mask[a * w + b] = val;
  }
  state.maskUpload = null;
  drawCanvas();
}

function maskDataURL() {
  if (state.maskUpload) return state.maskUpload;
  const [, h, w] = state.shape;
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let k = 0; k < h * w; k++) {
    const v = state.mask[k] ? 255 : 0;
    img.data.set([v, v, v, 255], 4 * k);
  }
  ctx.putImageData(img, 0, 0);
  return c.toDataURL("image/png");
}

async function uploadMask(file) {
  const url = await fileToDataURL(file);
  const im = await imageOf(url);
  const [, h, w] = state.shape;
  if (im.width === w && im.height === h) {
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const ctx = c.getContext("2d");
    ctx.drawImage(im, 0, 0);
    const d = ctx.getImageData(0, 0, w, h).data;
    for (let k = 0; k < h * w; k++) state.mask[k] = d[4 * k] > 127 ? 1 : 0;
    drawCanvas();
  }
  state.maskUpload = url; // sent as uploaded: the server checks its size
}

async function runInpaint() {
  window.studio.times = { click: performance.now() };
  window.studio.events = [];
  window.studio.lastDone = null;
  const p = {
    ckpt: state.ckpt,
    method: $("method").value,
    steps: Number($("inpaint-steps").value),
    scale: Number($("inpaint-scale").value),
    seed: Number($("inpaint-seed").value),
    keep_known: $("keep-known").checked,
    preview_every: 5,
    mask: maskDataURL(),
    source: state.sourcePng ? { png: state.sourcePng } : { data: Number($("source-index").value) },
  };
  let r;
  try { r = await api("POST", "/api/inpaint", p); } catch (e) { return; }
  follow(r.job, {
    progress: (d) => { $("inpaint-result").src = d.preview; },
    done: (d) => {
      $("inpaint-result").src = d.result;
      $("inpaint-caption").textContent = `${d.params.method}, ${d.nfe} calls, seed ${d.params.seed}`;
      $("status").textContent = `inpainted in ${d.sampling_seconds.toFixed(2)} s`;
    },
    cancelled: (d) => { $("inpaint-result").src = d.state; },
  });
}

// ------------------------------------------------------------------ comparison and gallery
async function runCompare() {
  window.studio.times = { click: performance.now() };
  window.studio.events = [];
  const axis = $("compare-axis").value;
  const raw = $("compare-values").value;
  const values = axis === "steps" ? numbers(raw) : raw.split(/[\s,]+/).filter((s) => s);
  const p = { ...sampleParams(), seeds: numbers($("compare-seeds").value), axis, values };
  delete p.seed;
  let r;
  try { r = await api("POST", "/api/compare", p); } catch (e) { return; }
  $("compare-grid").innerHTML = "";
  follow(r.job, {
    done: (d) => {
      const head = `<tr><th></th>${d.values.map((v) => `<th>${d.axis} ${v}</th>`).join("")}</tr>`;
      const rows = d.grid.map((row, i) => `<tr><th>seed ${d.seeds[i]}</th>${row.map((c) => `<td><img src="${c.image}" title="${c.nfe} calls"></td>`).join("")}</tr>`);
      $("compare-grid").innerHTML = head + rows.join("");
      $("status").textContent = `compared in ${d.sampling_seconds.toFixed(2)} s`;
    },
  });
}

// ------------------------------------------------------------------ search
function searchParams() {
  const p = {
    ckpt: state.ckpt,
    strategy: $("strategy").value,
    verifier: $("verifier").value,
    budget: Number($("search-budget").value),
    n: Number($("search-n").value),
    steps: Number($("search-steps").value),
    seed: Number($("search-seed").value),
  };
  if ($("search-solver").value) p.solver = $("search-solver").value;
  if ($("search-label").value !== "") p.label = Number($("search-label").value);
  return p;
}

function drawCurve(history) {
  // best verifier score (mean over outputs) against model calls per output, as an SVG polyline
  const svg = $("search-curve");
  if (!history.length) { svg.innerHTML = ""; return; }
  const xs = history.map((h) => h[0]), ys = history.map((h) => h[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const px = (x) => 30 + 216 * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
  const py = (y) => 226 - 206 * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
  const pts = history.map((h) => `${px(h[0]).toFixed(1)},${py(h[1]).toFixed(1)}`).join(" ");
  svg.innerHTML = `<polyline points="${pts}"></polyline>` +
    `<text x="30" y="248">${x0.toFixed(0)}</text><text x="246" y="248" text-anchor="end">${x1.toFixed(0)} calls</text>` +
    `<text x="2" y="16">${y1.toPrecision(3)}</text><text x="2" y="232">${y0.toPrecision(3)}</text>`;
}

function showSearch(d) {
  $("search-result").src = d.image;
  $("search-caption").textContent = `${d.params.strategy}, ${d.params.verifier} verifier: mean best score ` +
    `${d.summary.score_mean.toPrecision(3)}, ${d.nfe.toFixed(0)} calls per output`;
  $("search-status").textContent = `searched in ${d.sampling_seconds.toFixed(2)} s`;
  $("status").textContent = $("search-status").textContent;
  drawCurve(d.history);
}

async function runSearch() {
  window.studio.times = { click: performance.now() };
  window.studio.events = [];
  window.studio.lastDone = null;
  $("search-status").textContent = "starting";
  let r;
  try { r = await api("POST", "/api/search", searchParams()); } catch (e) { $("search-status").textContent = "refused"; return; }
  if (r.params && r.params.seed !== undefined) $("search-seed").value = r.params.seed;
  follow(r.job, {
    progress: (d) => { $("search-result").src = d.preview; $("search-status").textContent = `${d.step} model calls`; },
    done: showSearch,
    cancelled: (d) => { $("search-status").textContent = `cancelled after ${d.step} model calls`; },
  });
}

async function loadGallery() {
  const items = await api("GET", "/api/gallery");
  $("gallery").innerHTML = items.map((it) => {
    const p = it.params;
    const what = p.kind === "sample" ? `${describeSample(p)}, seed ${p.seed}`
      : p.kind === "search" ? `search ${p.strategy} (${p.budget} calls), seed ${p.seed}` : `${p.kind} ${p.method}, seed ${p.seed}`;
    return `<div class="item"><a href="${it.image}" target="_blank"><img src="${it.image}"></a><br>${what}<br>` +
      `<button class="rerun" data-name="${it.name}">re-run from image</button></div>`;
  }).join("");
  for (const b of document.querySelectorAll(".rerun")) b.onclick = () => rerun({ name: b.dataset.name });
}

async function rerun(body) {
  window.studio.times = { click: performance.now() };
  window.studio.events = [];
  window.studio.lastDone = null;
  let r;
  try { r = await api("POST", "/api/rerun", body); } catch (e) { return; }
  const p = r.params;
  if (p.kind === "sample") {
    $("solver").value = p.solver; $("steps").value = p.steps; $("seed").value = p.seed; $("batch").value = p.batch;
    $("scale").value = p.scale; $("grid").value = p.grid || "";
    if (p.solver === "auto") $("nfe").value = p.nfe;
    autoMode();
  }
  if (p.kind === "search") {
    for (const [k, id] of [["strategy", "strategy"], ["verifier", "verifier"], ["budget", "search-budget"], ["n", "search-n"],
      ["steps", "search-steps"], ["seed", "search-seed"], ["solver", "search-solver"]]) $(id).value = p[k];
    $("search-label").value = p.label === null || p.label === undefined ? "" : p.label;
  }
  if (p.kind === "search") { follow(r.job, { progress: (d) => { $("search-result").src = d.preview; }, done: showSearch }); return; }
  const target = p.kind === "sample" ? ["result", "result-caption"] : ["inpaint-result", "inpaint-caption"];
  follow(r.job, {
    progress: (d) => { if (p.kind === "sample" && d.preview) $("preview").src = d.preview; },
    done: (d) => {
      $(target[0]).src = d.result || d.image;
      $(target[1]).textContent = `re-run of ${body.name || "uploaded PNG"}`;
      $("status").textContent = `re-run done in ${d.sampling_seconds.toFixed(2)} s`;
    },
  });
}

// ------------------------------------------------------------------ wiring
window.addEventListener("DOMContentLoaded", () => {
  $("ckpt").onchange = () => selectCheckpoint().catch(() => {});
  $("sample-btn").onclick = () => runSample();
  $("cancel-btn").onclick = () => cancelJob();
  $("inpaint-btn").onclick = () => runInpaint();
  $("compare-btn").onclick = () => runCompare();
  $("search-btn").onclick = () => runSearch();
  $("solver").onchange = () => autoMode();
  $("clear-mask").onclick = () => resetMask();
  $("source-index").onchange = () => loadSource().catch(() => {});
  $("source-upload").onchange = async (e) => {
    state.sourcePng = await fileToDataURL(e.target.files[0]);
    state.sourceImage = await imageOf(state.sourcePng);
    drawCanvas();
  };
  $("mask-upload").onchange = (e) => uploadMask(e.target.files[0]);
  $("rerun-upload").onchange = async (e) => rerun({ png: await fileToDataURL(e.target.files[0]) });
  const c = $("mask-canvas");
  let down = false;
  c.addEventListener("pointerdown", (e) => { down = true; paintAt(e); });
  c.addEventListener("pointermove", (e) => { if (down) paintAt(e); });
  window.addEventListener("pointerup", () => { down = false; });
  loadInfo().then(() => { document.body.dataset.ready = "1"; }).catch((e) => showError(String(e)));
});
