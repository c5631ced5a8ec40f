// vlmdiff edge dashboard. Polls the daemon's JSON API (docs/operations.md, "HTTP API"); no dependencies.
'use strict';

const POLL_MS = 2000;        // normal refresh period
const RETRY_MAX_MS = 10000;  // longest wait between retries while the API is away
const TIMEOUT_MS = 5000;     // a request that takes longer counts as a failure
const HISTORY_N = 120;       // points per score chart
const EVENTS_N = 30;         // NG events listed at first; "older" adds as many again
const HEATMAP_RETRY_MS = 15000;

const $ = (id) => document.getElementById(id);
const cams = new Map();      // camera name -> {el, seq, frameURL, hmURL, hmMissingUntil, hist}
let failures = 0;
let lastOK = null;
let eventsKey = '';
let eventsN = EVENTS_N;
let firstEvents = true;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
const fix = (v, d) => (typeof v === 'number' && isFinite(v) ? v.toFixed(d) : '–');
const ms = (v) => (typeof v === 'number' && isFinite(v) ? (v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(0) + ' ms') : '–');
const enc = encodeURIComponent;

function fmtTime(t, withDate) {
  const d = new Date(t);
  if (isNaN(d)) return '–';
  const p = (n) => String(n).padStart(2, '0');
  const hms = `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  const today = new Date();
  if (withDate && d.toDateString() !== today.toDateString()) return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${hms}`;
  return hms;
}
function fmtDuration(s) {
  s = Math.max(0, Math.round(s || 0));
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, sec = s % 60;
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}
function fmtBytes(b) {
  if (!(b > 0)) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + ' ' + u[i];
}

class HTTPError extends Error {
  constructor(url, status, msg) { super(`${url}: HTTP ${status}${msg ? ': ' + msg : ''}`); this.status = status; this.detail = msg || ''; }
}

async function get(url, kind) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const r = await fetch(url, { cache: 'no-store', signal: ctl.signal });
    if (!r.ok) {
      let msg = '';
      try { msg = (await r.json()).error || ''; } catch (_) { /* not JSON */ }
      throw new HTTPError(url, r.status, msg);
    }
    return kind === 'blob' ? await r.blob() : await r.json();
  } finally {
    clearTimeout(timer);
  }
}

// ---- connection badge ----
function setConn(ok, err) {
  const b = $('conn');
  if (ok) {
    failures = 0;
    lastOK = new Date();
    document.body.dataset.conn = 'live';
    b.className = 'badge live';
    b.textContent = 'LIVE';
    $('conn-detail').textContent = '';
    $('sys-updated').textContent = fmtTime(lastOK);
    return;
  }
  failures++;
  document.body.dataset.conn = 'offline';
  b.className = 'badge offline';
  b.textContent = err instanceof HTTPError ? `API ERROR ${err.status}` : 'DISCONNECTED';
  const since = lastOK ? `last update ${fmtTime(lastOK)}, ` : '';
  $('conn-detail').textContent = `${since}retrying…`;
  b.title = String(err && err.message || err);
}

// ---- header, footer ----
function renderModel(m) {
  m = m || {};
  $('model-name').textContent = m.name || '–';
  $('model-version').textContent = m.version ? 'v' + m.version : '';
  const st = $('model-state');
  st.textContent = (m.state || 'unknown').toUpperCase();
  st.className = 'pill ' + ({ running: 'good', starting: 'warn', failed: 'bad' }[m.state] || 'none');
  $('model-reason').textContent = m.reason || '';
  $('model').title = [m.dir, m.since ? 'since ' + m.since : '', m.swaps ? m.swaps + ' swaps' : '', m.reason].filter(Boolean).join('\n');
}

function renderSys(s) {
  $('agent').textContent = s.agent || '';
  document.title = `vlmdiff edge · ${s.agent || ''}`;
  $('sys-uptime').textContent = fmtDuration(s.uptime_s);
  const mq = s.mqtt;
  const mqEl = $('sys-mqtt');
  if (mq) {
    mqEl.textContent = (mq.connected ? 'connected' : 'DISCONNECTED') + (mq.reconnects ? ` · ${mq.reconnects} reconnects` : '');
    mqEl.classList.toggle('alert', !mq.connected);
  } else mqEl.textContent = '–';
  const ob = (s.store && s.store.outbox) || {};
  const obEl = $('sys-outbox');
  obEl.textContent = `${ob.messages || 0} msgs · ${fmtBytes(ob.bytes)}`;
  obEl.classList.toggle('alert', (ob.messages || 0) > 100);
  const dropped = (ob.dropped_ok_results || 0) + (ob.dropped_ng_results || 0) + (ob.dropped_heatmaps || 0) + (ob.dropped_other || 0);
  $('sys-dropped').textContent = String(dropped);
  $('sys-dropped').classList.toggle('alert', (ob.dropped_ng_results || 0) > 0);
  $('sys-history').textContent = s.store ? `${s.store.history_records || 0} results · ${fmtBytes(s.store.history_bytes)}` : '–';
  $('sys-mem').textContent = typeof s.memory_mb === 'number' ? s.memory_mb.toFixed(0) + ' MB' : '–';
}

