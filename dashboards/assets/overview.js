'use strict';
// The overview: the live map, the services that fail most now, and the collector's own health read from
// /metrics (the numbers Prometheus scrapes, so the page and the alerts agree).
(function () {
  const el = TW.el;
  TWMap.create(document.getElementById('map'), { url: false });

  const SEVERITY = { critical: 0, warning: 1, ok: 2, idle: 3 };

  // The services to look at first: those the anomaly detector flags (strongest first), then by error
  // health. The detector compares each service with its own recent past, so it also catches a slow
  // service that has no errors; the error ratio catches what it has not learnt yet (its warm-up).
  async function attention() {
    const body = document.querySelector('#attention .body');
    let data, anomalies;
    try {
      [data, anomalies] = await Promise.all([
        TW.getJSON('/api/services?window=5m'),
        TW.getJSON('/api/anomalies').catch(() => null),
      ]);
    } catch (e) {
      body.replaceChildren(el('div', { class: 'empty error-text' }, 'cannot read /api/services: ' + e.message));
      return;
    }
    document.querySelector('#incidents .body').replaceChildren(anomalies
      ? TW.incidentTable(TW.incidents(anomalies), 5)
      : el('div', { class: 'empty error-text' }, 'cannot read /api/anomalies'));
    const scores = new Map(((anomalies && anomalies.services) || []).map((x) => [x.service, x]));
    const list = data.services.map((s) => Object.assign(s, { health: TW.health(s), anomaly: scores.get(s.name) }));
    if (!list.length) {
      body.replaceChildren(el('div', { class: 'empty' }, 'No service has sent spans in the last 5 minutes.'));
      return;
    }
    const flagged = (s) => (s.anomaly && s.anomaly.anomalous ? 1 : 0);
    list.sort((a, b) => flagged(b) - flagged(a) || (flagged(a) && b.anomaly.score - a.anomaly.score) ||
      SEVERITY[a.health] - SEVERITY[b.health] || b.error_ratio - a.error_ratio || (b.p95_ms || 0) - (a.p95_ms || 0));
    const table = el('table', { class: 'data' },
      el('thead', {}, el('tr', {}, el('th', {}, 'service'), el('th', { class: 'left' }, 'health'), el('th', { title: 'anomaly score: 0 normal, 1 certainly anomalous' }, 'anomaly'),
        el('th', {}, 'req/s'), el('th', {}, 'errors'), el('th', {}, 'p95'))));
    const tbody = el('tbody');
    for (const s of list.slice(0, 10)) {
      const a = s.anomaly;
      tbody.append(el('tr', { 'data-service': s.name, 'data-anomalous': a && a.anomalous ? 'true' : 'false' },
        el('td', { class: 'name' }, el('a', { href: TW.serviceHref(s.name), title: s.name }, s.name),
          a && a.anomalous ? el('div', { class: 'small', style: 'color:#6d28d9; white-space:normal' }, a.reason) : null),
        el('td', { class: 'left' }, TW.badge(s.health)),
        el('td', { style: a && a.anomalous ? 'color:#6d28d9; font-weight:600' : null, title: a ? null : 'not scored: too few requests in the last window' },
          a ? (a.learning ? 'learning: ' + a.learning.seen + ' of ' + a.learning.needed + ' windows' : a.score.toFixed(2)) : '–'),
        el('td', {}, TW.fmtRate(s.rate)),
        el('td', {}, TW.fmtPct(s.error_ratio)),
        el('td', {}, TW.fmtMs(s.p95_ms))));
    }
    table.append(tbody);
    const failing = list.filter((s) => s.health === 'critical' || s.health === 'warning').length;
    const odd = list.filter(flagged).length;
    const parts = [table, el('div', { class: 'muted small', style: 'margin-top:8px' },
      list.length + ' services · ' + (odd ? odd + ' anomalous' : 'none anomalous') + ' · ' +
      (failing ? failing + ' with errors above 1 %' : 'none with errors above 1 %') + (list.length > 10 ? ' · showing the 10 first' : ''))];
    const causes = (anomalies && anomalies.causes) || [];
    if (causes.length) {
      const ul = el('ul', { class: 'causes' });
      for (const c of causes.slice(0, 5)) {
        ul.append(el('li', { 'data-cause': c.service },
          el('a', { href: TW.serviceHref(c.service) }, c.service), c.pod ? ' (pod ' + c.pod + ')' : '', ': ', c.explanation));
      }
      parts.push(el('h2', { style: 'margin-top:14px' }, 'Likely causes ', el('span', { class: 'sub' }, 'now, along the dependency graph')), ul);
    }
    body.replaceChildren(...parts);
  }

  // Collector health: totals from /metrics, and rates from the difference with the previous read.
  let prev = null;
  async function collector() {
    const body = document.querySelector('#collector .body');
    let samples;
    try {
      const r = await fetch('/metrics', { cache: 'no-store' });
      if (!r.ok) throw new Error(r.status + ' ' + r.statusText);
      samples = TW.parseMetrics(await r.text());
    } catch (e) {
      body.replaceChildren(el('div', { class: 'empty error-text' }, 'cannot read /metrics: ' + e.message));
      return;
    }
    const now = performance.now();
    const sum = (name, labels) => samples
      .filter((s) => s.name === name && Object.entries(labels || {}).every(([k, v]) => s.labels[k] === v))
      .reduce((a, s) => a + s.value, 0);
    if (samples.some((s) => s.name === 'tidewatch_kafka_partitions_owned')) {
      analyzer(body, sum, now);
      return;
    }
    const signals = [['spans', 'spans'], ['data_points', 'data points'], ['log_records', 'log records']];
    const cur = { t: now };
    for (const [sig] of signals) for (const o of ['accepted', 'rejected', 'refused']) {
      cur[sig + '/' + o] = sum('tidewatch_collector_items_total', { signal: sig, outcome: o });
    }
    const rate = (k) => (prev && now > prev.t ? Math.max(0, (cur[k] - prev[k]) / ((now - prev.t) / 1000)) : null);
    const troubled = prev && signals.some(([sig]) => cur[sig + '/refused'] > prev[sig + '/refused'] || cur[sig + '/rejected'] > prev[sig + '/rejected']);

    const verdict = prev == null
      ? el('div', { class: 'verdict' }, el('span', { class: 'badge idle' }, 'measuring'), 'rates after the next read')
      : troubled
        ? el('div', { class: 'verdict' }, el('span', { class: 'badge critical' }, 'losing data'), 'items were refused or rejected in the last few seconds')
        : signals.every(([sig]) => cur[sig + '/accepted'] === prev[sig + '/accepted'])
          ? el('div', { class: 'verdict' }, el('span', { class: 'badge idle' }, 'idle'), 'nothing received in the last few seconds')
          : el('div', { class: 'verdict' }, el('span', { class: 'badge ok' }, 'accepting everything'), 'nothing refused or rejected in the last few seconds');

    const tiles = el('div', { class: 'tiles' });
    for (const [sig, label] of signals) {
      tiles.append(el('div', { class: 'tile', 'data-signal': sig },
        el('div', { class: 'k' }, label + ' accepted'),
        el('div', { class: 'v' }, prev ? TW.fmtRate(rate(sig + '/accepted')) : TW.fmtCount(cur[sig + '/accepted']))));
    }
    const items = el('table', { class: 'data', style: 'margin-top:10px' },
      el('thead', {}, el('tr', {}, el('th', {}, 'items (total)'), el('th', {}, 'accepted'), el('th', {}, 'rejected'), el('th', {}, 'refused'))));
    const tb = el('tbody');
    for (const [sig, label] of signals) {
      tb.append(el('tr', {}, el('td', {}, label),
        el('td', {}, TW.fmtCount(cur[sig + '/accepted'])),
        el('td', {}, TW.fmtCount(cur[sig + '/rejected'])),
        el('td', {}, TW.fmtCount(cur[sig + '/refused']))));
    }
    items.append(tb);

    const depth = sum('tidewatch_analyzer_queue_depth_batches'), cap = sum('tidewatch_analyzer_queue_capacity_batches');
    const used = sum('tidewatch_analyzer_inflight_bytes'), limit = sum('tidewatch_analyzer_inflight_limit_bytes');
    const series = sum('tidewatch_series_active'), seriesLimit = sum('tidewatch_series_budget_limit'), overflow = sum('tidewatch_series_overflow_total');
    const meter = (v, max) => el('div', { class: 'meter' }, el('div', { style: 'width:' + (max > 0 ? Math.min(100, (100 * v) / max) : 0).toFixed(1) + '%' }));
    const queues = el('div', { class: 'tiles', style: 'margin-top:10px' },
      el('div', { class: 'tile' }, el('div', { class: 'k' }, 'queued batches'), el('div', { class: 'v' }, TW.fmtCount(depth) + ' / ' + TW.fmtCount(cap)), meter(depth, cap)),
      el('div', { class: 'tile' }, el('div', { class: 'k' }, 'in-flight bytes'), el('div', { class: 'v' }, TW.fmtBytes(used)), meter(used, limit)),
      el('div', { class: 'tile', id: 'series-budget', title: 'past the budget new series fold into overflow series' }, el('div', { class: 'k' }, 'active series'),
        el('div', { class: 'v' }, TW.fmtCount(series) + ' / ' + TW.fmtCount(seriesLimit)), meter(series, seriesLimit),
        el('div', { class: overflow > 0 ? 'small error-text' : 'muted small' }, TW.fmtCount(overflow) + ' items in overflow series')));

    const outcomes = new Map();
    for (const s of samples) {
      if (s.name !== 'tidewatch_collector_requests_total' || !s.value) continue;
      outcomes.set(s.labels.outcome, (outcomes.get(s.labels.outcome) || 0) + s.value);
    }
    const requests = el('div', { class: 'muted small', style: 'margin-top:10px' },
      'export requests: ' + (outcomes.size ? [...outcomes].map(([o, v]) => o + ' ' + TW.fmtCount(v)).join(' · ') : 'none yet') +
      ' · batches refused: ' + TW.fmtCount(sum('tidewatch_analyzer_refused_batches_total')));
    body.replaceChildren(verdict, tiles, items, queues, requests);
    prev = cur;
  }

  // An analyzer on Kafka (--role analyze) has no receivers: its own part is reading its partitions. The
  // map and the services above are every partition's (the global view).
  function analyzer(body, sum, now) {
    const cur = {
      t: now,
      records: sum('tidewatch_kafka_records_total'),
      failures: sum('tidewatch_kafka_checkpoint_failures_total'),
    };
    const owned = sum('tidewatch_kafka_partitions_owned');
    const rate = prev && prev.records != null && now > prev.t ? Math.max(0, (cur.records - prev.records) / ((now - prev.t) / 1000)) : null;
    const verdict = prev == null || prev.records == null
      ? el('div', { class: 'verdict' }, el('span', { class: 'badge idle' }, 'measuring'), 'rates after the next read')
      : cur.failures > prev.failures
        ? el('div', { class: 'verdict' }, el('span', { class: 'badge critical' }, 'checkpoints failing'), 'a partition could not be checkpointed in the last few seconds')
        : el('div', { class: 'verdict' }, el('span', { class: 'badge ok' }, 'reading Kafka'), owned + ' partitions owned by this analyzer');
    const tiles = el('div', { class: 'tiles' },
      el('div', { class: 'tile' }, el('div', { class: 'k' }, 'records read'), el('div', { class: 'v' }, rate == null ? TW.fmtCount(cur.records) : TW.fmtRate(rate))),
      el('div', { class: 'tile' }, el('div', { class: 'k' }, 'partitions owned'), el('div', { class: 'v' }, TW.fmtCount(owned))),
      el('div', { class: 'tile' }, el('div', { class: 'k' }, 'checkpoints written'), el('div', { class: 'v' }, TW.fmtCount(sum('tidewatch_kafka_checkpoints_total')))));
    const note = el('div', { class: 'muted small', style: 'margin-top:10px' },
      'partitions resumed: ' + TW.fmtCount(sum('tidewatch_kafka_partitions_resumed_total')) +
      ' · checkpoints fenced: ' + TW.fmtCount(sum('tidewatch_kafka_checkpoints_fenced_total')) +
      ' · checkpoint failures: ' + TW.fmtCount(cur.failures) +
      ' · the map and services are every partition\'s; the receivers\' counters are on the ingest instances\' /metrics');
    body.parentElement.querySelector('h2').firstChild.textContent = 'This analyzer ';
    body.replaceChildren(verdict, tiles, note);
    prev = cur;
  }

  TW.every(5000, attention);
  TW.every(5000, collector);
})();
