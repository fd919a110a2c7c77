// The operator's page: one WebSocket (/ws) pushes every result, preview, reject, status and event;
// the buttons POST to /api/* with the token. Plain JS, no build step, nothing fetched from elsewhere.
// The page measures its own latency from the daemon's publish_time to the paint of what it drew:
// window.__agptLatency = {frame: [ms...], result: [ms...]} (benchmarks/bench_view.py reads it).
"use strict";

const LOCATIONS = [["top left", "top", "top right"], ["left", "center", "right"], ["bottom left", "bottom", "bottom right"]];
const MAX_LATENCIES = 20000;
window.__agptLatency = { frame: [], result: [] };
window.__agptCounts = { results: 0, frames: 0, rejects: 0, messages: 0 };

const cams = new Map();        // name -> {el, frame, overlay, last, dirty, count}
const rejects = new Map();     // id -> reject
let lite = false;
let readOnly = true;
let maxRejects = 12;

const $ = (sel, root = document) => root.querySelector(sel);

function b64bytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function bitmap(b64, type) {
  return createImageBitmap(new Blob([b64bytes(b64)], { type }));
}

function recordLatency(kind, publishTime) {
  if (!publishTime) return;
  const arr = window.__agptLatency[kind];
  arr.push(Date.now() - publishTime * 1000);
  if (arr.length > MAX_LATENCIES) arr.splice(0, arr.length - MAX_LATENCIES);
}

// ---- the anomaly map overlay ----------------------------------------------------------------------

function clamp01(x) { return x < 0 ? 0 : x > 1 ? 1 : x; }

// 224x224 grey mask (uint8 = 255*map) -> an RGBA canvas: jet colours, alpha rising with the map
// (faint below 0.1), and a white contour around map >= 0.5
async function maskCanvas(maskB64) {
  const bm = await bitmap(maskB64, "image/png");
  const c = document.createElement("canvas");
  c.width = bm.width; c.height = bm.height;
  const g = c.getContext("2d", { willReadFrequently: true });
  g.drawImage(bm, 0, 0);
  const img = g.getImageData(0, 0, c.width, c.height);
  const d = img.data, w = c.width, h = c.height;
  const grey = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) grey[i] = d[4 * i];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x, u = grey[i], v = u / 255;
      const k = 4 * i;
      const inside = u >= 128;
      const edge = inside && (x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        grey[i - 1] < 128 || grey[i + 1] < 128 || grey[i - w] < 128 || grey[i + w] < 128);
      if (edge) { d[k] = 255; d[k + 1] = 255; d[k + 2] = 255; d[k + 3] = 255; continue; }
      d[k] = 255 * clamp01(1.5 - Math.abs(4 * v - 3));
      d[k + 1] = 255 * clamp01(1.5 - Math.abs(4 * v - 2));
      d[k + 2] = 255 * clamp01(1.5 - Math.abs(4 * v - 1));
      d[k + 3] = v < 0.1 ? 0 : Math.round(255 * (0.2 + 0.5 * v));
    }
  }
  g.putImageData(img, 0, 0);
  return c;
}

// where the 224x224 model frame sits on a canvas showing the whole camera frame
function cropRect(h, W, H) {
  const ft = h && h.mask && h.mask.frame_transform;
  if (!ft) return { x: 0, y: 0, w: W, h: H };
  const sx = W / ft.width, sy = H / ft.height;
  return {
    x: ft.left * (ft.width / ft.resized_w) * sx,
    y: ft.top * (ft.height / ft.resized_h) * sy,
    w: ft.size * (ft.width / ft.resized_w) * sx,
    h: ft.size * (ft.height / ft.resized_h) * sy,
  };
}