// ---- cameras ----
function camCard(name) {
  let c = cams.get(name);
  if (c) return c;
  const el = $('cam-tpl').content.firstElementChild.cloneNode(true);
  el.dataset.cam = name;
  el.querySelector('.cam-name').textContent = name;
  $('cams').appendChild(el);
  c = { el, name, seq: -1, frameURL: null, hmURL: null, hmMissingUntil: 0, hist: [], histSeq: -1, editable: false };
  cams.set(name, c);
  q(c, '.thr-form').addEventListener('submit', (ev) => { ev.preventDefault(); setThreshold(c, false); });
  q(c, '.thr-reset').addEventListener('click', () => setThreshold(c, true));
  return c;
}

const q = (c, sel) => c.el.querySelector(sel);

function renderCamStats(c, s) {
  const st = q(c, '.cam-state');
  st.textContent = (s.state || 'unknown').toUpperCase();
  st.className = 'pill cam-state ' + ({ online: 'good', offline: 'bad', error: 'bad', frozen: 'warn' }[s.state] || 'none');
  q(c, '.cam-reason').textContent = s.state === 'online' ? '' : s.reason || '';
  q(c, '.cam-reason').title = s.reason || '';
  q(c, '.fps').textContent = fix(s.fps, 2);
  q(c, '.p50').textContent = ms(s.latency_p50_ms);
  q(c, '.p95').textContent = ms(s.latency_p95_ms);
  q(c, '.queue').textContent = String(s.queue_depth ?? '–');
  const drops = q(c, '.drops');
  drops.textContent = String((s.queue_drops || 0) + (s.source_drops || 0));
  drops.classList.toggle('alert', (s.queue_drops || 0) + (s.source_drops || 0) > 0);
  const errs = (s.decode_errors || 0) + (s.score_errors || 0);
  q(c, '.errors').textContent = String(errs);
  q(c, '.errors').classList.toggle('alert', errs > 0);
  const rate = s.scored ? ` (${((100 * (s.ng || 0)) / s.scored).toFixed(1)}%)` : '';
  q(c, '.ngrate').textContent = `${s.ng || 0} / ${s.scored || 0}${rate}`;
}

// Images are fetched as blobs and swapped in when complete: no flicker, and a failed fetch keeps the last one.
async function loadImage(c, img, url, key) {
  const blob = await get(url, 'blob');
  const obj = URL.createObjectURL(blob);
  await new Promise((resolve) => {
    img.onload = img.onerror = resolve;
    img.src = obj;
  });
  if (c[key]) URL.revokeObjectURL(c[key]);
  c[key] = obj;
  img.classList.toggle('loaded', img.naturalWidth > 0);
}

// A 404 (no frame since a restart, heatmaps off for the camera) is not a connection problem: the placeholder
// stays and the image is asked for again with the next result; the heatmap at most every HEATMAP_RETRY_MS.
async function refreshImages(c, s) {
  // scored moves when a result is committed (last_seq already when a worker takes the frame).
  if (!(s.scored > 0) || s.scored === c.seq) return;
  const seq = s.scored;
  const name = enc(s.name);
  const soft = (e) => { if (!(e instanceof HTTPError)) throw e; return false; };
  const jobs = [loadImage(c, q(c, 'img.frame'), `/api/cameras/${name}/frame.jpg?n=${seq}`, 'frameURL')
    .then(() => { q(c, '.frame-at').textContent = '· ' + fmtTime(new Date()); }, soft)];
  if (Date.now() >= c.hmMissingUntil) {
    jobs.push(loadImage(c, q(c, 'img.heatmap'), `/api/cameras/${name}/heatmap.png?n=${seq}`, 'hmURL')
      .then(() => { q(c, '.hm-at').textContent = '· ' + fmtTime(new Date()); },
        (e) => { soft(e); c.hmMissingUntil = Date.now() + HEATMAP_RETRY_MS; }));
  }
  await Promise.all(jobs);
  c.seq = seq;
}

