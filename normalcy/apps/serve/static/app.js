// normalcy review page: upload images, show calibrated decisions, re-decide at any false-alarm rate client-side.
"use strict";

const $ = (sel) => document.querySelector(sel);
const ALPHA_MIN = 0.001, ALPHA_MAX = 0.5;
const IMAGE_EXT = /\.(png|jpe?g|bmp|tiff?|webp)$/i;
const PARALLEL_REQUESTS = 2;

const state = {
  model: null,
  alpha: 0.01,
  items: [],            // {id, file, name, url, status: pending|ok|error, result, error, card}
  filter: "all",
  sort: "score-desc",
  nextId: 0,
  detailIndex: -1,
};

// ---- calibrated decisions, recomputed in the browser (same rule as normalcy.calibrate) ------------------
function decide(score, alpha) {
  const cal = state.model.calibration;
  const n = cal.n;
  if (!n) return { p: null, flagged: false, severity: "normal" };
  let lo = 0, hi = n;   // first calibration score >= score (scores are sorted ascending)
  while (lo < hi) { const mid = (lo + hi) >> 1; if (cal.scores[mid] < score) lo = mid + 1; else hi = mid; }
  const p = (1 + (n - lo)) / (n + 1);
  const flagged = p <= alpha;
  let severity = "anomalous";
  if (p > cal.suspicious_factor * alpha) severity = "normal";
  else if (!flagged) severity = "suspicious";
  else if (cal.severe_threshold !== null && score >= cal.severe_threshold) severity = "severe";
  return { p, flagged, severity };
}

function scoreThreshold(alpha) {
  const s = state.model.calibration.scores.slice().reverse();  // descending
  const allowed = Math.floor(alpha * (s.length + 1) + 1e-9) - 1;
  if (allowed < 0) return Infinity;
  if (allowed >= s.length) return -Infinity;
  return s[allowed];
}

