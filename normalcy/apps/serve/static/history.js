// normalcy review page, part 2: the inspection history (filter, page, confirm/overrule, CSV) and the drift view.
// Uses the helpers and state of app.js ($, el, b, fmtScore, fmtP, pct, state), loaded before this file.
"use strict";

const hist = { before: null, stack: [], page: null, loadedModels: false, who: "" };
const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE_SIZE = 50;

// ---- views -----------------------------------------------------------------------------------------------
function showView(name) {
  if (!["review", "history", "drift"].includes(name)) name = "review";
  document.querySelector("main.layout").hidden = name !== "review";
  $("#history-view").hidden = name !== "history";
  $("#drift-view").hidden = name !== "drift";
  document.querySelectorAll(".view-tab").forEach((t) => t.classList.toggle("active", t.dataset.view === name));
  if (name === "history") { hist.stack = []; hist.before = null; loadHistory(); }
  if (name === "drift") loadDrift();
}

// ---- history ---------------------------------------------------------------------------------------------
function historyParams() {
  const q = new URLSearchParams();
  const since = $("#h-since").value, until = $("#h-until").value;
  if (since) q.set("since", new Date(since).toISOString());
  if (until) q.set("until", new Date(until).toISOString());
  for (const [id, key] of [["#h-decision", "decision"], ["#h-severity", "severity"], ["#h-model", "model_id"]]) {
    if ($(id).value) q.set(key, $(id).value);
  }
  if ($("#h-mode").value === "alpha" && state.model) q.set("alpha", String(state.alpha));
  return q;
}

function decidedAt(row) {
  // the decision shown: from the stored p-value at the page's alpha (same rule as the server), or as answered
  if (row.status !== "ok") return { flagged: false, severity: "error" };
  if ($("#h-mode").value !== "alpha") return { flagged: !!row.is_anomaly, severity: row.severity || "normal" };
  const a = state.alpha, p = row.p_value;
  const factor = state.model ? state.model.calibration.suspicious_factor : 5;
  if (p > factor * a) return { flagged: false, severity: "normal" };
  if (p > a) return { flagged: false, severity: "suspicious" };
  const severe = row.severe_threshold !== null && row.score >= row.severe_threshold;
  return { flagged: true, severity: severe ? "severe" : "anomalous" };
}

async function modelReady() {
  // the page's alpha and calibration come from /model (app.js); wait briefly for it on a deep link
  for (let i = 0; i < 100 && !state.model; i++) await new Promise((res) => setTimeout(res, 100));
}

async function loadHistory() {
  await modelReady();
  const q = historyParams();
  $("#h-export").href = "/history.csv?" + q.toString();
  q.set("limit", String(PAGE_SIZE));
  if (hist.before !== null) q.set("before", String(hist.before));
  const status = $("#h-status");
  let r;
  try {
    r = await fetch("/history?" + q.toString());
  } catch (e) {
    status.textContent = "Cannot reach the server: " + e.message;
    return;
  }
  const body = await r.json().catch(() => ({ detail: r.statusText }));
  if (!r.ok) {
    status.textContent = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    status.classList.add("warn");
    $("#h-rows").textContent = "";
    return;
  }
  status.classList.remove("warn");
  hist.page = body;
  if (!hist.loadedModels) loadModels(body.model_id);
  const start = hist.stack.length * PAGE_SIZE;
  status.textContent = body.total ? "" : "No stored decisions match these filters.";
  $("#h-range").textContent = body.total ? `${start + 1}–${start + body.items.length} of ${body.total}` : "";
  $("#h-newer").disabled = !hist.stack.length;
  $("#h-older").disabled = body.next_before === null;
  renderRows(body.items);
}

async function loadModels(current) {
  const r = await fetch("/history/models");
  if (!r.ok) return;
  hist.loadedModels = true;
  const sel = $("#h-model");
  for (const m of await r.json()) {
    const o = el("option", "", `${m.model_name} ${m.model_id.slice(0, 10)}… (${m.count})` + (m.model_id === current ? " · serving" : ""));
    o.value = m.model_id;
    sel.append(o);
  }
}

function fmtTime(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "").replace("Z", "") : "–";
}

