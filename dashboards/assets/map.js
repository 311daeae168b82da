'use strict';
// The live dependency map: /api/graph drawn as a layered graph, callers on the left and callees on the
// right, in plain SVG. The layout runs here, in the browser, because the browser is where the view lives:
// a refresh that brings the same nodes and edges only changes colours and numbers, and one that changes
// the topology lays the graph out again under the same pan, zoom and selection.
//
// Readable at a few hundred services: edge labels appear once zoomed in enough to read them (or around
// the selected node), a search box highlights names, health chips filter, and focusing a node keeps only
// its neighbourhood. Everything the tests and the benchmark read is in data-* attributes and `window.twMap`.
(function () {
  const NS = 'http://www.w3.org/2000/svg';
  const NODE_H = 40;
  const COL_GAP = 150; // between columns: room for an edge label
  const ROW_GAP = 16;
  let NODE_W = 160; // set per layout from the longest name shown
  const MANY_EDGES = 60;

  // Wide enough for the longest name (up to a point: longer ones are cut, the tooltip has them whole) and
  // for the numbers line, so small maps stay compact enough to read without zooming.
  function nodeWidth(ids) {
    const longest = Math.min(26, Math.max(0, ...ids.map((id) => id.length)));
    return Math.round(Math.max(150, Math.min(214, longest * 7.6 + 26)));
  }

  function s(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (parent) parent.appendChild(e);
    return e;
  }

  // What a node is: a service (has spans of its own) or a virtual node named by its callers.
  function kindOf(node, incoming) {
    if (!node.virtual) return 'service';
    if (node.id === 'user') return 'user';
    const types = new Set((incoming || []).map((e) => e.connection_type));
    if (types.has('database')) return 'database';
    if (types.has('messaging_system')) return 'queue';
    return 'external';
  }

  // Layered layout (Sugiyama-style, kept small): break cycles, assign columns by longest path from the
  // roots, order each column by the mean position of its neighbours (a few sweeps each way) to cut
  // crossings, then stack each column centred on the middle.
  function layout(ids, edges) {
    NODE_W = nodeWidth(ids);
    const out = new Map(), inc = new Map();
    for (const id of ids) { out.set(id, []); inc.set(id, []); }
    const links = [];
    for (const e of edges) {
      if (e.source === e.target || !out.has(e.source) || !out.has(e.target)) continue;
      links.push(e);
    }
    for (const e of links) { out.get(e.source).push(e.target); inc.get(e.target).push(e.source); }

    // 1. Depth-first from the roots (the `user` node first); an edge back into the current path closes a
    //    cycle and is laid out reversed.
    const byName = [...ids].sort();
    const roots = byName.filter((id) => inc.get(id).length === 0);
    roots.sort((a, b) => (a === 'user' ? -1 : b === 'user' ? 1 : a < b ? -1 : 1));
    const state = new Map(); // 1 on the path, 2 done
    const back = new Set();
    const order = []; // discovery order: keeps a caller's callees together
    const visit = (root) => {
      if (state.has(root)) return;
      const stack = [[root, 0]];
      state.set(root, 1);
      order.push(root);
      while (stack.length) {
        const top = stack[stack.length - 1];
        const succ = out.get(top[0]);
        if (top[1] < succ.length) {
          const next = succ[top[1]++];
          const st = state.get(next);
          if (st === 1) back.add(top[0] + '\u0000' + next);
          else if (st === undefined) {
            state.set(next, 1);
            order.push(next);
            stack.push([next, 0]);
          }
        } else {
          state.set(top[0], 2);
          stack.pop();
        }
      }
    };
    roots.forEach(visit);
    byName.forEach(visit);

    // 2. Columns: longest path over the acyclic edges, in topological order (Kahn).
    const fwdOut = new Map(), fwdIn = new Map();
    for (const id of ids) { fwdOut.set(id, []); fwdIn.set(id, []); }
    for (const e of links) {
      let a = e.source, b = e.target;
      if (back.has(a + '\u0000' + b)) [a, b] = [b, a];
      fwdOut.get(a).push(b);
      fwdIn.get(b).push(a);
    }
    const indeg = new Map(ids.map((id) => [id, fwdIn.get(id).length]));
    const queue = order.filter((id) => indeg.get(id) === 0);
    const layer = new Map(ids.map((id) => [id, 0]));
    const topo = [];
    while (queue.length) {
      const v = queue.shift();
      topo.push(v);
      for (const w of fwdOut.get(v)) {
        layer.set(w, Math.max(layer.get(w), layer.get(v) + 1));
        indeg.set(w, indeg.get(w) - 1);
        if (indeg.get(w) === 0) queue.push(w);
      }
    }
    // A root other than `user` (a batch job, a service called by nothing traced) sits just before its
    // first callee rather than at the far left, so its edges stay short.
    for (let i = topo.length - 1; i >= 0; i--) {
      const v = topo[i];
      if (fwdIn.get(v).length || v === 'user' || !fwdOut.get(v).length) continue;
      layer.set(v, Math.max(0, Math.min(...fwdOut.get(v).map((w) => layer.get(w))) - 1));
    }

    // 3. Order within columns.
    const nLayers = Math.max(0, ...layer.values()) + 1;
    const cols = Array.from({ length: nLayers }, () => []);
    const rank = new Map(order.map((id, i) => [id, i]));
    for (const id of [...ids].sort((a, b) => rank.get(a) - rank.get(b))) cols[layer.get(id)].push(id);
    const y = new Map();
    const place = (col) => {
      const h = col.length * (NODE_H + ROW_GAP) - ROW_GAP;
      col.forEach((id, i) => y.set(id, i * (NODE_H + ROW_GAP) - h / 2));
    };
    cols.forEach(place);
    const sweep = (col, neighbours) => {
      const key = new Map();
      col.forEach((id, i) => {
        const ys = neighbours.get(id).filter((n) => y.has(n) && layer.get(n) !== layer.get(id)).map((n) => y.get(n));
        key.set(id, ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : y.get(id));
        key.set(id + '\u0000i', i);
      });
      col.sort((a, b) => key.get(a) - key.get(b) || key.get(a + '\u0000i') - key.get(b + '\u0000i'));
      place(col);
    };
    for (let it = 0; it < 4; it++) {
      for (let l = 1; l < nLayers; l++) sweep(cols[l], inc);
      for (let l = nLayers - 2; l >= 0; l--) sweep(cols[l], out);
    }
    for (let l = 1; l < nLayers; l++) sweep(cols[l], inc);

    const pos = new Map();
    for (const id of ids) pos.set(id, { x: layer.get(id) * (NODE_W + COL_GAP), y: y.get(id), layer: layer.get(id) });
    return { pos, back, layers: nLayers };
  }

  function truncate(name, n) {
    return name.length > n ? name.slice(0, n - 1) + '…' : name;
  }

  function edgeKey(e) {
    return e.source + '\u0000' + e.target + '\u0000' + (e.connection_type || '');
  }

  function edgeLabel(e) {
    return TW.fmtRate(e.rate) + ' · ' + TW.fmtPct(e.error_ratio) + ' · p95 ' + TW.fmtMs(e.p95_ms);
  }

  function nodeStat(n) {
    if (n.kind !== 'service') return n.kind + ' · ' + TW.fmtRate(n.rate) + ' · ' + TW.fmtPct(n.error_ratio);
    return TW.fmtRate(n.rate) + ' · ' + TW.fmtPct(n.error_ratio) + ' · ' + TW.fmtMs(n.p95_ms);
  }

  // Creates a map in `root` (an element that has a height). Options: window (default '5m'), refreshMs
  // (default 5000), details (show the side panel, default true), url (read and write ?select=&focus=).
  function create(root, opts) {
    opts = Object.assign({ window: '5m', refreshMs: 5000, details: true, url: false }, opts || {});
    const params = new URLSearchParams(location.search);
    const st = {
      window: (opts.url && params.get('window')) || opts.window,
      data: null, // {nodes: Map, edges: [], in: Map, out: Map}
      selected: (opts.url && params.get('select')) || null,
      focus: (opts.url && params.get('focus')) || null,
      depth: 1,
      query: '',
      show: new Set(TW.HEALTH),
      view: { x: 0, y: 0, k: 1 },
      userMoved: false,
      signature: '',
      layout: null,
      nodeEls: new Map(),
      anomalies: new Map(), // service → the detector's state, anomalous ones only
      causes: new Map(), // service → likely cause
      edgeEls: new Map(),
      lastError: null,
    };
    const stats = { ready: false, refreshes: 0, fetchMs: 0, layoutMs: 0, labelMs: 0, renderMs: 0, firstRenderMs: 0, payloadBytes: 0, nodes: 0, edges: 0 };
    window.twMap = stats;
    const t0 = performance.now();

    // Toolbar.
    root.classList.add('map-wrap');
    const bar = TW.el('div', { class: 'map-toolbar' });
    const search = TW.el('input', { type: 'search', placeholder: 'Search services…', 'aria-label': 'search services' });
    const chips = TW.el('div', { class: 'chips', title: TW.HEALTH_HELP });
    const colours = { ok: 'var(--ok)', warning: 'var(--warning)', critical: 'var(--critical)', idle: 'var(--idle)' };
    for (const h of TW.HEALTH) {
      const cb = TW.el('input', { type: 'checkbox', checked: true, 'data-health': h });
      cb.addEventListener('change', () => {
        if (cb.checked) st.show.add(h); else st.show.delete(h);
        st.userMoved = false;
        draw();
      });
      chips.append(TW.el('label', { class: 'chip' }, cb, TW.el('span', { class: 'dot', style: 'background:' + colours[h] }), TW.HEALTH_LABEL[h]));
    }
    const win = TW.el('select', { 'aria-label': 'time window', title: 'RED over the last…' });
    for (const w of ['1m', '5m', '15m', '1h']) win.append(TW.el('option', { value: w, selected: w === st.window }, 'last ' + w));
    win.addEventListener('change', () => { st.window = win.value; refreshNow(); });
    const fit = TW.el('button', { type: 'button', title: 'fit the map to the view' }, 'Fit');
    const zin = TW.el('button', { type: 'button', title: 'zoom in' }, '+');
    const zout = TW.el('button', { type: 'button', title: 'zoom out' }, '−');
    const focusNote = TW.el('span', { class: 'focus-note', hidden: true });
    const status = TW.el('span', { class: 'status' }, 'loading…');
    bar.append(search, chips, win, fit, zin, zout, focusNote, status);

    const body = TW.el('div', { class: 'map-body' });
    const canvas = TW.el('div', { class: 'map-canvas' });
    const svg = s('svg', { role: 'img', 'aria-label': 'service dependency map' });
    const defs = s('defs', {}, svg);
    for (const [name, colour] of [['ok', '#94a3b8'], ['warning', '#d97706'], ['critical', '#dc2626'], ['idle', '#cbd5e1']]) {
      const m = s('marker', { id: 'tw-arrow-' + name, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, orient: 'auto', markerUnits: 'userSpaceOnUse' }, defs);
      s('path', { d: 'M0,0 L10,5 L0,10 z', fill: colour }, m);
    }
    const viewport = s('g', { class: 'viewport' }, svg);
    const edgeLayer = s('g', { class: 'edges' }, viewport);
    const nodeLayer = s('g', { class: 'nodes' }, viewport);
    const message = TW.el('div', { class: 'message', hidden: true });
    const legend = TW.el('div', { class: 'map-legend' }, 'colour: ' + TW.HEALTH_HELP + ' · purple outline: anomaly (vs its own recent past) · dashed box: not instrumented · edge label: rate · errors · p95 · scroll to zoom, drag to pan, double-click to focus');
    canvas.append(svg, message, legend);
    body.append(canvas);
    // The details float over the map while a node is selected, so selecting never reflows the map.
    const details = opts.details ? TW.el('aside', { class: 'map-details', hidden: true }) : null;
    if (details) canvas.append(details);
    root.append(bar, body);

    // --- view ---
    function applyView() {
      const v = st.view;
      viewport.setAttribute('transform', 'translate(' + v.x.toFixed(1) + ',' + v.y.toFixed(1) + ') scale(' + v.k.toFixed(4) + ')');
      // Below these scales the text would be under ~7 px on screen: unreadable, and only clutter.
      svg.classList.toggle('lod-far', v.k < 0.62);
      svg.classList.toggle('lod-vfar', v.k < 0.4);
    }
    function bbox() {
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const id of st.nodeEls.keys()) {
        const p = st.layout.pos.get(id);
        x0 = Math.min(x0, p.x); y0 = Math.min(y0, p.y);
        x1 = Math.max(x1, p.x + NODE_W); y1 = Math.max(y1, p.y + NODE_H);
      }
      return isFinite(x0) ? { x0, y0, x1, y1 } : null;
    }
    function fitView() {
      const b = st.layout && bbox();
      if (!b) return;
      // The floating details panel covers the right of the map: fit into what it leaves.
      const covered = details && !details.hidden ? details.offsetWidth + 10 : 0;
      const w = (svg.clientWidth || 800) - covered, h = svg.clientHeight || 500, pad = 30;
      const k = Math.max(0.08, Math.min(1.25, (w - 2 * pad) / (b.x1 - b.x0), (h - 2 * pad) / (b.y1 - b.y0)));
      st.view = { k, x: (w - k * (b.x0 + b.x1)) / 2, y: (h - k * (b.y0 + b.y1)) / 2 };
      applyView();
    }
    function zoomAt(f, mx, my) {
      const v = st.view;
      const k = Math.max(0.05, Math.min(4, v.k * f));
      st.view = { k, x: mx - ((mx - v.x) * k) / v.k, y: my - ((my - v.y) * k) / v.k };
      st.userMoved = true;
      applyView();
    }
    function centerOn(id) {
      const p = st.layout && st.layout.pos.get(id);
      if (!p) return;
      const k = Math.max(st.view.k, 0.9);
      st.view = { k, x: svg.clientWidth / 2 - k * (p.x + NODE_W / 2), y: svg.clientHeight / 2 - k * (p.y + NODE_H / 2) };
      st.userMoved = true;
      applyView();
    }
    fit.addEventListener('click', () => { st.userMoved = false; fitView(); });
    zin.addEventListener('click', () => zoomAt(1.25, svg.clientWidth / 2, svg.clientHeight / 2));
    zout.addEventListener('click', () => zoomAt(0.8, svg.clientWidth / 2, svg.clientHeight / 2));
    svg.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      const r = svg.getBoundingClientRect();
      zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
    }, { passive: false });
    let drag = null;
    svg.addEventListener('pointerdown', (ev) => {
      if (ev.button !== 0) return;
      const node = ev.target.closest && ev.target.closest('.node');
      drag = { x: ev.clientX, y: ev.clientY, vx: st.view.x, vy: st.view.y, moved: false, node: node ? node.dataset.id : null };
      svg.setPointerCapture(ev.pointerId);
    });
    svg.addEventListener('pointermove', (ev) => {
      if (!drag) return;
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return;
      drag.moved = true;
      svg.classList.add('dragging');
      st.view = { k: st.view.k, x: drag.vx + dx, y: drag.vy + dy };
      st.userMoved = true;
      applyView();
    });
    // Clicks are told from drags here (the pointer is captured, so click events would all name the SVG).
    let lastClick = { id: null, t: 0 };
    svg.addEventListener('pointerup', (ev) => {
      if (drag && !drag.moved) {
        const double = drag.node && lastClick.id === drag.node && ev.timeStamp - lastClick.t < 400;
        lastClick = { id: drag.node, t: ev.timeStamp };
        if (double) setFocus(drag.node); else select(drag.node);
      }
      drag = null;
      svg.classList.remove('dragging');
    });
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') { if (st.focus) setFocus(null); else select(null); }
    });
    search.addEventListener('input', () => { st.query = search.value.trim().toLowerCase(); decorate(); });
    search.addEventListener('keydown', (ev) => {
      if (ev.key !== 'Enter') return;
      const hit = [...st.nodeEls.keys()].find((id) => id.toLowerCase().includes(st.query));
      if (hit) { select(hit); centerOn(hit); }
    });

    // --- state changes ---
    function syncUrl() {
      if (!opts.url) return;
      const p = new URLSearchParams(location.search);
      for (const [k, v] of [['select', st.selected], ['focus', st.focus], ['window', st.window === opts.window ? null : st.window]]) {
        if (v) p.set(k, v); else p.delete(k);
      }
      const q = p.toString();
      history.replaceState(null, '', location.pathname + (q ? '?' + q : ''));
    }
    function select(id) {
      st.selected = id || null;
      syncUrl();
      decorate();
      renderDetails();
    }
    function setFocus(id) {
      st.focus = id || null;
      if (id) st.selected = id;
      st.userMoved = false;
      syncUrl();
      draw();
    }

    // --- data → visible graph ---
    function visibleIds() {
      const d = st.data;
      let ids = [...d.nodes.keys()];
      if (st.focus && d.nodes.has(st.focus)) {
        const keep = new Set([st.focus]);
        for (const [dir, key] of [[d.out, 'target'], [d.in, 'source']]) {
          let frontier = [st.focus];
          for (let i = 0; i < st.depth; i++) {
            const next = [];
            for (const id of frontier) for (const e of dir.get(id) || []) {
              if (!keep.has(e[key])) { keep.add(e[key]); next.push(e[key]); }
            }
            frontier = next;
          }
        }
        ids = ids.filter((id) => keep.has(id));
      }
      return ids.filter((id) => st.show.has(d.nodes.get(id).health) || id === st.focus);
    }

    function setData(g) {
      const nodes = new Map(), inE = new Map(), outE = new Map();
      for (const e of g.edges) {
        e.health = TW.health(e);
        if (!outE.has(e.source)) outE.set(e.source, []);
        if (!inE.has(e.target)) inE.set(e.target, []);
        outE.get(e.source).push(e);
        inE.get(e.target).push(e);
      }
      for (const n of g.nodes) {
        n.kind = kindOf(n, inE.get(n.id));
        // A virtual node nobody calls (`user`, a peer named by peer.service) is seen through its calls.
        if (n.virtual && !(inE.get(n.id) || []).length && (outE.get(n.id) || []).length) {
          const calls = outE.get(n.id);
          n.requests = calls.reduce((a, e) => a + (e.requests || 0), 0);
          n.errors = calls.reduce((a, e) => a + (e.errors || 0), 0);
          n.rate = calls.reduce((a, e) => a + (e.rate || 0), 0);
          n.error_ratio = n.requests > 0 ? n.errors / n.requests : 0;
          n.p95_ms = Math.max(...calls.map((e) => (e.p95_ms == null ? -Infinity : e.p95_ms)));
          if (!isFinite(n.p95_ms)) n.p95_ms = null;
        }
        n.health = TW.health(n);
        nodes.set(n.id, n);
      }
      st.data = { nodes, edges: g.edges, in: inE, out: outE };
    }

    // Redraws: lays out again if the visible topology changed, else updates in place.
    function draw() {
      if (!st.data) return;
      const t = performance.now();
      const ids = visibleIds();
      const idSet = new Set(ids);
      const edges = st.data.edges.filter((e) => idSet.has(e.source) && idSet.has(e.target));
      const signature = ids.join('\u0001') + '\u0002' + edges.map(edgeKey).join('\u0001');
      let relaid = false;
      if (signature !== st.signature) {
        const tl = performance.now();
        st.layout = layout(ids, edges);
        stats.layoutMs = performance.now() - tl;
        st.signature = signature;
        rebuild(ids, edges);
        relaid = true;
      }
      update(ids, edges);
      // Past a few dozen edges, labels everywhere hide the graph: they show for the selected node's
      // edges and under the pointer (and all of them once the view is focused on a neighbourhood).
      svg.classList.toggle('many-edges', edges.length > MANY_EDGES);
      decorate();
      renderDetails();
      if (!ids.length) {
        message.hidden = false;
        message.textContent = st.data.nodes.size
          ? 'No node matches the health filter.'
          : 'No traffic in the last ' + st.window + ' yet. Send OTLP traces to this Tidewatch, or run `tidewatch demo`.';
      } else message.hidden = true;
      if (relaid && !st.userMoved) fitView();
      focusNote.hidden = !st.focus;
      if (st.focus) {
        focusNote.replaceChildren('Neighbourhood of ' + st.focus + ' ', TW.el('a', { href: '#', onclick: (ev) => { ev.preventDefault(); setFocus(null); } }, '(show all)'));
      }
      stats.renderMs = performance.now() - t;
      stats.nodes = ids.length;
      stats.edges = edges.length;
    }

    function edgePath(e) {
      const a = st.layout.pos.get(e.source), b = st.layout.pos.get(e.target);
      const sx = a.x + NODE_W, sy = a.y + NODE_H / 2, tx = b.x, ty = b.y + NODE_H / 2;
      if (b.layer > a.layer) {
        const c = Math.max(40, (tx - sx) / 2);
        return { d: `M${sx},${sy} C${sx + c},${sy} ${tx - c},${ty} ${tx},${ty}`, forward: true, sx, sy, tx, ty };
      }
      // Same column or backwards (a cycle): loop out to the right of the caller and into the left of the callee.
      const c = 90 + Math.abs(a.layer - b.layer) * 40;
      const mx = (sx + c + tx - c) / 2;
      const my = Math.min(sy, ty) - NODE_H - 20;
      return { d: `M${sx},${sy} C${sx + c},${sy} ${sx + c},${my} ${mx},${my} S${tx - c},${ty} ${tx},${ty}`, forward: false, lx: mx, ly: my };
    }

    // Edge labels sit beside a node rather than mid-edge, where fanning edges would pile them up: next to
    // the callee when the caller fans out more than the callee fans in, else next to the caller. Labels
    // beside the same node are stacked in the order of the edges' other ends, so they read like a list.
    // Then no two labels may overlap, nor sit on a node: a label that would is moved to the first free
    // place among the other end of its edge, its middle, and small steps up or down from where it was.
    function placeLabels(edges, paths) {
      const outdeg = new Map(), indeg = new Map();
      for (const e of edges) {
        outdeg.set(e.source, (outdeg.get(e.source) || 0) + 1);
        indeg.set(e.target, (indeg.get(e.target) || 0) + 1);
      }
      const groups = new Map();
      const place = new Map();
      const wanted = []; // forward edges in placing order: [edge, preferred place, other places]
      for (const e of edges) {
        const p = paths.get(edgeKey(e));
        if (!p.forward) {
          place.set(edgeKey(e), { x: p.lx, y: p.ly - 5, anchor: 'middle' });
          continue;
        }
        const nearTarget = (outdeg.get(e.source) || 0) > (indeg.get(e.target) || 0);
        const key = (nearTarget ? 't\u0000' + e.target : 's\u0000' + e.source);
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push({ e, p, nearTarget, other: nearTarget ? p.sy : p.ty });
      }
      for (const list of groups.values()) {
        list.sort((a, b) => a.other - b.other);
        list.forEach((l, i) => {
          const dy = (i - (list.length - 1) / 2) * 13 - 5;
          const atTarget = { x: l.p.tx - 10, y: l.p.ty + dy, anchor: 'end' };
          const atSource = { x: l.p.sx + 10, y: l.p.sy + dy, anchor: 'start' };
          const middle = { x: (l.p.sx + l.p.tx) / 2, y: (l.p.sy + l.p.ty) / 2 - 5, anchor: 'middle' };
          wanted.push([l.e, l.nearTarget ? atTarget : atSource, [l.nearTarget ? atSource : atTarget, middle]]);
        });
      }
      const taken = boxGrid();
      for (const id of st.layout.pos.keys()) {
        const n = st.layout.pos.get(id);
        taken.add({ x0: n.x, x1: n.x + NODE_W, y0: n.y, y1: n.y + NODE_H });
      }
      for (const l of place.values()) taken.add(labelBox(l, 24));
      for (const [e, first, others] of wanted) {
        const chars = edgeLabel(e).length + 2; // numbers change between refreshes: a little slack
        const candidates = [first, ...others];
        for (const step of [1, -1, 2, -2, 3, -3]) candidates.push(Object.assign({}, first, { y: first.y + step * 13 }));
        const free = candidates.find((c) => !taken.hits(labelBox(c, chars))) || first;
        taken.add(labelBox(free, chars));
        place.set(edgeKey(e), free);
      }
      return place;
    }

    // Boxes bucketed by 100-unit cells, so a big map checks a label against its neighbours only.
    function boxGrid() {
      const cells = new Map();
      const each = (b, f) => {
        for (let cx = Math.floor(b.x0 / 100); cx <= Math.floor(b.x1 / 100); cx++) {
          for (let cy = Math.floor(b.y0 / 100); cy <= Math.floor(b.y1 / 100); cy++) if (f(cx + ',' + cy)) return true;
        }
        return false;
      };
      return {
        add: (b) => each(b, (k) => { if (!cells.has(k)) cells.set(k, []); cells.get(k).push(b); }),
        hits: (b) => each(b, (k) => (cells.get(k) || []).some((o) => overlaps(o, b))),
      };
    }

    // A label's box in layout units: 11 px text, about 6.2 px a character, baseline at y.
    function labelBox(l, chars) {
      const w = chars * 6.2;
      const x0 = l.anchor === 'end' ? l.x - w : l.anchor === 'middle' ? l.x - w / 2 : l.x;
      return { x0, x1: x0 + w, y0: l.y - 10, y1: l.y + 3 };
    }

    function overlaps(a, b) {
      return a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
    }

    function rebuild(ids, edges) {
      edgeLayer.replaceChildren();
      nodeLayer.replaceChildren();
      st.edgeEls.clear();
      st.nodeEls.clear();
      const paths = new Map(edges.map((e) => [edgeKey(e), edgePath(e)]));
      const tl = performance.now();
      const labels = placeLabels(edges, paths);
      stats.labelMs = performance.now() - tl;
      for (const e of edges) {
        const g = s('g', { class: 'edge', 'data-source': e.source, 'data-target': e.target, 'data-type': e.connection_type || 'direct' }, edgeLayer);
        const p = paths.get(edgeKey(e)), l = labels.get(edgeKey(e));
        s('path', { class: 'ehit', d: p.d }, g); // a wide invisible twin, so the edge is easy to point at
        const path = s('path', { class: 'eline', d: p.d }, g);
        const label = s('text', { class: 'elabel', x: l.x, y: l.y, 'text-anchor': l.anchor }, g);
        const title = s('title', {}, g);
        if (st.layout.back.has(e.source + '\u0000' + e.target)) g.classList.add('back');
        st.edgeEls.set(edgeKey(e), { g, path, label, title });
      }
      for (const id of ids) {
        const p = st.layout.pos.get(id);
        const g = s('g', { class: 'node', 'data-id': id, transform: `translate(${p.x},${p.y})` }, nodeLayer);
        s('rect', { class: 'nbox', width: NODE_W, height: NODE_H, rx: 7 }, g);
        s('rect', { class: 'nbar', width: 5, height: NODE_H - 8, x: 4, y: 4, rx: 2 }, g);
        const name = s('text', { class: 'nname', x: 15, y: 17 }, g);
        name.textContent = truncate(id, 24);
        const stat = s('text', { class: 'nstat', x: 15, y: 32 }, g);
        const flag = s('text', { class: 'nflag', x: NODE_W - 4, y: -4, 'text-anchor': 'end' }, g);
        const title = s('title', {}, g);
        st.nodeEls.set(id, { g, stat, flag, title });
      }
    }

    function update(ids, edges) {
      for (const e of edges) {
        const el = st.edgeEls.get(edgeKey(e));
        if (!el) continue;
        el.g.setAttribute('class', 'edge h-' + e.health + (st.layout.back.has(e.source + '\u0000' + e.target) ? ' back' : ''));
        el.g.dataset.health = e.health;
        el.path.setAttribute('stroke-width', (1.2 + Math.min(3.5, Math.log10(1 + (e.rate || 0)))).toFixed(2));
        el.path.setAttribute('marker-end', 'url(#tw-arrow-' + e.health + ')');
        el.label.textContent = edgeLabel(e);
        el.title.textContent = e.source + ' → ' + e.target + (e.connection_type ? ' (' + e.connection_type + ')' : '') + '\n' + edgeLabel(e);
      }
      for (const id of ids) {
        const n = st.data.nodes.get(id), el = st.nodeEls.get(id);
        const anomaly = st.anomalies.get(id), cause = st.causes.get(id);
        el.g.setAttribute('class', 'node k-' + n.kind + ' h-' + n.health + (n.virtual ? ' virtual' : '') +
          (anomaly ? ' anomalous' : '') + (cause ? ' cause' : ''));
        el.g.dataset.kind = n.kind;
        el.g.dataset.health = n.health;
        el.g.dataset.anomaly = cause ? 'cause' : anomaly ? 'anomalous' : '';
        el.stat.textContent = nodeStat(n);
        el.flag.textContent = cause ? 'likely cause' : anomaly ? 'anomaly' : '';
        el.title.textContent = id + ' (' + n.kind + ', ' + TW.HEALTH_LABEL[n.health] + ')\n' + nodeStat(n) +
          (anomaly ? '\nanomaly: ' + anomaly.reason : '') + (cause ? '\n' + cause.explanation : '');
      }
    }

    // Selection and search highlights: classes only, no layout.
    function decorate() {
      const sel = st.selected && st.nodeEls.has(st.selected) ? st.selected : null;
      const hl = new Set();
      if (sel) {
        hl.add(sel);
        for (const e of (st.data.out.get(sel) || []).concat(st.data.in.get(sel) || [])) { hl.add(e.source); hl.add(e.target); }
      }
      svg.classList.toggle('has-sel', !!sel);
      svg.classList.toggle('has-q', !!st.query);
      let matches = 0;
      for (const [id, el] of st.nodeEls) {
        el.g.classList.toggle('sel', id === sel);
        el.g.classList.toggle('hl', hl.has(id));
        const m = !!st.query && id.toLowerCase().includes(st.query);
        if (m) matches++;
        el.g.classList.toggle('match', m);
      }
      for (const el of st.edgeEls.values()) {
        const a = el.g.dataset.source, b = el.g.dataset.target;
        el.g.classList.toggle('hl', !!sel && (a === sel || b === sel));
      }
      stats.matches = matches;
    }

    function neighbourList(title, list, other) {
      const ul = TW.el('ul');
      for (const e of list.slice().sort((a, b) => (b.rate || 0) - (a.rate || 0))) {
        const id = e[other];
        ul.append(TW.el('li', {},
          TW.el('span', { class: 'nb', onclick: () => { select(id); centerOn(id); } }, id),
          TW.el('span', { class: 'st' }, edgeLabel(e) + (e.connection_type ? ' · ' + e.connection_type : ''))));
      }
      if (!list.length) ul.append(TW.el('li', { class: 'muted' }, 'none'));
      return [TW.el('h4', {}, title + ' (' + list.length + ')'), ul];
    }

    function renderDetails() {
      if (!details) return;
      const n = st.selected && st.data && st.data.nodes.get(st.selected);
      details.hidden = !n;
      if (!n) return;
      const actions = TW.el('div', { class: 'actions' });
      // The service page opens on the map's window (at least its shortest range).
      const range = TW.durationMs(st.window) > TW.durationMs('5m') ? st.window : '5m';
      if (n.kind === 'service') actions.append(TW.el('a', { href: TW.serviceHref(n.id) + '?range=' + range }, 'Open service page →'));
      actions.append(st.focus === n.id
        ? TW.el('button', { type: 'button', onclick: () => setFocus(null) }, 'Show all')
        : TW.el('button', { type: 'button', onclick: () => setFocus(n.id) }, 'Focus neighbourhood'));
      const tiles = TW.el('div', { class: 'tiles' },
        TW.el('div', { class: 'tile' }, TW.el('div', { class: 'k' }, 'rate'), TW.el('div', { class: 'v' }, TW.fmtRate(n.rate))),
        TW.el('div', { class: 'tile' }, TW.el('div', { class: 'k' }, 'errors'), TW.el('div', { class: 'v' }, TW.fmtPct(n.error_ratio))),
        TW.el('div', { class: 'tile' }, TW.el('div', { class: 'k' }, 'p95'), TW.el('div', { class: 'v' }, TW.fmtMs(n.p95_ms))));
      details.replaceChildren(...[
        TW.el('button', { type: 'button', class: 'close', title: 'close (Esc)', 'aria-label': 'close', onclick: () => select(null) }, '×'),
        TW.el('h3', {}, n.id),
        TW.el('div', { class: 'kind' }, n.kind === 'service' ? 'service' : n.kind + ' (not instrumented: seen by its callers)', ' ', TW.badge(n.health)),
        st.anomalies.get(n.id) ? TW.el('div', { class: 'anomaly-note' }, 'Anomaly: ' + st.anomalies.get(n.id).reason) : null,
        st.causes.get(n.id) ? TW.el('div', { class: 'anomaly-note' }, 'Likely cause: ' + st.causes.get(n.id).explanation) : null,
        tiles, actions,
        ...neighbourList('Called by', st.data.in.get(n.id) || [], 'source'),
        ...neighbourList('Calls', st.data.out.get(n.id) || [], 'target')].filter(Boolean));
    }

    // --- refresh ---
    let pending = false;
    async function refreshNow() {
      if (pending) return;
      pending = true;
      try {
        const tf = performance.now();
        const [r, a] = await Promise.all([
          fetch('/api/graph?window=' + encodeURIComponent(st.window), { cache: 'no-store' }),
          // The anomaly detector's verdicts; the map works without them (older servers, errors).
          fetch('/api/anomalies', { cache: 'no-store' }).then((x) => (x.ok ? x.json() : null)).catch(() => null),
        ]);
        const text = await r.text();
        if (!r.ok) throw new Error(r.status + ' ' + text);
        const g = JSON.parse(text);
        stats.fetchMs = performance.now() - tf;
        stats.payloadBytes = text.length;
        st.anomalies = new Map(((a && a.services) || []).filter((x) => x.anomalous).map((x) => [x.service, x]));
        st.causes = new Map(((a && a.causes) || []).map((c) => [c.service, c]));
        setData(g);
        draw();
        stats.refreshes++;
        if (!stats.ready) {
          stats.firstRenderMs = performance.now() - t0;
          stats.readyAt = performance.now(); // since navigation start
          stats.ready = true;
        }
        root.dataset.state = 'ready';
        root.dataset.refreshes = String(stats.refreshes);
        status.textContent = 'updated ' + new Date().toLocaleTimeString() + ' · ' + stats.nodes + ' nodes · ' + stats.edges + ' edges';
        status.classList.remove('error-text');
      } catch (e) {
        status.textContent = 'refresh failed (' + e.message + '); retrying';
        status.classList.add('error-text');
      } finally {
        pending = false;
      }
    }
    applyView();
    TW.every(opts.refreshMs, refreshNow);
    window.addEventListener('resize', () => { if (!st.userMoved) fitView(); });
    const api = { refresh: refreshNow, select, setFocus, fit: fitView, state: st, stats };
    window.twMapApi = api;
    return api;
  }

  window.TWMap = { create, layout };
})();