// ---- formatting ------------------------------------------------------------------------------------------
function pct(a) {
  const v = a * 100;
  if (v >= 10) return v.toFixed(0) + "%";
  if (v >= 1) return (Math.round(v * 10) / 10) + "%";
  return (Math.round(v * 100) / 100) + "%";
}
const fmtScore = (s) => (s === null || s === undefined ? "–" : Math.abs(s) >= 100 ? s.toFixed(1) : s.toPrecision(4));
const fmtP = (p) => (p === null || p === undefined ? "–" : p < 0.001 ? p.toExponential(1) : p.toFixed(3));
function fmtBytes(b) {
  return b >= 1048576 ? (b / 1048576).toFixed(b % 1048576 ? 1 : 0) + " MB" : Math.round(b / 1024) + " kB";
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---- alpha slider (log scale) ----------------------------------------------------------------------------
const sliderToAlpha = (v) => Math.pow(10, Math.log10(ALPHA_MIN) + (v / 1000) * (Math.log10(ALPHA_MAX) - Math.log10(ALPHA_MIN)));
const alphaToSlider = (a) => Math.round(1000 * (Math.log10(a) - Math.log10(ALPHA_MIN)) / (Math.log10(ALPHA_MAX) - Math.log10(ALPHA_MIN)));

function setAlpha(a, fromSlider) {
  state.alpha = Math.min(ALPHA_MAX, Math.max(ALPHA_MIN, a));
  if (!fromSlider) $("#alpha").value = alphaToSlider(state.alpha);
  $("#alpha-out").textContent = pct(state.alpha);
  document.querySelectorAll(".chip").forEach((c) => c.classList.toggle("active", Math.abs(+c.dataset.alpha - state.alpha) < 1e-9));
  updateAlphaHint();
  state.items.forEach(renderDecision);
  refresh();
}

function updateAlphaHint() {
  const hint = $("#alpha-hint");
  if (!state.model) return;
  const cal = state.model.calibration;
  hint.textContent = "";
  hint.classList.remove("warn");
  if (!cal.n) { hint.textContent = "This model has no calibration scores, so no image can be flagged."; return; }
  const t = scoreThreshold(state.alpha);
  if (!isFinite(t) && t > 0) {
    hint.append("Too strict for this model: with ", b(cal.n), " calibration scores the smallest reachable rate is ",
      b(pct(cal.min_reachable_alpha)), ". Nothing is flagged.");
    hint.classList.add("warn");
    return;
  }
  hint.append("Flags score > ", b(fmtScore(t)), " (p-value ≤ α): at most ", b(pct(state.alpha)),
    " of normal images flagged. Calibrated on ", b(cal.n), " normal scores.");
}
function b(text) { return el("b", "", String(text)); }

// ---- model info ------------------------------------------------------------------------------------------
async function loadModel() {
  try {
    const r = await fetch("/model");
    if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
    state.model = await r.json();
  } catch (e) {
    showBanner("Cannot reach the model: " + e.message);
    return;
  }
  const m = state.model;
  const chip = $("#model-chip");
  chip.textContent = "";
  chip.append(b(m.detector), " · " + (m.backbone.name || "?") + " · " + m.image_size + " px · " + m.calibration.n +
    " calibration scores");
  chip.title = `${m.model_file} · created ${m.created || "?"} · normalcy ${m.normalcy_version}`;
  const L = m.limits;
  $("#drop-hint").textContent = `PNG, JPEG, BMP, TIFF or WebP · up to ${fmtBytes(L.max_file_bytes)} and ` +
    `${Math.round(L.max_pixels / 1e6)} MP each`;
  setAlpha(m.default_alpha, false);
}

function showBanner(text) { const bn = $("#banner"); bn.textContent = text; bn.hidden = false; }

// ---- adding files and sending them -----------------------------------------------------------------------
function addFiles(fileList) {
  if (!state.model) { showBanner("The model is not loaded yet; try again in a moment."); return; }
  const all = [...fileList];
  const files = all.filter((f) => !f.name.startsWith(".") && (IMAGE_EXT.test(f.name) || f.type.startsWith("image/")));
  if (!files.length) { showBanner("No image files found (PNG, JPEG, BMP, TIFF or WebP)."); return; }
  $("#banner").hidden = true;
  const skipped = all.length - files.length;
  if (skipped) showBanner(`Skipped ${skipped} file${skipped > 1 ? "s" : ""} that are not images (by name); the server checks content.`);
  const L = state.model.limits;
  const fresh = [];
  for (const file of files) {
    const item = { id: state.nextId++, file, name: file.webkitRelativePath || file.name, url: URL.createObjectURL(file),
      status: "pending", result: null, error: "" };
    state.items.push(item);
    buildCard(item);
    if (file.size > L.max_file_bytes) {
      fail(item, `${fmtBytes(file.size)} is above the server's limit of ${fmtBytes(L.max_file_bytes)} per file`);
    } else fresh.push(item);
  }
  const batches = [];
  let cur = [], bytes = 0;
  const budget = L.max_request_bytes * 0.95 - 4096;
  for (const it of fresh) {
    if (cur.length && (cur.length >= L.max_files || bytes + it.file.size + 512 > budget)) { batches.push(cur); cur = []; bytes = 0; }
    cur.push(it); bytes += it.file.size + 512;
  }
  if (cur.length) batches.push(cur);
  runBatches(batches);
  refresh();
}

async function runBatches(batches) {
  const work = batches.slice();
  const worker = async () => { while (work.length) await sendBatch(work.shift()); };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_REQUESTS, work.length) }, worker));
}

async function sendBatch(batch, attempt = 0) {
  const form = new FormData();
  batch.forEach((it) => form.append("files", it.file, it.file.name));
  let r;
  try {
    // ask at the widest alpha the slider offers, so the server returns the defect mask and regions of every image
    // that any slider position could flag; the decisions themselves are recomputed here from the raw score
    r = await fetch(`/predict?alpha=${ALPHA_MAX}`, { method: "POST", body: form });
  } catch (e) {
    batch.forEach((it) => fail(it, "network error: " + e.message));
    return;
  }
  if (r.status === 503 && attempt < 20) {  // queue full: wait as told, then retry the same batch
    const wait = 1000 * (+(r.headers.get("Retry-After") || 1)) * (1 + Math.random());
    await new Promise((res) => setTimeout(res, wait));
    return sendBatch(batch, attempt + 1);
  }
  let body;
  try { body = await r.json(); } catch { body = { detail: r.statusText }; }
  if (!r.ok) {
    if (batch.length > 1 && (r.status === 413 || r.status === 415)) {  // one bad file: retry one by one
      for (const it of batch) await sendBatch([it]);
      return;
    }
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    batch.forEach((it) => fail(it, `HTTP ${r.status}: ${detail}`));
    return;
  }
  body.results.forEach((res, i) => {
    const it = batch[i];
    it.result = res;
    if (res.status === "ok") { it.status = "ok"; finish(it); } else fail(it, res.error);
  });
}

