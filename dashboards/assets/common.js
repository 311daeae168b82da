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

  window.TW = TW;
})();