async function refreshHistory(c, s) {
  if (s.scored === c.histSeq && s.last_seq === c.histLast) return;
  const h = await get(`/api/history?camera=${enc(s.name)}&limit=${HISTORY_N}`);
  c.hist = (h || []).slice().reverse(); // oldest first
  c.histSeq = s.scored;
  c.histLast = s.last_seq;
  const last = c.hist[c.hist.length - 1];
  const v = q(c, '.verdict');
  c.el.classList.toggle('ng', !!last && last.verdict === 'NG');
  c.el.classList.toggle('ok', !!last && last.verdict === 'OK');
  if (last) {
    v.textContent = last.verdict;
    v.className = 'verdict ' + (last.verdict === 'NG' ? 'ng' : 'ok');
    q(c, '.score').textContent = fix(last.score, 3);
    q(c, '.raw').textContent = `${fix(last.raw_score, 4)} / ${fix(last.threshold, 4)}`;
  } else {
    v.textContent = '–';
    v.className = 'verdict none';
  }
  drawChart(c);
}

// Score chart: raw score (the model's units) against the threshold in effect at each point (a step line, since a
// runtime override can move it), NG points in red.
function drawChart(c) {
  const box = q(c, 'svg.chart');
  const W = Math.max(200, box.clientWidth || 600), H = Math.max(100, box.clientHeight || 190);
  box.setAttribute('viewBox', `0 0 ${W} ${H}`);
  box.replaceChildren();
  const pts = c.hist;
  const L = 52, R = 12, T = 12, B = 22;
  if (!pts.length) {
    const t = svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' });
    t.textContent = 'no results yet';
    box.appendChild(t);
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) {
    lo = Math.min(lo, p.raw_score, p.threshold);
    hi = Math.max(hi, p.raw_score, p.threshold);
  }
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 0.1;
  lo -= pad; hi += pad;
  const n = pts.length;
  const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4;
    box.appendChild(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const t = svg('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' });
    t.textContent = v.toFixed(3);
    box.appendChild(t);
  }
  // threshold step line
  let d = '';
  pts.forEach((p, i) => {
    const xi = x(i), yi = y(p.threshold);
    if (i === 0) d += `M${L},${yi}H${xi}`;
    else d += `H${(x(i - 1) + xi) / 2}V${yi}H${xi}`;
  });
  d += `H${W - R}`;
  box.appendChild(svg('path', { class: 'thr', d }));
  const tl = svg('text', { class: 'thr-label', x: W - R - 2, y: y(pts[n - 1].threshold) - 5, 'text-anchor': 'end' });
  tl.textContent = `threshold ${pts[n - 1].threshold.toFixed(3)}`;
  box.appendChild(tl);
  box.appendChild(svg('polyline', { class: 'line', points: pts.map((p, i) => `${x(i).toFixed(1)},${y(p.raw_score).toFixed(1)}`).join(' ') }));
  pts.forEach((p, i) => {
    const ng = p.verdict === 'NG';
    const dot = svg('circle', { class: ng ? 'pt-ng' : 'pt-ok', cx: x(i), cy: y(p.raw_score), r: ng ? 4.5 : 2 });
    const tt = svg('title');
    tt.textContent = `#${p.seq} ${fmtTime(p.frame_time)} ${p.verdict} raw ${fix(p.raw_score, 4)} score ${fix(p.score, 3)}`;
    dot.appendChild(tt);
    box.appendChild(dot);
  });
  const t0 = svg('text', { x: L, y: H - 6 });
  t0.textContent = fmtTime(pts[0].frame_time);
  const t1 = svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end' });
  t1.textContent = fmtTime(pts[n - 1].frame_time);
  const tm = svg('text', { x: (L + W - R) / 2, y: H - 6, 'text-anchor': 'middle' });
  tm.textContent = `raw score, last ${n} results`;
  box.append(t0, t1, tm);
}

// ---- NG events ----
function renderEvents(evs) {
  evs = evs || [];
  const key = evs.map((e) => `${e.camera}/${e.seq}`).join(',');
  $('ng-empty').hidden = evs.length > 0;
  $('ng-count').textContent = evs.length ? `(latest ${evs.length})` : '';
  $('ng-more').hidden = evs.length < eventsN || eventsN >= 1000;
  if (key === eventsKey) return;
  const before = new Set(eventsKey.split(','));
  eventsKey = key;
  const list = $('ng-list');
  const rows = evs.map((e) => {
    const li = el('li', 'ng-row');
    li.tabIndex = 0;
    li.dataset.key = `${e.camera}/${e.seq}`;
    if (!firstEvents && !before.has(li.dataset.key)) li.classList.add('new');
    const src = e.thumbnail_url || e.heatmap_url;
    if (src) {
      const img = el('img');
      img.alt = `heatmap ${e.camera} #${e.seq}`;
      img.src = src;
      li.appendChild(img);
    } else li.appendChild(el('div', 'ph', ''));
    const mid = el('div');
    mid.append(el('div', 't', fmtTime(e.frame_time, true)), el('div', 'c', `${e.camera} · #${e.seq}`));
    const sc = el('div', 's', fix(e.score, 3));
    sc.appendChild(el('small', '', `raw ${fix(e.raw_score, 3)}`));
    li.append(mid, sc);
    li.addEventListener('click', () => openModal(e));
    li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); openModal(e); } });
    return li;
  });
  list.replaceChildren(...rows);
  firstEvents = false;
}