function fail(item, message) {
  item.status = "error";
  item.error = message;
  finish(item);
}

function finish(item) {
  renderCard(item);
  refresh();
  if (state.detailIndex >= 0 && visibleItems()[state.detailIndex] === item) openDetail(state.detailIndex);
}

// ---- cards -----------------------------------------------------------------------------------------------
function buildCard(item) {
  const card = el("article", "card sev-pending");
  card.tabIndex = 0;
  card.dataset.id = item.id;
  const thumb = el("div", "thumb");
  const ph = el("div", "placeholder");
  ph.append(el("div", "spinner"));
  thumb.append(ph);
  const meta = el("div", "meta");
  const titleRow = el("div", "title-row");
  titleRow.append(el("div", "name", item.name), el("span", "badge pending", "scoring"));
  const nums = el("div", "nums");
  nums.append(el("span", "", "\u00a0"));
  meta.append(titleRow, nums);
  card.append(thumb, meta);
  card.title = item.name;
  card.addEventListener("click", () => openDetail(visibleItems().indexOf(item)));
  card.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); card.click(); } });
  item.card = card;
  $("#gallery").append(card);
}

function imageStack(item, opts = {}) {
  const res = item.result;
  const stack = el("div", "stack");
  const orig = el("img", "orig");
  orig.alt = item.name;
  orig.src = item.url;
  stack.append(orig);
  if (res && res.heatmap) {
    const heat = el("img", "heat");
    heat.alt = "";
    heat.src = res.heatmap;
    stack.append(heat);
    orig.addEventListener("error", () => { orig.src = res.overlay; heat.remove(); }, { once: true });  // e.g. TIFF
  }
  if (opts.mask && res && res.mask) {
    const mk = el("img", "maskl");
    mk.alt = "";
    mk.src = res.mask;
    stack.append(mk);
  }
  if (res && res.regions && res.regions.length && opts.boxes !== false) {
    const boxes = el("div", "boxes");
    for (const rg of res.regions.slice(0, 20)) {
      const bx = el("div", "box");
      const [x0, y0, x1, y1] = rg.box;
      Object.assign(bx.style, { left: (100 * x0 / res.width) + "%", top: (100 * y0 / res.height) + "%",
        width: (100 * (x1 - x0) / res.width) + "%", height: (100 * (y1 - y0) / res.height) + "%" });
      boxes.append(bx);
    }
    stack.append(boxes);
  }
  return stack;
}

function fitStack(stack, w, h, boxW, boxH) {
  // letterbox the image inside the frame so the heat map and region boxes stay aligned with it
  const r = w / h, R = boxW / boxH;
  const sw = r >= R ? 100 : 100 * r / R, sh = r >= R ? 100 * R / r : 100;
  Object.assign(stack.style, { width: sw + "%", height: sh + "%", left: (100 - sw) / 2 + "%", top: (100 - sh) / 2 + "%" });
}

function renderCard(item) {
  const card = item.card;
  const thumb = card.querySelector(".thumb");
  thumb.textContent = "";
  if (item.status === "ok") {
    const stack = imageStack(item);
    fitStack(stack, item.result.width, item.result.height, 4, 3);
    thumb.append(stack);
  } else {
    const ph = el("div", "placeholder", "could not score");
    thumb.append(ph);
  }
  renderDecision(item);
}

function renderDecision(item) {
  const card = item.card;
  if (!card || item.status === "pending") return;
  const nums = card.querySelector(".nums");
  const badge = card.querySelector(".badge");
  nums.textContent = "";
  if (item.status === "error") {
    card.className = "card sev-error";
    badge.className = "badge error";
    badge.textContent = "error";
    nums.append(el("span", "err-text", item.error));
    nums.title = item.error;
    return;
  }
  const d = decide(item.result.score, state.alpha);
  item.decision = d;
  card.className = "card sev-" + d.severity;
  badge.className = "badge " + d.severity;
  badge.textContent = d.severity;
  const sc = el("span", "");
  sc.append("score ", el("b", "score", fmtScore(item.result.score)));
  const pv = el("span", "");
  pv.append("p ", el("b", "pval", fmtP(d.p)));
  nums.append(sc, pv);
  card.querySelectorAll(".box").forEach((bx) => { bx.hidden = !d.flagged; });
}

