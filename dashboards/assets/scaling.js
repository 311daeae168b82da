'use strict';
// The Scaling page: per ServicePolicy, the operator's latest recommendation with its reason and a chart of
// its decisions (replicas against load, capacity and forecast, drawn by the server from the decision log);
// the recent incidents; and the decision log itself. It reads /api/policies (the policies' state),
// /api/decisions (the log) and /api/anomalies, so it shows the demo's simulated cluster and a real one alike.
(function () {
  const el = TW.el;
  const params = new URLSearchParams(location.search);
  const rangeSel = document.getElementById('range');
  if ([...rangeSel.options].some((o) => o.value === params.get('range'))) rangeSel.value = params.get('range');
  const showAll = document.getElementById('show-all');
  let last = null; // the latest answers, so the log's filter redraws without a fetch

  // `namespace/name` of a policy as /api/policies or a decision names it.
  const policyId = (p) => p.policy || (p.namespace && p.name ? p.namespace + '/' + p.name : p.name || p.id);

  const isHeldBack = (d) => d.kind === 'heal' && d.decision && d.decision.action === 'held_back';
  // A decision that did something (or would have, for a held-back restart) or failed to.
  const acted = (d) => (d.action && d.action !== 'none') || isHeldBack(d) || (d.outcome && d.outcome !== 'ok' && d.outcome !== 'dry-run');
  const reasonOf = (d) => (d.decision && d.decision.reason) || '';

  function chartUrl(id) {
    const i = id.indexOf('/');
    const ns = i < 0 ? 'default' : id.slice(0, i), name = i < 0 ? id : id.slice(i + 1);
    return { ns, name };
  }

  async function chart(box, id) {
    const { ns, name } = chartUrl(id);
    const tz = -new Date().getTimezoneOffset();
    const w = Math.max(240, Math.min(2400, Math.round(box.clientWidth || 900)));
    const url = '/charts/policies/' + encodeURIComponent(ns) + '/' + encodeURIComponent(name) + '/replicas.svg?from=-' +
      rangeSel.value + '&to=now&tz=' + tz + '&w=' + w + '&h=280';
    try {
      const r = await fetch(url, { cache: 'no-store' });
      const text = await r.text();
      if (!r.ok) throw new Error(text.trim());
      // Our own server's SVG, drawn from numbers and fixed labels only: safe to put inline.
      box.innerHTML = text;
      box.dataset.state = 'ready';
    } catch (e) {
      box.replaceChildren(el('div', { class: 'empty error-text' }, 'chart unavailable: ' + e.message));
      box.dataset.state = 'error';
    }
  }

  const tile = (k, v, title) => el('div', { class: 'tile', title }, el('div', { class: 'k' }, k), el('div', { class: 'v' }, v));
  const num = (v) => (v == null ? '–' : String(v));

  // The policy's state after its latest reconcile (/api/policies), else what its latest decision logged.
  function stateTiles(state, rec) {
    const tiles = [];
    if (state) {
      tiles.push(tile('replicas', num(state.current_replicas) + (state.ready_replicas != null ? ' (' + state.ready_replicas + ' ready)' : ''), 'spec.replicas of the target, and its ready pods'));
    } else if (rec) {
      tiles.push(tile('replicas', num(rec.current)));
    }
    if (rec) {
      tiles.push(tile('recommended', num(rec.replicas), 'what the operator sets spec.replicas to'),
        tile('HPA alone', num(rec.reactive), 'the HPA algorithm on the pods\' load'),
        tile('from the forecast', num(rec.predictive), 'replicas for the forecast peak, when the forecast is trusted'));
    }
    if (state) {
      if (state.load && state.load.rate != null) tiles.push(tile('load', TW.fmtRate(state.load.rate)));
      if (state.capacity) tiles.push(tile('per replica', TW.fmtRate(state.capacity.requests_per_replica), 'capacity: ' + state.capacity.source));
      if (state.forecast) tiles.push(tile('forecast', state.forecast.trusted ? 'trusted' : 'not trusted', state.forecast.model + (state.forecast.mase != null ? ', MASE ' + state.forecast.mase.toFixed(2) : '')));
      tiles.push(tile('bounds', num(state.min_replicas) + '–' + num(state.max_replicas)));
      if (state.restarts_in_window != null) tiles.push(tile('restarts', num(state.restarts_in_window), 'restarts inside the healing window'));
    }
    return tiles.length ? el('div', { class: 'tiles' }, ...tiles) : null;
  }

  function policyPanel(p, decisions) {
    const mine = decisions.filter((d) => d.policy === p.id);
    const latest = mine.filter((d) => d.kind === 'scale').pop();
    const state = p.state;
    const rec = (state && state.recommendation) || (latest && latest.decision) || null;
    const at = (state && state.updated_ms) || (latest && latest.ts_ms);
    const now = el('div', { class: 'now' });
    if (rec) {
      const verb = rec.replicas > rec.current ? 'scale up' : rec.replicas < rec.current ? 'scale down' : 'hold';
      now.append(el('div', { class: 'rec' }, el('span', { class: 'tag ' + verb.replace(' ', '-') }, verb), ' ',
        el('b', {}, rec.current + ' → ' + rec.replicas + ' replicas'),
        el('span', { class: 'muted small' }, ' · ' + TW.fmtTime(at) + (rec.limit && rec.limit !== 'DesiredWithinRange' ? ' · limited by ' + rec.limit : '') +
          (state && state.dry_run ? ' · dry run' : ''))),
      el('div', { class: 'reason' }, rec.reason));
    } else {
      now.append(el('div', { class: 'empty' }, 'No scaling decision yet: the operator decides every scaler.interval once it sees the target.'));
    }
    // Healing: the board's latest verdict, else the latest logged one that said something.
    const logged = mine.filter((d) => d.kind === 'heal' && (acted(d) || reasonOf(d))).pop();
    const heal = state && state.healing && (state.healing.action !== 'none' || state.healing.reason)
      ? { action: state.healing.action.replace('_', ' '), reason: state.healing.reason, held: state.healing.action === 'held_back', ts: at }
      : logged ? { action: logged.action || 'none', reason: reasonOf(logged), held: isHeldBack(logged), ts: logged.ts_ms } : null;
    if (heal) {
      now.append(el('div', { class: 'reason heal' + (heal.held ? ' held-back' : '') },
        el('b', {}, 'Healing · ' + heal.action + ': '), heal.reason, el('span', { class: 'muted small' }, ' · ' + TW.fmtTime(heal.ts))));
    }
    // The chart box of the previous refresh keeps its chart until the new one has arrived: no flicker.
    const old = document.querySelector('#policies .policy[data-policy="' + CSS.escape(p.id) + '"] .scaling-chart');
    const box = old || el('div', { class: 'svgbox scaling-chart' });
    const events = ((state && state.events) || []).slice(-5).reverse();
    const wasOpen = !!document.querySelector('#policies .policy[data-policy="' + CSS.escape(p.id) + '"] details.events[open]');
    const svc = p.service || (latest && latest.service);
    const target = state && state.target ? ' · ' + (state.target.kind || 'Deployment') + ' ' + state.target.name : '';
    const panel = el('section', { class: 'panel policy', 'data-policy': p.id },
      el('h2', {}, p.id, ' ', el('span', { class: 'sub' }, 'service ', svc ? el('a', { href: TW.serviceHref(svc) }, svc) : '?', target)),
      stateTiles(state, rec), now, box,
      events.length ? el('details', { class: 'events' }, el('summary', {}, 'Events (' + events.length + ' newest)'), TW.table([
        { title: 'time', cell: (e) => TW.fmtTime(e.ts_ms) },
        { title: 'type', left: true, cell: (e) => e.type },
        { title: 'reason', left: true, cell: (e) => e.reason },
        { title: 'note', cls: 'left wrap', cell: (e) => e.note },
      ], events, '')) : null);
    if (wasOpen) panel.querySelector('details.events').open = true;
    return { panel, box };
  }

  function renderPolicies(list, decisions, policiesError) {
    const root = document.getElementById('policies');
    if (!list.length) {
      const why = policiesError
        ? 'The operator\'s policies are not available here (' + policiesError + '), and its decision log is empty.'
        : 'No ServicePolicy yet, and no decision in the log.';
      root.replaceChildren(el('section', { class: 'panel', id: 'no-policies' },
        el('h2', {}, 'No scaling policies'),
        el('p', { class: 'muted' }, why + ' Tidewatch scales and heals a Deployment that a ServicePolicy names, once the operator runs (scaler.enabled: true, in a cluster). `tidewatch demo` runs the whole loop on a simulated cluster.')));
      return [];
    }
    const charts = [];
    root.replaceChildren(...list.map((p) => {
      const { panel, box } = policyPanel(p, decisions);
      charts.push(chart(box, p.id));
      return panel;
    }));
    return charts;
  }

  function renderLog(decisions) {
    const body = document.querySelector('#log .body');
    const since = Date.now() - TW.durationMs(rangeSel.value);
    const inRange = decisions.filter((d) => d.ts_ms >= since);
    const rows = inRange.filter((d) => showAll.checked || acted(d)).reverse();
    const quiet = inRange.length - inRange.filter(acted).length;
    const table = TW.table([
      { title: 'time', cell: (d) => TW.fmtTime(d.ts_ms) },
      { title: 'policy', left: true, cell: (d) => d.policy },
      { title: 'kind', left: true, cell: (d) => d.kind },
      { title: 'action', left: true, cell: (d) => (isHeldBack(d) ? el('span', { class: 'tag held-back' }, d.action || 'held back') : d.action || 'none') },
      { title: 'reason', cls: 'left wrap', cell: reasonOf },
      { title: 'outcome', left: true, cell: (d) => d.outcome },
    ], rows.slice(0, 200), inRange.length
      ? 'No action in this range: ' + quiet + ' decisions changed nothing (tick the box to see them).'
      : 'No decision in this range.',
    (d) => ({ 'data-kind': d.kind, 'data-action': d.action || 'none', 'data-policy': d.policy, class: isHeldBack(d) ? 'held-back' : acted(d) ? 'acted' : null }));
    const note = !showAll.checked && quiet && rows.length ? el('div', { class: 'muted small', style: 'margin-top:6px' }, quiet + ' decisions that changed nothing are hidden.') : null;
    body.replaceChildren(table, ...(note ? [note] : []));
  }

  function renderIncidents(anomalies) {
    const body = document.querySelector('#incidents .body');
    body.replaceChildren(anomalies ? TW.incidentTable(TW.incidents(anomalies), 10) : el('div', { class: 'empty error-text' }, 'cannot read /api/anomalies'));
  }

  async function all() {
    const [pol, dec, an] = await Promise.allSettled([
      TW.getJSON('/api/policies'),
      TW.getJSON('/api/decisions?limit=1000'),
      TW.getJSON('/api/anomalies'),
    ]);
    const decisions = dec.status === 'fulfilled' ? dec.value.decisions || [] : [];
    const policies = new Map();
    if (pol.status === 'fulfilled') {
      for (const p of pol.value.policies || []) {
        const id = policyId(p);
        if (id) policies.set(id, { id, service: p.service, state: p });
      }
    }
    for (const d of decisions) if (!policies.has(d.policy)) policies.set(d.policy, { id: d.policy, service: d.service, state: null });
    const list = [...policies.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
    last = { decisions };
    const charts = renderPolicies(list, decisions, pol.status === 'rejected' ? pol.reason.message : null);
    renderLog(decisions);
    renderIncidents(an.status === 'fulfilled' ? an.value : null);
    if (dec.status === 'rejected') {
      document.querySelector('#log .body').replaceChildren(el('div', { class: 'empty error-text' }, 'cannot read /api/decisions: ' + dec.reason.message));
    }
    await Promise.all(charts);
    document.body.dataset.state = 'ready';
  }

  showAll.addEventListener('change', () => { if (last) renderLog(last.decisions); });
  rangeSel.addEventListener('change', () => {
    const p = new URLSearchParams(location.search);
    p.set('range', rangeSel.value);
    history.replaceState(null, '', location.pathname + '?' + p);
    all();
  });
  TW.every(5000, all);
})();