function openModal(e) {
  modalEvent = e;
  $('fa-msg').textContent = '';
  $('fa-msg').className = 'muted';
  $('modal-actions').hidden = !auth.user;
  $('modal-title').textContent = `NG · ${e.camera} #${e.seq}`;
  const img = $('modal-img');
  img.src = e.heatmap_url || e.thumbnail_url || '';
  img.hidden = !img.src;
  const info = $('modal-info');
  const lat = e.latency_ms || {};
  const rows = [
    ['time', fmtTime(e.frame_time, true)], ['camera', e.camera],
    ['score', fix(e.score, 3)], ['raw / threshold', `${fix(e.raw_score, 4)} / ${fix(e.threshold, 4)}`],
    ['anomaly area', fix(e.anomaly_area_pct, 2) + ' %'], ['class', e.class || '–'],
    ['model', e.model ? `${e.model.name} ${e.model.version}` : '–'], ['model latency', ms(lat.model ?? lat.total)],
  ];
  info.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', '', k), el('dd', '', v)]));
  $('modal').hidden = false;
  $('modal-close').focus();
}
function closeModal() { $('modal').hidden = true; }

// ---- operator actions: only after a login (http.auth.users; docs/operations.md, Securing the HTTP API) ----
let auth = { login: false, user: '', csrf: '' };
let modalEvent = null;
let camInfoAt = 0;

function setAuth(s) {
  s = s || {};
  auth = { login: !!s.login, user: s.user || '', csrf: s.csrf_token || '' };
  $('auth').hidden = !auth.login;
  $('auth-user').textContent = auth.user;
  $('login-btn').hidden = !!auth.user;
  $('logout-btn').hidden = !auth.user;
  document.body.dataset.user = auth.user;
  $('modal-actions').hidden = !auth.user;
  camInfoAt = 0;
  cams.forEach((c) => { q(c, '.thr-form').hidden = !(auth.user && c.editable); });
}