// frame (ImageBitmap or null) + mask onto a canvas pair; the size is the preview's (or the frame's, scaled)
async function paint(frameCanvas, overlayCanvas, jpegB64, maskB64, h, size) {
  const [frame, mask] = await Promise.all([  // both decodes at once
    jpegB64 ? bitmap(jpegB64, "image/jpeg") : null,
    maskB64 ? maskCanvas(maskB64) : null,
  ]);
  let W = frame ? frame.width : size.w, H = frame ? frame.height : size.h;
  for (const c of [frameCanvas, overlayCanvas]) { if (c.width !== W) c.width = W; if (c.height !== H) c.height = H; }
  const fg = frameCanvas.getContext("2d");
  if (frame) fg.drawImage(frame, 0, 0); else { fg.fillStyle = "#000"; fg.fillRect(0, 0, W, H); }
  const og = overlayCanvas.getContext("2d", { willReadFrequently: true });
  og.clearRect(0, 0, W, H);
  if (!h) return;
  const r = cropRect(h, W, H);
  if (mask) og.drawImage(mask, r.x, r.y, r.w, r.h);
  og.lineWidth = Math.max(2, W / 200);
  og.strokeStyle = "#ffeb3b";
  for (const loc of h.locations || []) {
    LOCATIONS.forEach((row, ri) => row.forEach((name, ci) => {
      if (name === loc) og.strokeRect(r.x + ci * r.w / 3, r.y + ri * r.h / 3, r.w / 3, r.h / 3);
    }));
  }
  overlayCanvas.dataset.frameId = h.frame_id;
}

function frameSize(h, maxSide = 640) {
  const ft = h && h.mask && h.mask.frame_transform;
  if (!ft) return { w: 224, h: 224 };
  const s = Math.min(1, maxSide / Math.max(ft.width, ft.height));
  return { w: Math.round(ft.width * s), h: Math.round(ft.height * s) };
}

// ---- cameras --------------------------------------------------------------------------------------

function camera(name) {
  let c = cams.get(name);
  if (c) return c;
  const el = $("#camera-template").content.firstElementChild.cloneNode(true);
  el.id = "camera-" + name;
  el.dataset.camera = name;
  $(".name", el).textContent = name;
  $("#cameras").appendChild(el);
  c = { el, frame: $(".frame", el), overlay: $(".overlay", el), last: null, dirty: false, count: 0, painting: false, next: null };
  cams.set(name, c);
  for (const sel of document.querySelectorAll(".camera-select")) {
    const o = document.createElement("option"); o.value = name; o.textContent = name; sel.appendChild(o);
  }
  return c;
}

// live: pushed as it was published (the snapshot's last result and frame are old: not timed)
function onResult(name, h, live = true) {
  const c = camera(name);
  c.last = h; c.live = live; c.count++; window.__agptCounts.results++;
  if (h.judge === "calibrated-score") setLite(true);
  if (!c.dirty) { c.dirty = true; requestAnimationFrame(() => renderResult(c)); }
}

function renderResult(c) {
  c.dirty = false;
  const h = c.last, el = c.el;
  const v = $(".verdict", el);
  v.textContent = h.verdict === true ? "REJECT" + (h.locations.length ? " · " + h.locations.join(", ") : "") : h.verdict === false ? "OK" : "??";
  v.className = "verdict " + (h.verdict === true ? "reject" : h.verdict === false ? "ok" : "");
  $(".p", el).textContent = h.p_anomaly == null ? "–" : h.p_anomaly.toFixed(3);
  $(".score", el).textContent = h.score.toFixed(3);
  $(".frame-id", el).textContent = h.frame_id;
  $(".product", el).textContent = h.product;
  $(".bank", el).textContent = h.bank_id || "–";
  $(".count", el).textContent = c.count;
  $(".answer-text", el).textContent = h.answer || "";
  el.dataset.product = h.product;
  el.dataset.frameId = h.frame_id;
  if (c.live) recordLatency("result", h.publish_time);
}

