'use strict';
// Helpers shared by the pages: number formats, health, DOM building, fetching. Everything the API returns is
// put on the page as text (textContent), never as markup, so a service name cannot inject anything.
(function () {
  const TW = {};

  // Health from the error ratio alone: it is what a span tells without a baseline. The thresholds are the
  // usual SLO steps (99 % and 95 % success); latency and anomaly colours come with the models.
  TW.health = function (r) {
    if (!r || !(r.requests > 0)) return 'idle';
    if (r.error_ratio >= 0.05) return 'critical';
    if (r.error_ratio >= 0.01) return 'warning';
    return 'ok';
  };
  TW.HEALTH = ['critical', 'warning', 'ok', 'idle'];
  TW.HEALTH_LABEL = { ok: 'healthy', warning: 'degraded', critical: 'failing', idle: 'no traffic' };
  TW.HEALTH_HELP = 'errors: healthy < 1 %, degraded < 5 %, failing ≥ 5 %';

  TW.fmtRate = function (v) {
    if (v == null || !isFinite(v)) return '–';
    if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M/s';
    if (v >= 1e4) return (v / 1e3).toFixed(0) + 'k/s';
    if (v >= 1e3) return (v / 1e3).toFixed(1) + 'k/s';
    if (v >= 10) return v.toFixed(0) + '/s';
    if (v >= 0.1) return v.toFixed(1) + '/s';
    if (v > 0) return v.toFixed(2) + '/s';
    return '0/s';
  };
  TW.fmtPct = function (r) {
    if (r == null || !isFinite(r)) return '–';
    const p = r * 100;
    if (p === 0) return '0%';
    if (p >= 10) return p.toFixed(0) + '%';
    if (p >= 0.1) return p.toFixed(1) + '%';
    return '<0.1%';
  };
  TW.fmtMs = function (ms) {
    if (ms == null || !isFinite(ms)) return '–';
    if (ms >= 10000) return (ms / 1000).toFixed(0) + ' s';
    if (ms >= 1000) return (ms / 1000).toFixed(1) + ' s';
    if (ms >= 10) return ms.toFixed(0) + ' ms';
    return ms.toFixed(1) + ' ms';
  };
  TW.fmtCount = function (v) {
    if (v == null || !isFinite(v)) return '–';
    if (v >= 1e9) return (v / 1e9).toFixed(2) + 'G';
    if (v >= 1e6) return (v / 1e6).toFixed(2) + 'M';
    if (v >= 1e4) return (v / 1e3).toFixed(1) + 'k';
    return String(Math.round(v));
  };
  TW.fmtBytes = function (v) {
    if (v == null || !isFinite(v)) return '–';
    if (v >= 1 << 30) return (v / (1 << 30)).toFixed(1) + ' GiB';
    if (v >= 1 << 20) return (v / (1 << 20)).toFixed(1) + ' MiB';
    if (v >= 1 << 10) return (v / (1 << 10)).toFixed(1) + ' KiB';
    return v + ' B';
  };

  // el('td', {class: 'name'}, 'text', childNode…): attributes and children; strings become text nodes.
  TW.el = function (tag, attrs) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'onclick') e.addEventListener('click', v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (let i = 2; i < arguments.length; i++) {
      const c = arguments[i];
      if (c == null) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  };

  TW.badge = function (h) {
    return TW.el('span', { class: 'badge ' + h, title: TW.HEALTH_HELP }, TW.HEALTH_LABEL[h]);
  };

  TW.serviceHref = function (name) {
    return '/services/' + encodeURIComponent(name);
  };

  // Fetches JSON; a non-2xx answer becomes an error carrying the API's message.
  TW.getJSON = async function (url) {
    const r = await fetch(url, { cache: 'no-store' });
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.json();
  };

  // Runs `fn` now and then every `ms`, waiting for each run to end first; skips runs while the tab is hidden.
  TW.every = function (ms, fn) {
    let timer = null;
    const tick = async () => {
      if (!document.hidden) {
        try { await fn(); } catch (e) { console.warn(e); }
      }
      timer = setTimeout(tick, ms);
    };
    tick();
    return () => clearTimeout(timer);
  };

  // `5m`, `1h`, `30s` → milliseconds.
  TW.durationMs = function (s) {
    const m = /^(\d+)(s|m|h|d)$/.exec(s || '');
    if (!m) return null;
    return Number(m[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[m[2]];
  };

  // Prometheus text format → [{name, labels, value}]; enough for our own /metrics (no timestamps).
  TW.parseMetrics = function (text) {
    const out = [];
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[3]) {
        const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
        let l;
        while ((l = re.exec(m[3]))) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      }
      out.push({ name: m[1], labels, value: Number(m[4]) });
    }
    return out;
  };

  // A table of `rows`: cols are {title, cell(row) → text or node, cls, left}; `empty` when there are none;
  // rowAttrs(row) gives each row's attributes.
  TW.table = function (cols, rows, empty, rowAttrs) {
    if (!rows.length) return TW.el('div', { class: 'empty' }, empty);
    const t = TW.el('table', { class: 'data' }, TW.el('thead', {}, TW.el('tr', {}, ...cols.map((c) => TW.el('th', { class: c.left || / ?left\b/.test(c.cls || '') ? 'left' : null }, c.title)))));
    const tb = TW.el('tbody');
    for (const r of rows) tb.append(TW.el('tr', rowAttrs ? rowAttrs(r) : {}, ...cols.map((c) => TW.el('td', { class: c.cls || (c.left ? 'left' : null) }, c.cell(r)))));
    t.append(tb);
    return t;
  };

  // `14:03:21`, in the viewer's zone.
  TW.fmtTime = function (ms) {
    return ms == null ? '–' : new Date(ms).toLocaleTimeString([], { hour12: false });
  };

  // Incidents from /api/anomalies: for each likely cause (a service, and a pod when one is singled out), a
  // run of the window closes that had causes, one after the other, naming it. Newest first; `ongoing`
  // while the current window close still names it.
  TW.incidents = function (a) {
    if (!a) return [];
    const key = (c) => c.service + '\u0000' + (c.pod || '');
    const reports = (a.recent || []).filter((r) => (r.causes || []).length).slice().sort((x, y) => x.ts - y.ts);
    const open = new Map(); // key → the incident the previous report continued
    const out = [];
    reports.forEach((r, i) => {
      for (const c of r.causes) {
        const k = key(c);
        let inc = open.get(k);
        if (!inc || inc.last !== i - 1) {
          inc = { key: k, service: c.service, pod: c.pod || null, from: r.ts, symptoms: new Set() };
          open.set(k, inc);
          out.push(inc);
        }
        if (inc.last === i) continue; // the same cause twice in one report
        inc.last = i;
        inc.to = r.ts;
        inc.explanation = c.explanation;
        for (const s of c.symptoms || []) inc.symptoms.add(s);
      }
    });
    const now = new Set((a.causes || []).map(key));
    for (const i of out) {
      i.ongoing = i.last === reports.length - 1 && now.has(i.key);
      i.symptoms = [...i.symptoms].filter((s) => s !== i.service);
    }
    return out.sort((x, y) => y.from - x.from || x.last - y.last);
  };

  // The incidents as a table, with a link to the cause's service page.
  TW.incidentTable = function (list, max) {
    return TW.table([
      { title: 'since', cell: (i) => TW.fmtTime(i.from) },
      { title: 'until', cell: (i) => (i.ongoing ? TW.el('span', { class: 'badge critical' }, 'ongoing') : TW.fmtTime(i.to)) },
      { title: 'likely cause', cls: 'name left', cell: (i) => TW.el('span', {}, TW.el('a', { href: TW.serviceHref(i.service) }, i.service), i.pod ? ' (pod ' + i.pod + ')' : '') },
      { title: 'affected', left: true, cell: (i) => i.symptoms.join(', ') || '–' },
      { title: 'why', cls: 'left wrap', cell: (i) => i.explanation },
    ], list.slice(0, max || 10), 'No incident: the anomaly detector has named no likely cause recently.',
    (i) => ({ 'data-cause': i.service, 'data-ongoing': i.ongoing ? 'true' : 'false' }));
  };

  window.TW = TW;
})();