function renderRows(items) {
  const tbody = $("#h-rows");
  tbody.textContent = "";
  for (const row of items) {
    const d = decidedAt(row);
    const tr = el("tr", "sev-" + d.severity);
    const tdThumb = el("td", "h-thumb");
    if (row.thumb_path) {
      const img = el("img");
      img.loading = "lazy";
      img.alt = "";
      img.src = `/history/${row.id}/thumb`;
      tdThumb.append(img);
    }
    const name = el("td", "h-name", row.filename);
    name.title = `${row.filename}\nrequest ${row.request_id}\ninput sha256 ${row.input_sha256 || "–"}\n` +
      `model ${row.model_name} ${row.model_id}` + (row.status === "error" ? "\n" + row.error : "");
    const dec = el("td");
    dec.append(el("span", "badge " + d.severity, row.status === "error" ? "error" : d.flagged ? "flagged · " + d.severity : d.severity));
    const lab = el("td", "h-label");
    if (row.label) {
      lab.append(el("span", "badge " + (row.label.label === "anomaly" ? "anomalous" : "normal"), row.label.label));
      lab.append(el("small", "", ` ${row.label.verdict} · ${row.label.who} · ${fmtTime(row.label.at)}`));
    } else lab.append(el("small", "muted", "–"));
    const act = el("td", "h-actions");
    if (row.status === "ok") {
      const confirm = el("button", "btn small", "✓ Confirm");
      confirm.type = "button";
      confirm.title = `Label as ${d.flagged ? "anomaly" : "normal"} (agree with the decision shown)`;
      confirm.addEventListener("click", () => label(row, d.flagged ? "anomaly" : "normal", d.flagged));
      const over = el("button", "btn small", "✗ Overrule");
      over.type = "button";
      over.title = `Label as ${d.flagged ? "normal" : "anomaly"} (disagree with the decision shown)`;
      over.addEventListener("click", () => label(row, d.flagged ? "normal" : "anomaly", d.flagged));
      act.append(confirm, over);
    }
    tr.append(tdThumb, el("td", "h-time", fmtTime(row.created_at)), name, el("td", "num", fmtScore(row.score)),
      el("td", "num", fmtP(row.p_value)), dec, lab, act);
    tbody.append(tr);
  }
}

async function label(row, value, shownFlagged) {
  const who = $("#h-who").value.trim();
  if (!who) {
    $("#h-status").textContent = "Enter your name first: every label is stored with who gave it and when.";
    $("#h-status").classList.add("warn");
    $("#h-who").focus();
    return;
  }
  localStorage.setItem("normalcy-who", who);
  const r = await fetch(`/history/${row.id}/label`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ label: value, who, shown_flagged: shownFlagged }),
  });
  if (!r.ok) {
    const body = await r.json().catch(() => ({ detail: r.statusText }));
    $("#h-status").textContent = "Label not stored: " + (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
    $("#h-status").classList.add("warn");
    return;
  }
  loadHistory();
}

// ---- drift -----------------------------------------------------------------------------------------------
async function loadDrift() {
  await modelReady();
  let data;
  try {
    const r = await fetch("/drift");
    if (!r.ok) throw new Error(r.statusText);
    data = await r.json();
  } catch (e) {
    $("#d-status").textContent = "Cannot load the drift report: " + e.message;
    return;
  }
  markDrift(data);
  const st = $("#d-status");
  st.textContent = "";
  st.className = "drift-status " + (data.alarm ? "alarm" : "quiet");
  if (data.alarm) {
    const a = data.alarm;
    st.append(b("Drift alarm"), ` at normal image ${a.index + 1}` + (a.time ? ` (${fmtTime(new Date(a.time * 1000).toISOString())} UTC)` : "") +
      `: ${a.statistic} moved ${a.direction}. Check the camera, lighting and product; refit or recalibrate if the change is real.`);
  } else {
    st.append(b("No drift detected"), ` in ${data.n} images decided normal.`);
  }
  $("#d-explain").textContent = `Each line is a conformal test martingale (log10 scale) on images decided normal at the model's ` +
    `α = ${pct(data.alpha)}: it rises when their ${"scores, brightness or sharpness"} stop looking like the ` +
    `${data.reference_n} calibration scores and the images before them. The alarm level ${data.threshold_log10.toFixed(2)} ` +
    `keeps the chance of ever raising a false alarm below ${pct(data.budget)} (shared by ${data.n_martingales} lines).`;
  const charts = $("#d-charts");
  charts.textContent = "";
  for (const s of data.statistics) charts.append(driftChart(s, data));
}

function markDrift(data) { $("#drift-dot").hidden = !data.alarm; }