// previews come at a few per second; one decode at a time per camera, the newest waiting one next
function onFrame(m, live = true) {
  const c = camera(m.camera);
  m.live = live;
  if (c.painting) { c.next = m; return; }
  c.painting = true;
  paint(c.frame, c.overlay, m.jpeg, m.mask, m.h, { w: m.p.width, h: m.p.height })
    .then(() => new Promise((res) => requestAnimationFrame(() => {
      if (m.live) recordLatency("frame", m.p.publish_time);
      window.__agptCounts.frames++;
      c.el.dataset.shownFrame = m.frame_id;
      // the picture's own verdict (the box below follows every result, the picture a few a second)
      const h = m.h;
      $(".caption", c.el).textContent = `frame ${m.frame_id}` + (h ? ` · ${h.verdict === true ? "REJECT" : h.verdict === false ? "OK" : "??"} · ${h.score.toFixed(3)}` : "");
      res();
    })))
    .catch((e) => console.warn("frame", e))
    .finally(() => { c.painting = false; if (c.next) { const n = c.next; c.next = null; onFrame(n, n.live); } });
}

// ---- rejects --------------------------------------------------------------------------------------

function onReject(r) {
  window.__agptCounts.rejects++;
  rejects.set(r.id, r);
  const ids = [...rejects.keys()].sort((a, b) => a - b);
  while (ids.length > maxRejects) rejects.delete(ids.shift());
  renderRejects();
}

function renderRejects() {
  const box = $("#rejects");
  const want = [...rejects.values()].sort((a, b) => b.id - a.id);
  const have = new Map([...box.children].map((el) => [Number(el.dataset.id), el]));
  for (const [id, el] of have) if (!rejects.has(id)) el.remove();
  want.forEach((r, i) => {
    let el = have.get(r.id);
    if (!el || el.dataset.hasJpeg !== String(!!r.jpeg)) {
      const fresh = document.createElement("div");
      fresh.className = "thumb"; fresh.dataset.id = r.id; fresh.dataset.hasJpeg = String(!!r.jpeg);
      fresh.title = `${r.camera} frame ${r.frame_id} · ${r.h.product}`;
      const f = document.createElement("canvas"), o = document.createElement("canvas");
      const st = document.createElement("div"); st.className = "stage"; st.append(f, o);
      const s = document.createElement("span"); s.textContent = `${r.camera} #${r.frame_id}` + (r.h.archived ? " (archive)" : "");
      fresh.append(st, s);
      fresh.addEventListener("click", () => openReject(r.id));
      paint(f, o, r.jpeg, r.mask, r.h, frameSize(r.h, 160)).catch((e) => console.warn("thumb", e));
      if (el) el.replaceWith(fresh); else box.appendChild(fresh);
      el = fresh;
    }
    if (box.children[i] !== el) box.insertBefore(el, box.children[i] || null);
  });
}

function openReject(id) {
  const r = rejects.get(id);
  if (!r) return;
  $("#modal").hidden = false;
  $("#modal").dataset.id = id;
  const h = r.h;
  $("#fb-product").textContent = h.product;
  $("#modal-reply").textContent = ""; $("#modal-reply").className = "";
  for (const b of document.querySelectorAll("#feedback button")) b.disabled = readOnly;
  $("#modal-info").textContent = (h.archived ? `archived ${new Date(h.capture_time * 1000).toLocaleString()} · ` : "") +
    (h.lot ? `lot ${h.lot} · ` : "") + (h.part_id ? `part ${h.part_id} · ` : "") +
    `${r.camera} frame ${r.frame_id} · ${h.product}@${h.bank_id} · score ${h.score.toFixed(3)}` +
    (h.p_anomaly != null ? ` · P(anomaly) ${h.p_anomaly.toFixed(3)}` : "") +
    (h.locations.length ? ` · at ${h.locations.join(", ")}` : "") + (h.answer ? ` · “${h.answer}”` : "");
  paint($("#modal-frame"), $("#modal-overlay"), r.jpeg, r.mask, h, frameSize(h, 640))
    .then(() => { $("#modal").dataset.painted = id; })
    .catch((e) => console.warn("modal", e));
}

// ---- status, events, products ---------------------------------------------------------------------