// ---- gallery order, filters, stats -----------------------------------------------------------------------
function visibleItems() {
  const f = state.filter;
  const keep = state.items.filter((it) => {
    if (f === "all") return true;
    if (f === "error") return it.status === "error";
    if (it.status !== "ok") return false;
    return f === "flagged" ? it.decision.flagged : !it.decision.flagged;
  });
  const score = (it) => (it.status === "ok" ? it.result.score : null);
  const cmp = {
    "score-desc": (a, b2) => (score(b2) ?? -Infinity) - (score(a) ?? -Infinity) || a.id - b2.id,
    "score-asc": (a, b2) => (score(a) ?? Infinity) - (score(b2) ?? Infinity) || a.id - b2.id,
    name: (a, b2) => a.name.localeCompare(b2.name, undefined, { numeric: true }),
    order: (a, b2) => a.id - b2.id,
  }[state.sort];
  return keep.sort(cmp);
}

function refresh() {
  const gallery = $("#gallery");
  const vis = visibleItems();
  const visible = new Set(vis);
  for (const it of state.items) it.card.hidden = !visible.has(it);
  vis.forEach((it) => gallery.append(it.card));  // re-append in order (moves existing nodes)
  const ok = state.items.filter((it) => it.status === "ok");
  $("#n-total").textContent = state.items.length;
  $("#n-flagged").textContent = ok.filter((it) => it.decision && it.decision.flagged).length;
  $("#n-suspicious").textContent = ok.filter((it) => it.decision && it.decision.severity === "suspicious").length;
  $("#n-error").textContent = state.items.filter((it) => it.status === "error").length;
  $("#empty").hidden = state.items.length > 0;
  $("#export").disabled = !state.items.some((it) => it.status !== "pending");
  $("#clear").disabled = !state.items.length;
  const pending = state.items.filter((it) => it.status === "pending").length;
  const prog = $("#progress");
  if (pending) {
    const total = state.items.length;
    prog.hidden = false;
    $("#progress-fill").style.width = (100 * (total - pending) / total) + "%";
    $("#progress-text").textContent = `${total - pending} / ${total} scored`;
  } else prog.hidden = true;
}

// ---- detail view -----------------------------------------------------------------------------------------
function openDetail(index) {
  const vis = visibleItems();
  if (index < 0 || index >= vis.length) return;
  state.detailIndex = index;
  const item = vis[index];
  const dlg = $("#detail");
  $("#detail-name").textContent = item.name;
  const view = $(".detail-view");
  view.textContent = "";
  if (item.status !== "ok") view.append(el("p", "placeholder", item.status === "pending" ? "scoring…" : "could not score this image"));
  else {
    const stack = imageStack(item, { mask: $("#layer-mask").checked, boxes: $("#layer-boxes").checked });
    view.append(stack);
    const ratio = item.result.width / item.result.height;
    Object.assign(stack.style, { aspectRatio: String(ratio), width: `min(100%, calc(68vh * ${ratio}))` });
    stack.querySelector(".heat")?.toggleAttribute("hidden", !$("#layer-heat").checked);
    if (!item.decision.flagged) stack.querySelectorAll(".box").forEach((bx) => { bx.hidden = true; });
  }
  const dl = $("#detail-fields");
  dl.textContent = "";
  const add = (k, v) => { dl.append(el("dt", "", k)); const dd = el("dd"); dd.append(v); dl.append(dd); };
  if (item.status === "ok") {
    const r = item.result, d = item.decision;
    add("decision", el("span", "badge " + d.severity, d.flagged ? "flagged · " + d.severity : d.severity));
    add("score", fmtScore(r.score));
    add("p-value", fmtP(d.p));
    add("α", pct(state.alpha));
    add("size", `${r.width} × ${r.height} ${r.format}`);
    add("defect area", d.flagged && r.defect_area ? `${r.defect_area} px` : "–");
    const regions = d.flagged ? r.regions : [];
    add("regions", regions.length ? regions.slice(0, 5).map((g) => `[${g.box.join(", ")}] ${g.area} px`).join("\n") : "–");
  } else {
    add("status", item.status);
    add("error", item.error || "–");
  }
  const links = $("#detail-links");
  links.textContent = "";
  if (item.result && item.result.overlay) {
    const stem = item.file.name.replace(/\.[^.]+$/, "");
    for (const [label, key] of [["overlay PNG", "overlay"], ["mask PNG", "mask"]]) {
      const a = el("a", "", "Download " + label);
      a.href = item.result[key];
      a.download = `${stem}_${key}.png`;
      links.append(a);
    }
  }
  if (!dlg.open) dlg.showModal();
}