function driftChart(stat, data) {
  const card = el("div", "drift-card");
  const head = el("div", "drift-head");
  head.append(el("h3", "", stat.name));
  const now = Object.entries(stat.directions).map(([d, v]) => `${d} ${v.log10.toFixed(2)} (peak ${v.peak_log10.toFixed(2)})`).join(" · ");
  head.append(el("small", "", `log10 now: ${now}` + (stat.recent_mean_p !== null ? ` · mean p of last ${stat.recent_n}: ${stat.recent_mean_p.toFixed(2)}` : "")));
  card.append(head);
  const W = 640, H = 190, L = 40, R = 10, T = 10, B = 24;
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "drift-svg");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${stat.name} martingale against the alarm level`);
  const xs = data.index, n = Math.max(1, data.n);
  const all = Object.values(stat.directions).flatMap((v) => v.series);
  const ymax = Math.max(data.threshold_log10 * 1.2, ...all, 1);
  const ymin = Math.min(-1, ...all);
  const X = (i) => L + (W - L - R) * (n > 1 ? i / (n - 1) : 0);
  const Y = (v) => T + (H - T - B) * (1 - (v - ymin) / (ymax - ymin));
  const line = (x1, y1, x2, y2, cls) => {
    const ln = document.createElementNS(SVG_NS, "line");
    for (const [k, v] of Object.entries({ x1, y1, x2, y2 })) ln.setAttribute(k, v);
    ln.setAttribute("class", cls);
    svg.append(ln);
  };
  const text = (x, y, s, cls, anchor = "end") => {
    const t = document.createElementNS(SVG_NS, "text");
    t.setAttribute("x", x);
    t.setAttribute("y", y);
    t.setAttribute("text-anchor", anchor);
    t.setAttribute("class", cls);
    t.textContent = s;
    svg.append(t);
  };
  for (let v = Math.ceil(ymin); v <= Math.floor(ymax); v++) {
    line(L, Y(v), W - R, Y(v), "grid");
    text(L - 6, Y(v) + 4, String(v), "tick");
  }
  line(L, Y(data.threshold_log10), W - R, Y(data.threshold_log10), "threshold");
  text(W - R - 4, Y(data.threshold_log10) - 5, `alarm ${data.threshold_log10.toFixed(2)}`, "threshold-label");
  text(L, H - 6, "1", "tick", "start");
  text(W - R, H - 6, `${data.n} images decided normal`, "tick");
  if (data.alarm) line(X(data.alarm.index), T, X(data.alarm.index), H - B, "alarm-mark");
  for (const [dir, v] of Object.entries(stat.directions)) {
    if (!v.series.length) continue;
    const path = document.createElementNS(SVG_NS, "polyline");
    path.setAttribute("points", v.series.map((y, k) => `${X(xs[k]).toFixed(1)},${Y(y).toFixed(1)}`).join(" "));
    path.setAttribute("class", "series " + dir);
    svg.append(path);
  }
  card.append(svg);
  const legend = el("div", "drift-legend");
  for (const dir of Object.keys(stat.directions)) legend.append(el("span", "key " + dir, dir === "up" ? "higher than before" : "lower than before"));
  legend.append(el("span", "key threshold", "alarm level"));
  card.append(legend);
  return card;
}

// ---- wiring ----------------------------------------------------------------------------------------------
function wireHistory() {
  document.querySelectorAll(".view-tab").forEach((t) => t.addEventListener("click", (e) => {
    e.preventDefault();
    history.replaceState(null, "", "#" + t.dataset.view);
    showView(t.dataset.view);
  }));
  window.addEventListener("hashchange", () => showView(location.hash.slice(1)));
  window.addEventListener("drop", () => { if (location.hash && location.hash !== "#review") { history.replaceState(null, "", "#review"); showView("review"); } });
  for (const id of ["#h-since", "#h-until", "#h-decision", "#h-severity", "#h-model", "#h-mode"]) {
    $(id).addEventListener("change", () => { hist.stack = []; hist.before = null; loadHistory(); });
  }
  $("#h-who").value = localStorage.getItem("normalcy-who") || "";
  $("#h-older").addEventListener("click", () => {
    if (!hist.page || hist.page.next_before === null) return;
    hist.stack.push(hist.before);
    hist.before = hist.page.next_before;
    loadHistory();
  });
  $("#h-newer").addEventListener("click", () => {
    if (!hist.stack.length) return;
    hist.before = hist.stack.pop();
    loadHistory();
  });
  fetch("/drift?points=10").then((r) => (r.ok ? r.json() : null)).then((d) => d && markDrift(d)).catch(() => {});
  if (location.hash) showView(location.hash.slice(1));
}

wireHistory();