// send POSTs JSON with the session's CSRF token; a 401 means the session ended, so the login state is asked
// for again.
async function send(url, body) {
  const r = await fetch(url, { method: 'POST', cache: 'no-store', body: JSON.stringify(body || {}),
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': auth.csrf } });
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401 && auth.user) get('/api/auth/session').then(setAuth, () => {});
  if (!r.ok) throw new HTTPError(url, r.status, data && data.error);
  return data;
}

async function login(ev) {
  ev.preventDefault();
  $('login-error').textContent = '';
  try {
    const s = await send('/api/auth/login', { username: $('login-user').value, password: $('login-pass').value });
    $('login-pass').value = '';
    $('login').hidden = true;
    setAuth(s);
  } catch (e) {
    $('login-error').textContent = e.status === 429 ? 'too many failed logins: wait a minute' : (e.detail || e.message);
  }
}

async function logout() {
  try { setAuth(await send('/api/auth/logout')); } catch (e) { setAuth(await get('/api/auth/session')); }
}

// The threshold form shows the camera's allowed range (the same guard as the MQTT command) and its value.
function renderCamInfo(list) {
  for (const ci of list || []) {
    const c = cams.get(ci.name);
    if (!c) continue;
    c.editable = !!ci.threshold_editable;
    const input = q(c, '.thr-input');
    const r = ci.threshold_range;
    if (r && r.length === 2) {
      input.min = r[0];
      input.max = r[1];
      q(c, '.thr-range').textContent = `allowed ${fix(r[0], 4)} … ${fix(r[1], 4)}`;
    }
    if (document.activeElement !== input && !input.dataset.dirty) input.value = ci.threshold;
    q(c, '.thr-form').hidden = !(auth.user && c.editable);
  }
}

async function setThreshold(c, reset) {
  const msg = q(c, '.thr-msg');
  const input = q(c, '.thr-input');
  msg.className = 'thr-msg muted';
  msg.textContent = 'sending…';
  try {
    const st = await send(`/api/cameras/${enc(c.name)}/threshold`, reset ? { reset: true } : { threshold: Number(input.value) });
    msg.className = 'thr-msg good';
    msg.textContent = `set ${fix(st.threshold, 4)} (${st.source})`;
    input.value = st.threshold;
    delete input.dataset.dirty;
    camInfoAt = 0;
  } catch (e) {
    msg.className = 'thr-msg bad';
    msg.textContent = e.detail || e.message;
  }
}

async function markFalseAlarm() {
  const e = modalEvent;
  if (!e) return;
  const m = $('fa-msg');
  m.className = 'muted';
  m.textContent = 'sending…';
  try {
    const r = await send(`/api/events/${enc(e.camera)}/${e.seq}/false-alarm`);
    m.className = 'good';
    m.textContent = `kept as a normal sample (${r.marked_by}, ${fmtTime(r.marked_at)})`;
  } catch (err) {
    m.className = 'bad';
    m.textContent = err.detail || err.message;
  }
}

// The evidence of one day (UTC, as the tree's day folders; today at first) and camera, loaded when the list
// is opened or the choice changes.
async function loadEvidence() {
  if (!$('evidence').open) return;
  const list = $('ev-list');
  const dayInput = $('ev-day');
  if (!dayInput.value) dayInput.value = new Date().toISOString().slice(0, 10);
  const sel = $('ev-cam');
  for (const name of cams.keys()) {
    if (![...sel.options].some((o) => o.value === name)) sel.appendChild(new Option(name, name));
  }
  try {
    const files = await get(`/api/evidence?day=${enc(dayInput.value)}&camera=${enc(sel.value)}`);
    $('ev-count').textContent = `(${files.length} files)`;
    list.replaceChildren(...files.slice(0, 200).map((f) => {
      const li = el('li');
      const a = el('a', '', f.path);
      a.href = f.url;
      a.target = '_blank';
      a.rel = 'noopener';
      li.appendChild(a);
      return li;
    }));
  } catch (e) {
    $('ev-count').textContent = '';
    list.replaceChildren(el('li', 'muted', e.status === 404 ? 'evidence is off (evidence.enabled)' : e.message));
  }
}

// ---- the loop ----
async function tick() {
  let ok = false;
  try {
    const s = await get('/api/stats');
    renderSys(s);
    renderModel(s.model);
    const list = s.cameras || [];
    $('cams-empty').hidden = list.length > 0;
    $('cams').classList.toggle('multi', list.length > 1);
    const jobs = [get(`/api/events?verdict=NG&limit=${eventsN}`).then(renderEvents)];
    for (const cs of list) {
      const c = camCard(cs.name);
      renderCamStats(c, cs);
      jobs.push(refreshHistory(c, cs), refreshImages(c, cs));
    }
    if (auth.user && Date.now() - camInfoAt > 10000) {
      camInfoAt = Date.now();
      jobs.push(get('/api/cameras').then(renderCamInfo));
    }
    await Promise.all(jobs);
    setConn(true);
    ok = true;
  } catch (e) {
    setConn(false, e);
  }
  const wait = ok ? POLL_MS : Math.min(RETRY_MAX_MS, 1000 * 2 ** Math.min(failures - 1, 4));
  setTimeout(tick, wait);
}

document.addEventListener('DOMContentLoaded', () => {
  $('modal-close').addEventListener('click', closeModal);
  $('modal').addEventListener('click', (e) => { if (e.target === $('modal')) closeModal(); });
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') { closeModal(); $('login').hidden = true; } });
  let rt;
  window.addEventListener('resize', () => { clearTimeout(rt); rt = setTimeout(() => cams.forEach(drawChart), 150); });
  $('login-btn').addEventListener('click', () => { $('login').hidden = false; $('login-user').focus(); });
  $('login-cancel').addEventListener('click', () => { $('login').hidden = true; });
  $('login-form').addEventListener('submit', login);
  $('logout-btn').addEventListener('click', logout);
  $('fa-btn').addEventListener('click', markFalseAlarm);
  $('evidence').addEventListener('toggle', loadEvidence);
  $('ev-day').addEventListener('change', loadEvidence);
  $('ev-cam').addEventListener('change', loadEvidence);
  $('ng-more').addEventListener('click', () => { eventsN = Math.min(1000, eventsN + EVENTS_N); eventsKey = ''; });
  $('cams').addEventListener('input', (e) => { if (e.target.classList.contains('thr-input')) e.target.dataset.dirty = '1'; });
  get('/api/auth/session').then(setAuth, () => {});
  tick();
});