// ---- CSV export (client-side) ----------------------------------------------------------------------------
function csvCell(v) {
  let s = v === null || v === undefined ? "" : String(v);
  if (/^[=+\-@\t\r]/.test(s) && isNaN(+s)) s = "'" + s;  // keep spreadsheets from running formulas from file names
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function exportCsv() {
  const head = ["filename", "status", "score", "p_value", "is_anomaly", "severity", "alpha", "score_threshold",
    "defect_area", "boxes", "width", "height", "error"];
  const thr = scoreThreshold(state.alpha);
  const rows = [head];
  const items = state.items.filter((it) => it.status !== "pending").sort((a, b2) => a.id - b2.id);
  for (const it of items) {
    const r = it.result || {};
    const d = it.status === "ok" ? it.decision : null;
    rows.push([it.name, it.status, r.score ?? "", d ? d.p : "", d ? d.flagged : "", d ? d.severity : "", state.alpha,
      isFinite(thr) ? thr : "", d && d.flagged ? r.defect_area : "", d && d.flagged && r.regions ? JSON.stringify(r.regions.map((g) => g.box)) : "",
      r.width ?? "", r.height ?? "", it.error]);
  }
  const text = rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  const a = el("a");
  a.href = url;
  a.download = `normalcy-decisions-alpha${state.alpha.toPrecision(2)}.csv`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

// ---- wiring ----------------------------------------------------------------------------------------------
function wire() {
  $("#btn-files").addEventListener("click", () => $("#pick-files").click());
  $("#btn-folder").addEventListener("click", () => $("#pick-folder").click());
  for (const id of ["#pick-files", "#pick-folder"]) {
    $(id).addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  }
  $("#drop").addEventListener("keydown", (e) => { if (e.key === "Enter") $("#pick-files").click(); });
  let depth = 0;
  const overlay = $("#drop-overlay");
  window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; overlay.hidden = false; });
  window.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; overlay.hidden = true; } });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", async (e) => {
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    addFiles(await droppedFiles(e.dataTransfer));
  });
  $("#alpha").addEventListener("input", (e) => setAlpha(sliderToAlpha(+e.target.value), true));
  document.querySelectorAll(".chip").forEach((c) => c.addEventListener("click", () => setAlpha(+c.dataset.alpha, false)));
  $("#opacity").addEventListener("input", (e) => {
    document.documentElement.style.setProperty("--heat-opacity", e.target.value / 100);
    $("#opacity-out").textContent = e.target.value + "%";
  });
  $("#sort").addEventListener("change", (e) => { state.sort = e.target.value; refresh(); });
  document.querySelectorAll(".seg").forEach((s) => s.addEventListener("click", () => {
    document.querySelectorAll(".seg").forEach((x) => x.classList.toggle("active", x === s));
    state.filter = s.dataset.filter;
    refresh();
  }));
  $("#export").addEventListener("click", exportCsv);
  $("#clear").addEventListener("click", () => {
    state.items.forEach((it) => { URL.revokeObjectURL(it.url); it.card.remove(); });
    state.items = [];
    refresh();
  });
  const dlg = $("#detail");
  $("#detail-close").addEventListener("click", () => dlg.close());
  $("#detail-prev").addEventListener("click", () => openDetail(state.detailIndex - 1));
  $("#detail-next").addEventListener("click", () => openDetail(state.detailIndex + 1));
  dlg.addEventListener("close", () => { state.detailIndex = -1; });
  dlg.addEventListener("click", (e) => { if (e.target === dlg) dlg.close(); });
  dlg.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") openDetail(state.detailIndex - 1);
    if (e.key === "ArrowRight") openDetail(state.detailIndex + 1);
  });
  for (const id of ["#layer-heat", "#layer-boxes", "#layer-mask"]) {
    $(id).addEventListener("change", () => openDetail(state.detailIndex));
  }
}

async function droppedFiles(dt) {
  // folders dropped onto the page: walk them with the entries API; plain files otherwise
  const entries = [...dt.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.some((e) => e.isDirectory)) return [...dt.files];
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) { out.push(await new Promise((res, rej) => entry.file(res, rej))); return; }
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const child of batch) await walk(child);
    }
  };
  for (const e of entries) await walk(e);
  return out;
}

wire();
loadModel();
