// Drives the dashboard in headless Chromium (playwright-core, Debian's /usr/bin/chromium) against a running
// daemon: `node browser_test.mjs URL OUTDIR`. Env: PLAYWRIGHT_CORE (the playwright-core directory), CHROMIUM
// (the browser); DASH_USER, DASH_PASSWORD and DASH_THRESHOLD to log in, set the first camera's threshold and
// mark the newest NG as a false alarm. Writes OUTDIR/dashboard.png, modal.png, offline.png, operator.png, evidence.png and
// OUTDIR/result.json; exits 1 when a check fails (the reasons go to stderr and result.json). The Go test
// (dashboard_test.go) decodes the screenshots, reads result.json and checks the daemon's state.
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

const [url, outDir] = process.argv.slice(2);
if (!url || !outDir) {
  console.error('usage: node browser_test.mjs URL OUTDIR');
  process.exit(2);
}
const pwDir = process.env.PLAYWRIGHT_CORE;
const require = createRequire(path.join(pwDir || process.cwd(), 'package.json'));
const { chromium } = require(pwDir || 'playwright-core');

const WAIT = 45000;
const origin = new URL(url).origin;
const result = { console_errors: [], page_errors: [], external_requests: [], outage_console: [], checks: {}, failures: [] };
let phase = 'normal';
const fail = (msg) => { result.failures.push(msg); console.error('FAIL: ' + msg); };
const step = (msg) => console.log(`[${new Date().toISOString()}] ${msg}`);