function onStatus(s) {
  $("#fps").textContent = s.fps.toFixed(1);
  $("#judged").textContent = s.frames_judged;
  $("#accuracy").textContent = s.accuracy == null ? "–" : `${(100 * s.accuracy).toFixed(1)}% (${s.truth_frames})`;
  const d = s.drops;
  $("#drops").textContent = d.queue + d.paused + d.failed + d.camera_bad + d.publish;
  $("#drops").title = JSON.stringify(d);
  $("#paused-flag").hidden = !s.paused;
  for (const cs of s.cameras || []) {
    const c = camera(cs.name);
    $(".state", c.el).textContent = cs.camera_state;
    $(".cam-fps", c.el).textContent = cs.fps.toFixed(1);
    const cd = cs.drops;
    $(".cam-drops", c.el).textContent = cd.queue + cd.paused + cd.failed + cd.camera_bad;
    if (!c.last) { $(".product", c.el).textContent = cs.product || "–"; $(".bank", c.el).textContent = cs.bank_id || "–"; }
  }
}

function onEvent(e) {
  const li = document.createElement("li");
  li.textContent = `${new Date(e.time * 1000).toLocaleTimeString()} ${e.kind} ${JSON.stringify(e.detail).slice(0, 160)}`;
  $("#events").prepend(li);
  while ($("#events").children.length > 50) $("#events").lastChild.remove();
  if (["changeover", "product_added", "started"].includes(e.kind)) loadProducts();
}

async function loadProducts() {
  try {
    const r = await fetch("/api/products");
    const j = await r.json();
    if (!j.ok) return;
    const sel = $("#product"), keep = sel.value;
    sel.innerHTML = "";
    for (const p of j.data.products) {
      const o = document.createElement("option"); o.value = p; o.textContent = p; sel.appendChild(o);
    }
    sel.value = j.data.products.includes(keep) ? keep : j.data.active;
  } catch (e) { console.warn("products", e); }
}

function setLite(on) {
  lite = on;
  $("#ask-box").hidden = on;  // the lite bundle has no LLM: no answers, no questions
}

// ---- control ----------------------------------------------------------------------------------------

function say(text, bad = false) { const m = $("#message"); m.textContent = text; m.className = bad ? "bad" : "good"; }

async function post(path, body) {
  const headers = { "X-Agpt-Token": $("#token").value };
  let payload = body;
  if (!(body instanceof FormData)) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body || {}); }
  const r = await fetch(path, { method: "POST", headers, body: payload });
  const j = await r.json().catch(() => ({ ok: false, error: `HTTP ${r.status}` }));
  if (!j.ok) throw new Error(j.error || `HTTP ${r.status}`);
  return j.data;
}

function wireControls() {
  $("#token").value = sessionStorage.getItem("agpt-token") || "";
  $("#token").addEventListener("change", () => sessionStorage.setItem("agpt-token", $("#token").value));
  $("#swap").addEventListener("click", async () => {
    const product = $("#product").value, cam = $("#swap-camera").value;
    say(`switching to ${product}...`);
    try {
      const d = await post("/api/swap", { product, camera: cam || null });
      say(`now ${d.product} (bank ${d.bank_id}) after frame ${d.after_frame_id}`);
    } catch (e) { say(e.message, true); }
  });
  $("#pause").addEventListener("click", () => post("/api/pause").then(() => say("paused")).catch((e) => say(e.message, true)));
  $("#resume").addEventListener("click", () => post("/api/resume").then(() => say("resumed")).catch((e) => say(e.message, true)));
  $("#add-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const fd = new FormData(ev.target);
    say("building the product...");
    try {
      const d = await post("/api/products", fd);
      say(`product ${d.product} built from ${d.n_shots} shots (bank ${d.bank_id})`);
      loadProducts();
    } catch (e) { say(e.message, true); }
  });
  $("#ask-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const cam = $("#ask-camera").value;
    const shown = cam && cams.get(cam) ? Number(cams.get(cam).el.dataset.shownFrame) || null : null;
    $("#answer").textContent = "...";
    try {
      const d = await post("/api/ask", { question: $("#question").value, camera: cam || null, frame_id: shown });
      $("#answer").textContent = `frame ${d.frame_id} (${d.camera}): ${d.answer}`;
    } catch (e) { $("#answer").textContent = e.message; }
  });
  wireFeedback();
  $("#modal-close").addEventListener("click", () => { $("#modal").hidden = true; });
  $("#modal").addEventListener("click", (ev) => { if (ev.target.id === "modal") $("#modal").hidden = true; });
}

