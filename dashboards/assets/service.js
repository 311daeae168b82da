'use strict';
// A service's page: RED charts (SVG drawn by the server), its operations and pods, and its neighbours on
// the map. The range is in the URL (?range=1h) so a link shows what its sender saw.
(function () {
  const el = TW.el;
  const name = document.body.dataset.service;
  const enc = encodeURIComponent(name);
  const params = new URLSearchParams(location.search);
  const rangeSel = document.getElementById('range');
  const RANGES = ['5m', '15m', '1h', '6h', '24h'];
  if (RANGES.includes(params.get('range'))) rangeSel.value = params.get('range');
  document.getElementById('on-map').href = '/map?select=' + enc;
  document.getElementById('api-link').href = '/api/services/' + enc + '/red';

  const rangeMs = () => TW.durationMs(rangeSel.value);
  // About 120 points per chart, never finer than a second.
  const stepS = () => Math.max(1, Math.round(rangeMs() / 1000 / 120));

  async function charts() {
    const tz = -new Date().getTimezoneOffset();
    await Promise.all([...document.querySelectorAll('.chart')].map(async (box) => {
      const target = box.querySelector('.svgbox');
      // Drawn at the size of its box, so the axis text is read at the size it was drawn.
      const w = Math.max(240, Math.min(2400, Math.round(target.clientWidth || 640)));
      const url = '/charts/services/' + enc + '/' + box.dataset.metric + '.svg?from=-' + rangeSel.value + '&to=now&step=' + stepS() + 's&tz=' + tz + '&w=' + w + '&h=240' +
        (box.dataset.metric === 'rate' ? '&forecast=1' : '');
      try {
        const r = await fetch(url, { cache: 'no-store' });
        const text = await r.text();
        if (!r.ok) throw new Error(text.trim());
        // Our own server's SVG, drawn from numbers only: safe to put inline, and inline lets CSS size it.
        target.innerHTML = text;
        box.dataset.state = 'ready';
      } catch (e) {
        target.replaceChildren(el('div', { class: 'empty error-text' }, 'chart unavailable: ' + e.message));
        box.dataset.state = 'error';
      }
    }));
  }

  const table = TW.table;
  const redCols = [
    { title: 'req/s', cell: (r) => TW.fmtRate(r.rate) },
    { title: 'errors', cell: (r) => TW.fmtPct(r.error_ratio) },
    { title: 'p95', cell: (r) => TW.fmtMs(r.p95_ms) },
  ];
  const byRate = (a, b) => (b.rate || 0) - (a.rate || 0);

  async function tables() {
    const w = rangeSel.value;
    const [ops, pods, svcs, graph, anomalies] = await Promise.allSettled([
      TW.getJSON('/api/services/' + enc + '/operations?window=' + w),
      TW.getJSON('/api/services/' + enc + '/pods?window=' + w),
      TW.getJSON('/api/services?window=' + w),
      TW.getJSON('/api/graph?window=' + w),
      TW.getJSON('/api/anomalies'),
    ]);
    // What the anomaly detector says about this service now: only shown when it says something.
    const note = document.getElementById('anomaly');
    const notes = [];
    if (anomalies.status === 'fulfilled') {
      const me = (anomalies.value.services || []).find((x) => x.service === name && x.anomalous);
      if (me) notes.push(el('div', { class: 'anomaly-note' }, 'Anomaly now (score ' + me.score.toFixed(2) + '): ' + me.reason));
      for (const c of (anomalies.value.causes || []).filter((c) => c.service === name)) {
        notes.push(el('div', { class: 'anomaly-note' }, 'Likely cause' + (c.pod ? ' (pod ' + c.pod + ')' : '') + ': ' + c.explanation));
      }
    }
    note.replaceChildren(...notes);
    note.hidden = !notes.length;
    const fail = (r) => el('div', { class: 'empty error-text' }, String(r.reason && r.reason.message));

    if (svcs.status === 'fulfilled') {
      const me = svcs.value.services.find((s) => s.name === name) || { requests: 0, rate: 0, errors: 0, error_ratio: 0, p95_ms: null };
      const h = TW.health(me);
      document.getElementById('health').replaceChildren(TW.badge(h));
      const tile = (k, v) => el('div', { class: 'tile' }, el('div', { class: 'k' }, k), el('div', { class: 'v' }, v));
      document.getElementById('summary').replaceChildren(
        tile('requests', TW.fmtCount(me.requests)), tile('rate', TW.fmtRate(me.rate)),
        tile('errors', TW.fmtCount(me.errors)), tile('error ratio', TW.fmtPct(me.error_ratio)),
        tile('p95 latency', TW.fmtMs(me.p95_ms)), tile('range', 'last ' + w));
    }
    document.getElementById('operations').replaceChildren(ops.status === 'fulfilled'
      ? table([{ title: 'operation', cls: 'name', cell: (r) => r.span_name || '(unnamed)' }, { title: 'kind', left: true, cell: (r) => (r.span_kind || '').replace('SPAN_KIND_', '').toLowerCase() }, ...redCols],
        ops.value.operations.slice().sort(byRate), 'No operation in this range.')
      : fail(ops));
    document.getElementById('pods').replaceChildren(pods.status === 'fulfilled'
      ? table([{ title: 'pod', cls: 'name', cell: (r) => r.pod || '(no pod name)' }, ...redCols, { title: 'health', cell: (r) => TW.badge(TW.health(r)) }],
        pods.value.pods.slice().sort(byRate), 'No pod reported in this range (spans without k8s.pod.name).')
      : fail(pods));
    if (graph.status === 'fulfilled') {
      const g = graph.value;
      const virtual = new Set(g.nodes.filter((n) => n.virtual).map((n) => n.id));
      const link = (id) => (virtual.has(id) ? el('span', { title: 'not instrumented' }, id) : el('a', { href: TW.serviceHref(id) }, id));
      const cols = (key) => [{ title: key === 'source' ? 'caller' : 'callee', cls: 'name', cell: (e) => link(e[key]) },
        { title: 'type', left: true, cell: (e) => e.connection_type || 'direct' }, ...redCols];
      document.getElementById('upstream').replaceChildren(
        table(cols('source'), g.edges.filter((e) => e.target === name).sort(byRate), 'Nothing calls this service in this range.'));
      document.getElementById('downstream').replaceChildren(
        table(cols('target'), g.edges.filter((e) => e.source === name).sort(byRate), 'This service calls nothing traced in this range.'));
    } else {
      document.getElementById('upstream').replaceChildren(fail(graph));
      document.getElementById('downstream').replaceChildren(fail(graph));
    }
  }

  async function all() {
    await Promise.all([charts(), tables()]);
    document.body.dataset.state = 'ready';
  }
  rangeSel.addEventListener('change', () => {
    const p = new URLSearchParams(location.search);
    p.set('range', rangeSel.value);
    history.replaceState(null, '', location.pathname + '?' + p);
    all();
  });
  TW.every(10000, all);
  let resized = null;
  window.addEventListener('resize', () => { clearTimeout(resized); resized = setTimeout(charts, 300); });
})();