// launch() gives the browser a fresh temporary --user-data-dir of its own (and refuses one in args).
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const e = `${m.text()} (${(m.location() || {}).url || ''})`;
    (phase === 'outage' ? result.outage_console : result.console_errors).push(e);
  });
  page.on('pageerror', (e) => result.page_errors.push(String(e && e.stack || e)));
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin + '/') && !u.startsWith('data:') && !u.startsWith('blob:')) result.external_requests.push(u);
  });

  step('load ' + url);
  const resp = await page.goto(url, { waitUntil: 'load' });
  result.checks.status = resp.status();
  result.checks.csp = resp.headers()['content-security-policy'] || '';

  step('wait for a heatmap, a frame, an NG event with its thumbnail and a charted NG point');
  await page.waitForFunction(() => {
    const loaded = (sel) => [...document.querySelectorAll(sel)].some((i) => i.complete && i.naturalWidth > 0);
    return loaded('img.heatmap') && loaded('img.frame') && loaded('.ng-row img') &&
      document.querySelector('svg.chart circle.pt-ng') && document.body.dataset.conn === 'live';
  }, null, { timeout: WAIT, polling: 250 });
  // One more poll period so the stats (fps, latency) are filled in before the picture is taken.
  await page.waitForTimeout(2500);

  const snap = await page.evaluate(() => {
    const t = (sel) => (document.querySelector(sel) || {}).textContent || '';
    const cam = document.querySelector('section.cam');
    return {
      conn: t('#conn'),
      model_name: t('#model-name'),
      model_state: t('#model-state'),
      cameras: [...document.querySelectorAll('section.cam')].map((c) => c.dataset.cam),
      verdict: cam ? cam.querySelector('.verdict').textContent : '',
      fps: cam ? cam.querySelector('.fps').textContent : '',
      p50: cam ? cam.querySelector('.p50').textContent : '',
      ng_rows: document.querySelectorAll('.ng-row').length,
      ng_first: (document.querySelector('.ng-row') || {}).innerText || '',
      chart_points: document.querySelectorAll('svg.chart circle').length,
      chart_ng_points: document.querySelectorAll('svg.chart circle.pt-ng').length,
      chart_has_threshold: !!document.querySelector('svg.chart path.thr'),
      uptime: t('#sys-uptime'),
      outbox: t('#sys-outbox'),
      heatmap_width: Math.max(0, ...[...document.querySelectorAll('img.heatmap')].map((i) => i.naturalWidth)),
    };
  });
  Object.assign(result.checks, snap);
  step('state ' + JSON.stringify(snap));
  if (snap.conn !== 'LIVE') fail(`connection badge ${JSON.stringify(snap.conn)}, want LIVE`);
  if (snap.model_state !== 'RUNNING') fail(`model state ${JSON.stringify(snap.model_state)}, want RUNNING`);
  if (!['OK', 'NG'].includes(snap.verdict)) fail(`camera verdict ${JSON.stringify(snap.verdict)}`);
  if (!snap.chart_has_threshold) fail('chart has no threshold line');
  if (!/\d/.test(snap.uptime)) fail(`uptime ${JSON.stringify(snap.uptime)}`);
  await page.screenshot({ path: path.join(outDir, 'dashboard.png') });

  step('click the newest NG event');
  await page.click('.ng-row');
  await page.waitForFunction(() => {
    const m = document.getElementById('modal');
    const i = document.getElementById('modal-img');
    return !m.hidden && i.complete && i.naturalWidth > 0;
  }, null, { timeout: WAIT });
  result.checks.modal_title = await page.textContent('#modal-title');
  if (!/^NG · /.test(result.checks.modal_title)) fail(`modal title ${JSON.stringify(result.checks.modal_title)}`);
  await page.screenshot({ path: path.join(outDir, 'modal.png') });
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => document.getElementById('modal').hidden, null, { timeout: 5000 });

  step('API away: every /api/ request is refused by the browser');
  phase = 'outage';
  await page.route('**/api/**', (r) => r.abort('connectionrefused'));
  await page.waitForFunction(() => document.body.dataset.conn === 'offline', null, { timeout: WAIT });
  result.checks.offline_badge = await page.textContent('#conn');
  result.checks.offline_detail = await page.textContent('#conn-detail');
  if (result.checks.offline_badge !== 'DISCONNECTED') fail(`offline badge ${JSON.stringify(result.checks.offline_badge)}`);
  // The last data stays on screen while disconnected.
  result.checks.offline_ng_rows = await page.locator('.ng-row').count();
  if (result.checks.offline_ng_rows === 0) fail('NG list emptied while disconnected');
  await page.screenshot({ path: path.join(outDir, 'offline.png') });

  step('API back: the page must recover by itself');
  await page.unroute('**/api/**');
  phase = 'recovered';
  await page.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: WAIT });
  result.checks.recovered_badge = await page.textContent('#conn');

  if (process.env.DASH_USER) await operate(page);
} catch (e) {
  fail(String(e && e.stack || e));
} finally {
  await browser.close().catch(() => {});
}
// operate logs in through the form, sets the first camera's threshold, marks the newest NG as a false alarm
// and opens today's evidence, as an operator would.
async function operate(page) {
  step('log in');
  const readOnly = await page.evaluate(() => ({
    login_visible: !document.getElementById('login-btn').hidden && !document.getElementById('auth').hidden,
    forms_visible: [...document.querySelectorAll('.thr-form')].some((f) => !f.hidden),
  }));
  result.checks.before_login = readOnly;
  if (!readOnly.login_visible) fail('no login button while logged out');
  if (readOnly.forms_visible) fail('a threshold form is shown before any login');
  await page.click('#login-btn');
  await page.fill('#login-user', process.env.DASH_USER);
  await page.fill('#login-pass', process.env.DASH_PASSWORD);
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction((u) => document.body.dataset.user === u, process.env.DASH_USER, { timeout: WAIT });

  step('change the threshold');
  await page.waitForFunction(() => {
    const f = document.querySelector('section.cam .thr-form');
    return f && !f.hidden && /allowed/.test(f.querySelector('.thr-range').textContent);
  }, null, { timeout: WAIT, polling: 250 });
  result.checks.threshold_range = await page.textContent('section.cam .thr-range');
  await page.fill('section.cam .thr-input', process.env.DASH_THRESHOLD);
  await page.click('section.cam .thr-form button[type=submit]');
  await page.waitForFunction(() => {
    const m = document.querySelector('section.cam .thr-msg');
    return /^set /.test(m.textContent) || m.classList.contains('bad');
  }, null, { timeout: WAIT });
  result.checks.threshold_msg = await page.textContent('section.cam .thr-msg');
  if (!/^set /.test(result.checks.threshold_msg)) fail(`threshold change: ${JSON.stringify(result.checks.threshold_msg)}`);
  await page.screenshot({ path: path.join(outDir, 'operator.png') });

  step('mark the newest NG as a false alarm');
  await page.click('.ng-row');
  await page.waitForFunction(() => !document.getElementById('modal').hidden && !document.getElementById('modal-actions').hidden,
    null, { timeout: WAIT });
  await page.click('#fa-btn');
  await page.waitForFunction(() => {
    const m = document.getElementById('fa-msg');
    return /kept as a normal sample/.test(m.textContent) || m.className === 'bad';
  }, null, { timeout: WAIT });
  result.checks.false_alarm_msg = await page.textContent('#fa-msg');
  if (!/kept as a normal sample/.test(result.checks.false_alarm_msg)) fail(`false alarm: ${JSON.stringify(result.checks.false_alarm_msg)}`);
  await page.keyboard.press('Escape');

  step("open today's evidence");
  await page.click('#evidence summary');
  await page.waitForFunction(() => document.querySelectorAll('#ev-list a').length > 0, null, { timeout: WAIT });
  result.checks.evidence_links = await page.locator('#ev-list a').count();
  await page.screenshot({ path: path.join(outDir, 'evidence.png') });
}

if (result.console_errors.length) fail('console errors: ' + result.console_errors.join(' | '));
if (result.page_errors.length) fail('page errors: ' + result.page_errors.join(' | '));
if (result.external_requests.length) fail('requests outside the daemon: ' + result.external_requests.join(' '));
writeFileSync(path.join(outDir, 'result.json'), JSON.stringify(result, null, 2));
process.exit(result.failures.length ? 1 : 0);