// ---- the reject window: operator feedback (the daemon's feedback / rollback, docs/quality-loop.md) ------

function modalSay(text, bad = false) { const m = $("#modal-reply"); m.textContent = text; m.className = bad ? "bad" : "good"; }

function wireFeedback() {
  $("#operator").value = localStorage.getItem("agpt-operator") || "";
  $("#operator").addEventListener("change", () => localStorage.setItem("agpt-operator", $("#operator").value.trim()));
  const mark = async (addToBank) => {
    const r = rejects.get(Number($("#modal").dataset.id));
    if (!r) return;
    const operator = $("#operator").value.trim();
    if (!operator) { modalSay("enter your name first (it is logged with the mark)", true); $("#operator").focus(); return; }
    localStorage.setItem("agpt-operator", operator);
    modalSay(addToBank ? "logging and rebuilding the bank..." : "logging...");
    try {
      const d = await post("/api/feedback", { frame_id: r.frame_id, camera: r.camera, kind: "false_reject", operator, add_to_bank: addToBank });
      modalSay(d.new_bank_id
        ? `frame ${d.frame_id} added to ${d.product}'s normal shots: new bank ${d.new_bank_id} (was ${d.previous_bank_id}, ${d.n_shots} shots)`
        : `frame ${d.frame_id} logged as a false reject of ${d.product}@${d.bank_id}`);
    } catch (e) { modalSay(e.message, true); }
  };
  $("#fb-false-reject").addEventListener("click", () => mark(false));
  $("#fb-add-to-bank").addEventListener("click", () => mark(true));
  $("#fb-rollback").addEventListener("click", async () => {
    const r = rejects.get(Number($("#modal").dataset.id));
    if (!r) return;
    const product = r.h.product, operator = $("#operator").value.trim();
    if (!confirm(`Put ${product}'s previous bank back?`)) return;
    modalSay(`rolling back ${product}...`);
    try {
      const d = await post("/api/rollback", { product, operator: operator || null });
      modalSay(`${d.product} rolled back: bank ${d.bank_id} (was ${d.previous_bank_id})`);
    } catch (e) { modalSay(e.message, true); }
  });
}

// ---- the socket -------------------------------------------------------------------------------------

function onHello(m) {
  $("#prefix").textContent = m.prefix;
  readOnly = m.read_only;
  maxRejects = m.rejects || 12;
  $("#read-only-note").hidden = !readOnly;
  $("#add-product").hidden = !m.uploads;
  const snap = m.snapshot;
  if (snap.status) onStatus(snap.status);
  for (const [name, c] of Object.entries(snap.cameras)) {
    if (c.last_result) onResult(name, c.last_result, false);
    if (c.frame) onFrame(c.frame, false);
  }
  for (const r of snap.rejects) onReject(r);
  for (const e of snap.events) onEvent(e);
  loadProducts();
}

function connect(delay = 500) {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onopen = () => { $("#link").textContent = "live"; $("#link").className = "good"; delay = 500; };
  ws.onclose = () => {
    $("#link").textContent = "reconnecting"; $("#link").className = "bad";
    setTimeout(() => connect(Math.min(delay * 2, 8000)), delay);
  };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    window.__agptCounts.messages++;
    switch (m.t) {
      case "hello": onHello(m); break;
      case "result": onResult(m.camera, m.h); break;
      case "frame": onFrame(m); break;
      case "reject": onReject(m.r); break;
      case "status": onStatus(m.s); break;
      case "event": onEvent(m.e); break;
    }
  };
}

wireControls();
connect();
