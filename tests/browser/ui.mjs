// Drives Debian's headless Chromium through playwright-core against a running Tidewatch, for
// tests/web_ui.rs. It looks and clicks; it asserts little itself: it prints what it saw as one JSON object
// on stdout, and the Rust test holds the expectations. Screenshots go to --out.
//
//   node ui.mjs check --base http://127.0.0.1:PORT --out DIR [--service checkout]
//   node ui.mjs bench --base http://127.0.0.1:PORT --out DIR [--runs 5]
//   node ui.mjs scaling --base http://127.0.0.1:PORT --out DIR --cause SERVICE [--policies ns/a,ns/b]
//
// Chromium is /usr/bin/chromium (apt), or $CHROMIUM: playwright's own browser downloads are not used.
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [mode, ...rest] = process.argv.slice(2);
const opt = {};
for (let i = 0; i < rest.length; i += 2) opt[rest[i].replace(/^--/, '')] = rest[i + 1];
if (!['check', 'bench', 'scaling'].includes(mode) || !opt.base || !opt.out) {
  console.error('usage: node ui.mjs check|bench|scaling --base URL --out DIR [--service NAME] [--runs N] [--cause NAME]');
  process.exit(2);
}
mkdirSync(opt.out, { recursive: true });

const profile = mkdtempSync(join(tmpdir(), 'tidewatch-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1440, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const problems = [];
const requests = [];
context.on('page', (p) => watch(p));
const failed = []; // HTTP errors the pages met, by URL
let stage = ''; // what the scaling mode waits for, named in its error
function watch(page) {
  // Chromium logs a failed fetch as a console error without its URL: the response below names it.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push('console: ' + m.text()); });
  page.on('response', (r) => { if (r.status() >= 400) failed.push(r.status() + ' ' + new URL(r.url()).pathname); });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('request', (r) => requests.push(r.url()));
}
const page = context.pages()[0] || (await context.newPage());
watch(page);
page.setDefaultTimeout(30000);

// What the map draws, read from the SVG.
const readMap = () => page.evaluate(() => ({
  nodes: [...document.querySelectorAll('#map g.node')].map((g) => ({
    id: g.dataset.id, kind: g.dataset.kind, health: g.dataset.health, pos: g.getAttribute('transform'),
    text: [...g.querySelectorAll('text')].map((t) => t.textContent),
  })),
  edges: [...document.querySelectorAll('#map g.edge')].map((g) => ({
    source: g.dataset.source, target: g.dataset.target, type: g.dataset.type, health: g.dataset.health,
    label: g.querySelector('.elabel').textContent, path: g.querySelector('path').getAttribute('d'),
  })),
  transform: document.querySelector('#map g.viewport').getAttribute('transform'),
  stats: window.twMap,
  // Pairs of edge labels shown on screen whose boxes overlap (a pixel of antialiasing allowed).
  labelOverlaps: (() => {
    const shown = [...document.querySelectorAll('#map g.edge')]
      .map((g) => ({ id: g.dataset.source + '>' + g.dataset.target, t: g.querySelector('.elabel') }))
      .filter((l) => getComputedStyle(l.t).display !== 'none' && l.t.textContent)
      .map((l) => ({ id: l.id, r: l.t.getBoundingClientRect() }));
    const out = [];
    for (let i = 0; i < shown.length; i++) for (let j = i + 1; j < shown.length; j++) {
      const a = shown[i].r, b = shown[j].r;
      if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1) out.push(shown[i].id + ' / ' + shown[j].id);
    }
    return { shown: shown.length, overlaps: out };
  })(),
}));

// Waits until the map shows every wanted node and edge (traffic keeps arriving while the page loads).
async function waitForMap(wantNodes, wantEdges, ms) {
  const deadline = Date.now() + ms;
  let seen;
  for (;;) {
    seen = await readMap();
    const ids = new Set(seen.nodes.map((n) => n.id));
    const edges = new Set(seen.edges.map((e) => e.source + '>' + e.target));
    if (wantNodes.every((n) => ids.has(n)) && wantEdges.every((e) => edges.has(e))) return seen;
    if (Date.now() > deadline) return seen;
    await page.waitForTimeout(500);
  }
}

async function check() {
  const out = { problems, failed };
  const service = opt.service || 'checkout';
  const wantNodes = (opt.nodes || '').split(',').filter(Boolean);
  const wantEdges = (opt.edges || '').split(',').filter(Boolean);

  // Overview: map, worst services, collector health.
  await page.goto(opt.base + '/');
  await page.waitForSelector('#map[data-state=ready]');
  out.overview = await waitForMap(wantNodes, wantEdges, 20000);
  await page.waitForSelector('#attention table');
  await page.waitForFunction(() => document.querySelector('#collector .verdict .badge')?.textContent !== 'measuring', null, { timeout: 15000 });
  out.attention = await page.$$eval('#attention tbody tr', (rows) => rows.map((r) => ({ service: r.dataset.service, anomalous: r.dataset.anomalous === 'true' })));
  out.collector = await page.$eval('#collector', (e) => e.innerText);
  await page.screenshot({ path: join(opt.out, 'overview.png'), fullPage: true });

  // The full map: select a node, check that a refresh keeps the view and the selection, search.
  await page.goto(opt.base + '/map');
  await page.waitForSelector('#map[data-state=ready]');
  out.map = await waitForMap(wantNodes, wantEdges, 15000);
  await page.click(`#map g.node[data-id="${service}"]`);
  await page.waitForSelector('.map-details h3');
  out.details = await page.$eval('.map-details', (e) => e.innerText);
  // Zoom in a little so edge labels show, then let one live refresh pass.
  await page.mouse.move(700, 450);
  await page.mouse.wheel(0, -300);
  await page.waitForTimeout(200);
  const before = await page.evaluate(() => ({
    transform: document.querySelector('#map g.viewport').getAttribute('transform'),
    refreshes: window.twMap.refreshes,
  }));
  await page.waitForFunction((n) => window.twMap.refreshes > n, before.refreshes, { timeout: 15000 });
  out.afterRefresh = await page.evaluate(() => ({
    transform: document.querySelector('#map g.viewport').getAttribute('transform'),
    selected: [...document.querySelectorAll('#map g.node.sel')].map((g) => g.dataset.id),
    url: location.href,
    labelsShown: [...document.querySelectorAll('#map g.edge .elabel')].filter((t) => getComputedStyle(t).display !== 'none').length,
  }));
  out.beforeRefresh = before;
  await page.screenshot({ path: join(opt.out, 'map-selected.png') });
  await page.fill('.map-toolbar input[type=search]', 'pay');
  out.searchMatches = await page.evaluate(() => [...document.querySelectorAll('#map g.node.match')].map((g) => g.dataset.id));
  await page.fill('.map-toolbar input[type=search]', '');
  await page.dblclick(`#map g.node[data-id="${service}"]`);
  await page.waitForTimeout(300);
  out.focused = await page.evaluate(() => [...document.querySelectorAll('#map g.node')].map((g) => g.dataset.id));
  await page.screenshot({ path: join(opt.out, 'map-focus.png') });

  // Through the details panel to the service page.
  await page.click('.map-details a:has-text("Open service page")');
  await page.waitForURL((u) => u.pathname === '/services/' + service);
  await page.waitForSelector('body[data-state=ready]');
  await page.waitForFunction(() => [...document.querySelectorAll('.chart')].every((c) => c.dataset.state));
  out.service = await page.evaluate(() => ({
    url: location.pathname,
    title: document.getElementById('name').textContent,
    charts: [...document.querySelectorAll('.chart')].map((c) => {
      const svg = c.querySelector('svg');
      const lines = svg ? [...svg.querySelectorAll('polyline[stroke-width="2"]')] : [];
      return {
        metric: c.dataset.metric, state: c.dataset.state, svg: !!svg,
        width: svg ? Math.round(svg.getBoundingClientRect().width) : 0,
        lines: lines.length,
        points: lines.reduce((a, l) => a + l.getAttribute('points').trim().split(/\s+/).length, 0),
        text: svg ? [...svg.querySelectorAll('text')].map((t) => t.textContent.trim()) : [],
      };
    }),
    rows: Object.fromEntries(['operations', 'pods', 'upstream', 'downstream'].map((id) =>
      [id, [...document.querySelectorAll('#' + id + ' tbody tr')].map((r) => r.firstChild.textContent)])),
    summary: document.getElementById('summary').innerText,
  }));
  await page.screenshot({ path: join(opt.out, 'service.png'), fullPage: true });
  out.external = requests.filter((u) => !u.startsWith(opt.base) && !u.startsWith('data:'));
  return out;
}

// The Scaling page (policies, charts, the decision log, incidents), then the incident on the map and on
// the cause's service page. Waits for each thing to appear: the data arrives while the page is open.
async function scaling() {
  const out = { problems, failed };
  const cause = opt.cause;
  const wantPolicies = (opt.policies || '').split(',').filter(Boolean);

  // The incident while it lasts: its cause marked on the overview's map and listed under recent incidents.
  stage = 'the cause on the map';
  await page.goto(opt.base + '/');
  await page.waitForSelector('#map[data-state=ready]');
  await page.waitForFunction((c) => document.querySelector(`#map g.node[data-id="${c}"][data-anomaly=cause]`), cause, { timeout: 150000 });
  stage = 'the incident on the overview';
  await page.waitForFunction((c) => document.querySelector(`#incidents tbody tr[data-cause="${c}"]`), cause, { timeout: 30000 });
  out.map = await readMap();
  out.overviewIncidents = await page.$$eval('#incidents tbody tr', (rows) => rows.map((r) => r.dataset.cause));
  await page.screenshot({ path: join(opt.out, 'overview-incident.png'), fullPage: true });

  // The cause's own page says so.
  stage = 'the note on the cause\'s page';
  await page.goto(opt.base + '/services/' + encodeURIComponent(cause));
  await page.waitForSelector('body[data-state=ready]');
  await page.waitForSelector('#anomaly:not([hidden])', { timeout: 30000 });
  out.serviceNote = await page.$eval('#anomaly', (e) => e.innerText);
  await page.screenshot({ path: join(opt.out, 'service-incident.png'), fullPage: true });

  // The Scaling page, reached from the overview's navigation.
  stage = 'the Scaling page';
  await page.goto(opt.base + '/');
  await page.click('header nav a[href="/scaling"]');
  await page.waitForURL((u) => u.pathname === '/scaling');
  await page.waitForSelector('body[data-state=ready]');
  await page.waitForFunction((want) => want.every((p) => document.querySelector(`#policies .policy[data-policy="${p}"] .scaling-chart svg`)), wantPolicies, { timeout: 30000 });
  stage = 'a scaling action in the log';
  await page.waitForSelector('#log tbody tr[data-kind=scale]', { timeout: 120000 });
  stage = 'the incident on the Scaling page';
  await page.waitForFunction((c) => document.querySelector(`#incidents tbody tr[data-cause="${c}"]`), cause, { timeout: 30000 });
  out.scaling = await page.evaluate(() => ({
    policies: [...document.querySelectorAll('#policies .policy')].map((p) => ({
      id: p.dataset.policy,
      now: p.querySelector('.now').innerText,
      tiles: [...p.querySelectorAll('.tile')].map((t) => t.innerText.replace(/\s+/g, ' ')),
      chart: [...p.querySelectorAll('.scaling-chart svg text')].map((t) => t.textContent.trim()).filter(Boolean),
      chartLines: p.querySelectorAll('.scaling-chart svg polyline').length,
    })),
    rows: [...document.querySelectorAll('#log tbody tr')].map((r) => ({
      kind: r.dataset.kind, action: r.dataset.action, policy: r.dataset.policy, heldBack: r.classList.contains('held-back'),
      cells: [...r.children].map((td) => td.innerText),
    })),
    incidents: [...document.querySelectorAll('#incidents tbody tr')].map((r) => ({ cause: r.dataset.cause, ongoing: r.dataset.ongoing, text: r.innerText })),
  }));
  await page.screenshot({ path: join(opt.out, 'scaling.png'), fullPage: true });
  // Every decision, the quiet ones too.
  await page.check('#show-all');
  out.allRows = await page.$$eval('#log tbody tr', (rows) => rows.length);
  out.external = requests.filter((u) => !u.startsWith(opt.base) && !u.startsWith('data:'));
  return out;
}

async function bench() {
  const runs = Number(opt.runs || 5);
  const loads = [];
  for (let i = 0; i < runs; i++) {
    await page.goto(opt.base + '/map?window=15m', { waitUntil: 'load' });
    await page.waitForFunction(() => window.twMap && window.twMap.ready, null, { timeout: 60000 });
    loads.push(await page.evaluate(() => Object.assign({}, window.twMap)));
  }
  // A live refresh with the same topology (numbers and colours only), and a forced new layout (filter).
  const refreshes = [];
  for (let i = 0; i < runs; i++) {
    refreshes.push(await page.evaluate(async () => {
      const t = performance.now();
      await window.twMapApi.refresh();
      return { ms: performance.now() - t, renderMs: window.twMap.renderMs, fetchMs: window.twMap.fetchMs };
    }));
  }
  const relayouts = [];
  for (let i = 0; i < runs; i++) {
    relayouts.push(await page.evaluate(async () => {
      const cb = document.querySelector('.map-toolbar input[data-health=ok]');
      cb.click();
      cb.click(); // back to all nodes: a full layout of the whole graph
      return { layoutMs: window.twMap.layoutMs, labelMs: window.twMap.labelMs, renderMs: window.twMap.renderMs };
    }));
  }
  const search = await page.evaluate(() => {
    const t = performance.now();
    const input = document.querySelector('.map-toolbar input[type=search]');
    input.value = 'payments';
    input.dispatchEvent(new Event('input'));
    return { ms: performance.now() - t, matches: window.twMap.matches };
  });
  await page.evaluate(() => {
    const input = document.querySelector('.map-toolbar input[type=search]');
    input.value = '';
    input.dispatchEvent(new Event('input'));
  });
  await page.screenshot({ path: join(opt.out, 'map-200.png') });
  await page.mouse.move(720, 450);
  for (let i = 0; i < 4; i++) await page.mouse.wheel(0, -300);
  await page.waitForTimeout(200);
  await page.screenshot({ path: join(opt.out, 'map-200-zoomed.png') });
  // Focus on one service's neighbourhood: the readable view of a big map.
  const focus = await page.evaluate(() => {
    const t = performance.now();
    window.twMapApi.setFocus(opt_focus());
    function opt_focus() { return [...document.querySelectorAll('#map g.node.k-service')].map((g) => g.dataset.id).find((id) => id.startsWith('payments-')) || ''; }
    return { ms: performance.now() - t, nodes: window.twMap.nodes, edges: window.twMap.edges };
  });
  await page.waitForTimeout(200);
  await page.screenshot({ path: join(opt.out, 'map-200-focus.png') });
  await page.goto(opt.base + '/', { waitUntil: 'load' });
  await page.waitForFunction(() => window.twMap && window.twMap.ready, null, { timeout: 60000 });
  const overview = await page.evaluate(() => Object.assign({}, window.twMap));
  await page.screenshot({ path: join(opt.out, 'overview-200.png') });
  return { problems, loads, refreshes, relayouts, search, focus, overview };
}

let result, code = 0;
try {
  result = mode === 'check' ? await check() : mode === 'scaling' ? await scaling() : await bench();
} catch (e) {
  result = { error: (stage ? 'waiting for ' + stage + ': ' : '') + String(e && e.stack || e), problems };
  code = 1;
  try { await page.screenshot({ path: join(opt.out, 'failure.png'), fullPage: true }); } catch (_) { /* closed */ }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result) + '\n');
process.exit(code);
