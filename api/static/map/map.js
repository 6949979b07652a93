// The LAN map: devices (pods) grouped by node, LANs as hubs between them, drawn in plain SVG from
// GET /api/v1/map and kept live by its long poll. No library, no build step, nothing fetched from
// anywhere but this server. window.megalosMap.stats holds the timings the benchmark reads.
"use strict";
(() => {
  const POLL_SECONDS = 25;
  const DEVICE = { w: 116, h: 30 };        // a device box
  const CELL = { w: 156, h: 70 };          // its cell: the gaps hold the LAN hubs of neighbours
  const NODE = { pad: 26, head: 46, gap: 150 };
  const HUB_R = 9;

  const $ = (id) => document.getElementById(id);
  const svg = $("map"), viewport = $("viewport"), panel = $("panel");
  const stats = { renders: 0, layoutMs: 0, renderMs: 0, applyMs: 0, appliedAt: 0, version: null,
                  fetchMs: 0, devices: 0, lans: 0 };
  const state = {
    doc: null, index: null, layout: null, selected: null, search: "",
    namespace: new URLSearchParams(location.search).get("ns") || "",
    token: null, view: { x: 0, y: 0, k: 1 }, fitted: false, controller: null,
    detail: { key: null, data: null, error: null },
  };
  window.megalosMap = { stats, state };

  // -- text ----------------------------------------------------------------------------------
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const natural = new Intl.Collator(undefined, { numeric: true }).compare;
  const pill = (s) => `<span class="pill s-${esc(s)}">${esc(s)}</span>`;
  const yesNo = (v) => (v ? '<span class="yes">yes</span>' : '<span class="no">no</span>');
  function duration(seconds) {
    if (seconds == null) return "-";
    const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60;
    return d ? `${d}d${h}h` : h ? `${h}h${m}m` : m ? `${m}m${s % 60}s` : `${s}s`;
  }
  const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "-");

  // -- the API -------------------------------------------------------------------------------
  class AuthNeeded extends Error {}

  function readToken() {
    // A token handed over in the fragment (#token=...) never reaches a server or its logs; it
    // is kept for this tab only and taken off the address bar.
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (fragment.get("token")) {
      sessionStorage.setItem("megalos-token", fragment.get("token"));
      history.replaceState(null, "", location.pathname + location.search);
    }
    state.token = sessionStorage.getItem("megalos-token");
  }

  async function api(path, signal) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const reply = await fetch(path, { headers, signal, cache: "no-store" });
    if (reply.status === 401) throw new AuthNeeded("the API needs a token");
    const body = await reply.json().catch(() => ({}));
    if (!reply.ok) throw new Error(body.error || `${reply.status} ${reply.statusText}`);
    return body;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function follow() {
    let since = null;
    for (;;) {
      const controller = new AbortController();
      state.controller = controller;
      const query = new URLSearchParams();
      if (state.namespace) query.set("namespace", state.namespace);
      if (since) { query.set("since", since); query.set("timeout", POLL_SECONDS); }
      const started = performance.now();
      try {
        const doc = await api(`/api/v1/map?${query}`, controller.signal);
        live("live", "live");
        if ($("banner").className === "error") banner("");
        if (doc.changed === false) {
          // The server answered at once (too many waiting pages): do not spin.
          if (performance.now() - started < 500) await sleep(1000);
          continue;
        }
        stats.fetchMs = performance.now() - started;
        since = doc.version;
        apply(doc);
      } catch (error) {
        if (controller.signal.aborted) { since = null; continue; }  // another lab was picked
        if (error instanceof AuthNeeded) { await askToken(state.token ? "wrong token" : ""); continue; }
        live("down", error.message.slice(0, 80));
        banner(`The API does not answer: ${error.message}. Retrying.`, true);
        await sleep(2000);
      }
    }
  }

  function askToken(message) {
    const form = $("token-form");
    form.hidden = false;
    $("token-error").textContent = message;
    live("down", "token needed");
    return new Promise((resolve) => {
      form.onsubmit = (event) => {
        event.preventDefault();
        state.token = $("token").value.trim();
        sessionStorage.setItem("megalos-token", state.token);
        form.hidden = true;
        resolve();
      };
    });
  }

  function live(kind, text) {
    $("live").className = kind;
    $("live-text").textContent = text;
  }

  function banner(text, error = false) {
    const el = $("banner");
    el.hidden = !text;
    el.textContent = text || "";
    el.className = error ? "error" : "";
  }

  // -- a new document ------------------------------------------------------------------------
  function apply(doc) {
    const t0 = performance.now();
    state.doc = doc;
    state.index = indexOf(doc);
    const t1 = performance.now();
    state.layout = layout(doc, state.index);
    const t2 = performance.now();
    render(doc, state.layout);
    const t3 = performance.now();
    if (!state.fitted) { fit(); state.fitted = true; }
    header(doc);
    showPanel();
    Object.assign(stats, {
      renders: stats.renders + 1, layoutMs: t2 - t1, renderMs: t3 - t2, applyMs: performance.now() - t0,
      appliedAt: Date.now(), version: doc.version, devices: doc.devices.length, lans: doc.lans.length,
    });
  }

  function indexOf(doc) {
    const byId = (rows) => new Map(rows.map((row) => [row.id, row]));
    const nodeByAddress = new Map(doc.nodes.filter((n) => n.address).map((n) => [n.address, n]));
    return { devices: byId(doc.devices), lans: byId(doc.lans), nodes: byId(doc.nodes), nodeByAddress };
  }

  function header(doc) {
    const s = doc.summary;
    $("summary").innerHTML = `<b>${s.devices}</b> devices · <b>${s.interfaces}</b> interfaces · ` +
      `<b>${s.lans}</b> LANs (${s.converged} converged, ${s.converging} converging, ` +
      `${s.trouble} in trouble) · <b>${s.nodes}</b> nodes`;
    const select = $("namespace");
    const options = ['<option value="">every namespace</option>'].concat(doc.namespaces.map((ns) =>
      `<option value="${esc(ns.name)}">${esc(ns.name)} (${ns.devices} devices, ${ns.lans} LANs, ${esc(ns.state)})</option>`));
    if (state.namespace && !doc.namespaces.some((ns) => ns.name === state.namespace)) {
      options.push(`<option value="${esc(state.namespace)}">${esc(state.namespace)} (no LANs)</option>`);
    }
    const html = options.join("");
    if (select.dataset.html !== html) { select.innerHTML = html; select.dataset.html = html; }
    select.value = state.namespace;
    if (!doc.watching) {
      banner("The reflector does not watch the Kubernetes API for LANs (run megalos-reflector with " +
             "--lans-from-k8s): only the nodes are shown.");
    } else if (!doc.synced) {
      banner("The reflector has not listed the NetworkAttachmentDefinitions and pods yet.");
    } else {
      banner("");
    }
  }

  // -- layout: nodes side by side (a grid beyond four), devices in a grid inside each node, in
  // an order that keeps the devices of a LAN together; each LAN's hub at its members' centre,
  // pushed off the device boxes and apart from other hubs.
  function layout(doc, index) {
    const groups = doc.nodes.map((n) => ({ node: n, devices: [] }));
    const groupOf = new Map(groups.map((g) => [g.node.id, g]));
    const unscheduled = { node: { id: "", name: "not scheduled", state: "", up: false, address: null }, devices: [] };
    for (const d of doc.devices) (groupOf.get(d.node) || unscheduled).devices.push(d);
    if (unscheduled.devices.length) groups.push(unscheduled);

    const neighbours = new Map();  // device id -> devices sharing a LAN with it
    for (const lan of doc.lans) {
      const ids = lan.members.map((m) => m.device);
      for (const id of ids) {
        const set = neighbours.get(id) || new Set();
        ids.forEach((other) => other !== id && set.add(other));
        neighbours.set(id, set);
      }
    }
    const across = groups.length <= 4 ? groups.length : Math.ceil(Math.sqrt(groups.length));
    const down = Math.ceil(groups.length / across) || 1;
    const aspect = (1.6 * down) / Math.max(across, 1);  // each node box's width / height
    const boxes = new Map(), devices = new Map();
    for (const g of groups) {
      const ordered = connectedOrder(g.devices, neighbours);
      const n = ordered.length;
      const cols = Math.max(1, Math.min(n, Math.round(Math.sqrt((n * aspect * CELL.h) / CELL.w)) || 1));
      const rows = Math.max(1, Math.ceil(n / cols));
      g.w = Math.max(cols * CELL.w, 260) + 2 * NODE.pad;
      g.h = (n ? rows * CELL.h : 40) + NODE.head + NODE.pad;
      g.cols = cols;
      g.ordered = ordered;
    }
    let y = 0;
    for (let r = 0; r < down; r++) {
      const row = groups.slice(r * across, (r + 1) * across);
      let x = 0;
      for (const g of row) {
        boxes.set(g.node.id, { x, y, w: g.w, h: g.h, group: g });
        x += g.w + NODE.gap;
      }
      y += Math.max(...row.map((g) => g.h)) + NODE.gap;
    }
    for (let round = 0; round <= BARYCENTRE_ROUNDS; round++) {
      if (round) reorder(groups, doc.lans, devices);
      place(groups, boxes, devices);
    }
    const hubs = placeHubs(doc.lans, devices);
    return { boxes, devices, hubs };
  }

  const BARYCENTRE_ROUNDS = 3;

  function place(groups, boxes, devices) {
    for (const g of groups) {
      const box = boxes.get(g.node.id);
      g.ordered.forEach((d, i) => {
        devices.set(d.id, { x: box.x + NODE.pad + (i % g.cols) * CELL.w + CELL.w / 2,
                            y: box.y + NODE.head + Math.floor(i / g.cols) * CELL.h + CELL.h / 2 });
      });
    }
  }

  // Fewer and shorter lines: each device moves towards the centre of its LANs (the mean of
  // their members' places), rows by height, then places in a row by width; a few rounds.
  function reorder(groups, lans, devices) {
    const centre = new Map();
    for (const lan of lans) {
      const points = lan.members.map((m) => devices.get(m.device)).filter(Boolean);
      if (!points.length) continue;
      const c = { x: points.reduce((a, p) => a + p.x, 0) / points.length,
                  y: points.reduce((a, p) => a + p.y, 0) / points.length };
      for (const m of lan.members) (centre.get(m.device) || centre.set(m.device, []).get(m.device)).push(c);
    }
    const pull = (d) => {
      const cs = centre.get(d.id), own = devices.get(d.id);
      if (!cs) return own;
      return { x: (own.x + cs.reduce((a, c) => a + c.x, 0)) / (cs.length + 1),
               y: (own.y + cs.reduce((a, c) => a + c.y, 0)) / (cs.length + 1) };
    };
    for (const g of groups) {
      const wanted = new Map(g.ordered.map((d) => [d.id, pull(d)]));
      const byHeight = [...g.ordered].sort((a, b) => wanted.get(a.id).y - wanted.get(b.id).y);
      const ordered = [];
      for (let i = 0; i < byHeight.length; i += g.cols) {
        ordered.push(...byHeight.slice(i, i + g.cols).sort((a, b) => wanted.get(a.id).x - wanted.get(b.id).x));
      }
      g.ordered = ordered;
    }
  }

  function connectedOrder(list, neighbours) {
    // Breadth first over "shares a LAN", within the node, from the first device by name.
    const here = new Map(list.map((d) => [d.id, d]));
    const sorted = [...list].sort((a, b) => natural(a.label, b.label) || natural(a.id, b.id));
    const seen = new Set(), order = [];
    for (const start of sorted) {
      if (seen.has(start.id)) continue;
      const queue = [start.id];
      seen.add(start.id);
      while (queue.length) {
        const id = queue.shift();
        order.push(here.get(id));
        const next = [...(neighbours.get(id) || [])].filter((o) => here.has(o) && !seen.has(o))
          .sort((a, b) => natural(here.get(a).label, here.get(b).label));
        next.forEach((o) => { seen.add(o); queue.push(o); });
      }
    }
    return order;
  }

  function placeHubs(lans, devices) {
    const hubs = new Map(), list = [];
    for (const lan of lans) {
      const points = lan.members.map((m) => devices.get(m.device)).filter(Boolean);
      let x = 0, y = 0;
      if (points.length) {
        points.forEach((p) => { x += p.x; y += p.y; });
        x /= points.length; y /= points.length;
        if (points.length === 1 || new Set(points.map((p) => `${p.x},${p.y}`)).size === 1) {
          y += DEVICE.h / 2 + HUB_R + 6;  // one device: just below it
        }
      }
      const hub = { x, y, lan };
      hubs.set(lan.id, hub);
      list.push(hub);
    }
    const boxes = [...devices.values()];
    const grid = new Map(), size = CELL.w;
    const key = (x, y) => `${Math.floor(x / size)},${Math.floor(y / size)}`;
    for (const b of boxes) {
      const k = key(b.x, b.y);
      (grid.get(k) || grid.set(k, []).get(k)).push(b);
    }
    const near = (x, y) => {
      const gx = Math.floor(x / size), gy = Math.floor(y / size), out = [];
      for (let i = -1; i <= 1; i++) for (let j = -1; j <= 1; j++) out.push(...(grid.get(`${gx + i},${gy + j}`) || []));
      return out;
    };
    const mx = DEVICE.w / 2 + HUB_R + 8, my = DEVICE.h / 2 + HUB_R + 8;  // clear of the box and its port labels
    for (let round = 0; round < 6; round++) {
      for (const hub of list) {  // off the device boxes: out by the nearer side
        for (const b of near(hub.x, hub.y)) {
          const dx = hub.x - b.x, dy = hub.y - b.y;
          if (Math.abs(dx) < mx && Math.abs(dy) < my) {
            if (mx - Math.abs(dx) < my - Math.abs(dy)) hub.x = b.x + Math.sign(dx || 1) * mx;
            else hub.y = b.y + Math.sign(dy || 1) * my;
          }
        }
      }
      const spread = new Map();  // apart from each other
      for (const hub of list) {
        const k = `${Math.round(hub.x / (3 * HUB_R))},${Math.round(hub.y / (3 * HUB_R))}`;
        const others = spread.get(k);
        if (others) {
          hub.x += (others.length % 2 ? -1 : 1) * 2.5 * HUB_R * Math.ceil(others.length / 2);
          others.push(hub);
        } else spread.set(k, [hub]);
      }
    }
    return hubs;
  }

  // -- drawing -------------------------------------------------------------------------------
  function render(doc, lay) {
    const nodes = [], edges = [], hubs = [], devs = [];
    for (const [id, box] of lay.boxes) {
      const n = box.group.node;
      const title = n.name || n.address || "not scheduled";
      const sub = n.address ? `${n.address} · BGP ${n.state}` : n.id ? "not a BGP peer of the reflector" : "";
      nodes.push(`<g class="node ${n.up || !n.id ? "up" : "down"}" data-kind="node" data-id="${esc(id)}">` +
        `<rect class="node-box" x="${box.x}" y="${box.y}" width="${box.w}" height="${box.h}" rx="10"/>` +
        (n.id ? `<circle class="badge" cx="${box.x + 18}" cy="${box.y + 19}" r="6"/>` : "") +
        `<text class="node-title" x="${box.x + 30}" y="${box.y + 24}">${esc(title)}</text>` +
        `<text class="node-sub" x="${box.x + 30}" y="${box.y + 40}">${esc(sub)}</text></g>`);
    }
    const ports = doc.devices.length <= 400;
    for (const lan of doc.lans) {
      const hub = lay.hubs.get(lan.id);
      const cls = `s-${lan.state}`;
      for (const m of lan.members) {
        const d = lay.devices.get(m.device);
        if (!d) continue;
        edges.push(`<line class="edge ${cls}" data-lan="${esc(lan.id)}" data-device="${esc(m.device)}" ` +
          `x1="${hub.x.toFixed(1)}" y1="${hub.y.toFixed(1)}" x2="${d.x}" y2="${d.y}"/>`);
        if (ports && m.interface) {
          const p = portPoint(hub, d);
          edges.push(`<text class="port" data-lan="${esc(lan.id)}" x="${p.x.toFixed(1)}" y="${p.y.toFixed(1)}">${esc(m.interface)}</text>`);
        }
      }
      const mark = lan.state === "trouble" ? "!" : lan.state === "converging" ? String(lan.missing) : "";
      const name = lan.link || lan.name;
      hubs.push(`<g class="hub ${cls}" data-kind="lan" data-id="${esc(lan.id)}">` +
        `<title>LAN ${esc(name)} (${esc(lan.id)}), VNI ${lan.vni}: ${esc(lan.state)}` +
        `${lan.missing ? `, ${lan.missing} missing` : ""}</title>` +
        `<circle cx="${hub.x.toFixed(1)}" cy="${hub.y.toFixed(1)}" r="${HUB_R}"/>` +
        (mark ? `<text class="count" x="${hub.x.toFixed(1)}" y="${hub.y.toFixed(1)}">${esc(mark)}</text>` : "") +
        `<text class="label" x="${(hub.x + HUB_R + 3).toFixed(1)}" y="${(hub.y - HUB_R).toFixed(1)}">${esc(name)}</text></g>`);
    }
    for (const d of doc.devices) {
      const p = lay.devices.get(d.id);
      devs.push(`<g class="device s-${d.state}" data-kind="device" data-id="${esc(d.id)}">` +
        `<title>${esc(d.pod)} (${esc(d.namespace)}) on ${esc(d.node || "no node")}</title>` +
        `<rect x="${p.x - DEVICE.w / 2}" y="${p.y - DEVICE.h / 2}" width="${DEVICE.w}" height="${DEVICE.h}"/>` +
        `<text x="${p.x}" y="${p.y}">${esc(clip(d.label, 16))}</text></g>`);
    }
    $("layer-nodes").innerHTML = nodes.join("");
    $("layer-edges").innerHTML = edges.join("");
    $("layer-hubs").innerHTML = hubs.join("");
    $("layer-devices").innerHTML = devs.join("");
    mark();
  }

  const clip = (s, n) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

  function portPoint(hub, d) {
    // Where the line from the hub meets the device box, drawn a little outside it.
    const dx = hub.x - d.x, dy = hub.y - d.y;
    const t = Math.min(Math.abs((DEVICE.w / 2 + 4) / (dx || 1e-9)), Math.abs((DEVICE.h / 2 + 10) / (dy || 1e-9)), 1);
    return { x: d.x + dx * t + 3, y: d.y + dy * t + 4 };
  }

  // Selection, search and hover marks, set again after every render.
  function mark() {
    svg.querySelectorAll(".selected, .match, .hl").forEach((el) => el.classList.remove("selected", "match", "hl"));
    const sel = state.selected;
    if (sel) {
      const el = svg.querySelector(`[data-kind="${sel.kind}"][data-id="${CSS.escape(sel.id)}"]`);
      if (el) el.classList.add("selected");
    }
    if (state.search && state.doc) {
      for (const id of matches(state.search)) {
        svg.querySelectorAll(`[data-id="${CSS.escape(id)}"]`).forEach((el) => el.classList.add("match"));
      }
    }
    focus(state.hover || (sel && sel.kind !== "node" ? sel : null));
  }

  function focus(target) {
    svg.classList.toggle("focus", Boolean(target));
    if (!target) return;
    const { kind, id } = target;
    const attr = kind === "lan" ? "data-lan" : "data-device";
    const related = new Set([id]);
    svg.querySelectorAll(`.edge[${attr}="${CSS.escape(id)}"]`).forEach((edge) => {
      edge.classList.add("hl");
      related.add(edge.dataset.lan);
      related.add(edge.dataset.device);
    });
    for (const rid of related) {
      svg.querySelectorAll(`.hub[data-id="${CSS.escape(rid)}"], .device[data-id="${CSS.escape(rid)}"]`)
        .forEach((el) => el.classList.add("hl"));
    }
  }

  function matches(text) {
    const q = text.toLowerCase(), found = [];
    for (const d of state.doc.devices) {
      if (d.label.toLowerCase().includes(q) || d.pod.toLowerCase().includes(q) ||
          d.interfaces.some((i) => (i.mac || "").includes(q))) found.push(d.id);
    }
    for (const l of state.doc.lans) {
      if ((l.link || "").toLowerCase().includes(q) || l.name.toLowerCase().includes(q) || String(l.vni) === q) found.push(l.id);
    }
    return found;
  }

  // -- pan and zoom --------------------------------------------------------------------------
  function transform() {
    const { x, y, k } = state.view;
    viewport.setAttribute("transform", `translate(${x.toFixed(1)},${y.toFixed(1)}) scale(${k.toFixed(4)})`);
    svg.classList.toggle("far", k < 0.55);
  }

  function fit() {
    const box = viewport.getBBox(), w = svg.clientWidth || 800, h = svg.clientHeight || 600;
    if (!box.width || !box.height) return;
    const k = Math.min(w / (box.width + 40), h / (box.height + 40), 1.6);
    state.view = { k, x: (w - box.width * k) / 2 - box.x * k, y: (h - box.height * k) / 2 - box.y * k };
    transform();
  }

  function zoomAt(px, py, factor) {
    const v = state.view, k = Math.min(4, Math.max(0.05, v.k * factor));
    state.view = { k, x: px - ((px - v.x) * k) / v.k, y: py - ((py - v.y) * k) / v.k };
    transform();
  }

  svg.addEventListener("wheel", (event) => {
    event.preventDefault();
    const r = svg.getBoundingClientRect();
    zoomAt(event.clientX - r.left, event.clientY - r.top, Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });

  let drag = null;
  svg.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, moved: false, view: { ...state.view } };
  });
  window.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 4) return;
    drag.moved = true;
    svg.classList.add("dragging");
    state.view = { ...drag.view, x: drag.view.x + dx, y: drag.view.y + dy };
    transform();
  });
  window.addEventListener("pointerup", () => {
    svg.classList.remove("dragging");
    setTimeout(() => { drag = null; }, 0);
  });
  svg.addEventListener("dblclick", fit);

  svg.addEventListener("click", (event) => {
    if (drag && drag.moved) return;
    const el = event.target.closest("[data-kind]");
    select(el ? { kind: el.dataset.kind, id: el.dataset.id } : null);
  });
  svg.addEventListener("mouseover", (event) => {
    const el = event.target.closest(".hub, .device");
    const hover = el ? { kind: el.dataset.kind, id: el.dataset.id } : null;
    if ((hover && hover.id) !== (state.hover && state.hover.id)) { state.hover = hover; mark(); }
  });

  $("search").addEventListener("input", (event) => { state.search = event.target.value.trim(); mark(); });
  $("search").addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !state.search || !state.doc) return;
    const first = matches(state.search)[0];
    if (first) select({ kind: state.index.lans.has(first) ? "lan" : "device", id: first });
  });
  $("namespace").addEventListener("change", (event) => {
    state.namespace = event.target.value;
    const url = new URL(location.href);
    if (state.namespace) url.searchParams.set("ns", state.namespace); else url.searchParams.delete("ns");
    history.replaceState(null, "", url);
    state.fitted = false;
    state.selected = null;
    if (state.controller) state.controller.abort();
  });

  // -- the panel -----------------------------------------------------------------------------
  function select(target) {
    state.selected = target;
    state.detail = { key: null, data: null, error: null };
    mark();
    showPanel();
  }
  window.megalosMap.select = select;

  panel.addEventListener("click", (event) => {
    const a = event.target.closest("a[data-kind]");
    if (a) select({ kind: a.dataset.kind, id: a.dataset.id });
  });

  const link = (kind, id, text) => `<a data-kind="${kind}" data-id="${esc(id)}">${esc(text)}</a>`;

  function showPanel() {
    const doc = state.doc, sel = state.selected;
    if (!doc) return;
    const row = sel && state.index[{ lan: "lans", node: "nodes", device: "devices" }[sel.kind]].get(sel.id);
    if (!row) { panel.innerHTML = overview(doc); return; }
    panel.innerHTML = sel.kind === "lan" ? lanPanel(row) : sel.kind === "node" ? nodePanel(row) : devicePanel(row);
    panel.dataset.kind = sel.kind;
    panel.dataset.id = sel.id;
    loadDetail(sel, row);
  }

  function overview(doc) {
    delete panel.dataset.kind;
    const bad = doc.lans.filter((l) => l.state !== "converged")
      .sort((a, b) => (a.state === b.state ? b.missing - a.missing : a.state === "trouble" ? -1 : 1));
    const rows = bad.slice(0, 30).map((l) => `<tr><td>${link("lan", l.id, l.link || l.name)}</td>` +
      `<td>${l.vni}</td><td>${pill(l.state)}</td><td>${esc(l.problems[0] || "")}</td></tr>`).join("");
    return `<h2>${esc(doc.namespace || "Every namespace")}</h2>` +
      `<p class="sub">reflector ${esc(doc.reflector.router_id || "?")}</p>` +
      `<p class="hint">Click a LAN (a dot) for its MAC table and VTEPs, a node for its BGP session, ` +
      `a device for its interfaces. Drag to pan, scroll to zoom, double-click to fit.</p>` +
      (bad.length ? `<h3>Not converged (${bad.length})</h3><table><tr><th>LAN</th><th>VNI</th>` +
        `<th>state</th><th>why</th></tr>${rows}</table>` : doc.lans.length ? "<h3>Every LAN has converged</h3>" : "");
  }

  function lanPanel(lan) {
    const devices = state.index.devices;
    const members = lan.members.map((m) => {
      const d = devices.get(m.device);
      const i = d && d.interfaces.find((x) => x.lan === lan.id && x.name === m.interface);
      return `<tr><td>${link("device", m.device, d ? d.label : m.device)}</td><td>${esc(m.interface || "-")}</td>` +
        `<td class="mono">${esc(m.mac || "-")}</td><td>${d && d.node ? link("node", d.node, d.node) : "-"}</td>` +
        `<td>${i ? yesNo(i.attached && i.announced) : "-"}</td></tr>`;
    }).join("");
    const vteps = lan.vteps.map((a) => {
      const n = state.index.nodeByAddress.get(a);
      return `<tr><td class="mono">${esc(a)}</td><td>${n ? link("node", n.id, n.id) : "-"}</td></tr>`;
    }).join("");
    return `<h2>LAN ${esc(lan.link || lan.name)} ${pill(lan.state)}</h2>` +
      `<p class="sub">${esc(lan.id)} · VNI <span class="mono">${lan.vni}</span>` +
      `${lan.missing ? ` · ${lan.missing} missing` : ""}</p>` +
      (lan.problems.length ? `<ul class="problems">${lan.problems.map((p) => `<li>${esc(p)}</li>`).join("")}</ul>` : "") +
      `<h3>Members (${lan.members.length})</h3><table><tr><th>device</th><th>if</th><th>MAC</th>` +
      `<th>node</th><th>announced</th></tr>${members}</table>` +
      `<h3>VTEPs (flood list, ${lan.vteps.length})</h3><table class="vteps"><tr><th>address</th><th>node</th></tr>${vteps}</table>` +
      `<h3>MAC table</h3><div id="detail" class="mac-table">loading…</div>`;
  }

  function nodePanel(node) {
    const lans = node.lans.map((id) => state.index.lans.get(id)).filter(Boolean);
    const peers = new Map();  // the nodes this one exchanges frames with: they share a LAN
    for (const lan of lans) for (const other of lan.nodes) if (other !== node.id) peers.set(other, state.index.nodes.get(other));
    const peerRows = [...peers].sort().map(([id, n]) => `<tr><td>${link("node", id, id)}</td>` +
      `<td class="mono">${esc(n && n.address || "-")}</td><td>${esc(n ? n.state : "unknown")}</td></tr>`).join("");
    const lanRows = lans.map((l) => `<tr><td>${link("lan", l.id, l.link || l.name)}</td><td>${l.vni}</td><td>${pill(l.state)}</td></tr>`).join("");
    const devs = node.devices.map((id) => link("device", id, state.index.devices.get(id)?.label || id)).join(", ");
    return `<h2>Node ${esc(node.id)} ${node.up ? pill("converged").replace(">converged<", ">up<") : pill("trouble").replace(">trouble<", ">down<")}</h2>` +
      `<p class="sub">VTEP <span class="mono">${esc(node.address || "unknown")}</span></p>` +
      `<h3>BGP session with the reflector</h3><div id="detail" class="session">` +
      `${node.address ? "loading…" : "not a peer of the reflector"}</div>` +
      `<h3>VXLAN peers (nodes sharing a LAN, ${peers.size})</h3><table class="peers"><tr><th>node</th>` +
      `<th>VTEP</th><th>BGP</th></tr>${peerRows}</table>` +
      `<h3>LANs (${lans.length})</h3><table><tr><th>LAN</th><th>VNI</th><th>state</th></tr>${lanRows}</table>` +
      `<h3>Devices (${node.devices.length})</h3><p>${devs || "none"}</p>`;
  }

  function devicePanel(d) {
    const rows = d.interfaces.map((i) => {
      const lan = state.index.lans.get(i.lan);
      return `<tr><td>${esc(i.name || "-")}</td><td class="mono">${esc(i.mac || "-")}</td>` +
        `<td>${lan ? link("lan", lan.id, lan.link || lan.name) : esc(i.lan)}</td><td>${lan ? lan.vni : ""}</td>` +
        `<td>${i.attached ? yesNo(i.announced) : "not attached"}</td></tr>`;
    }).join("");
    return `<h2>${esc(d.label)} ${pill(d.state)}</h2><p class="sub">pod ${esc(d.pod)} · ${esc(d.namespace)} · ` +
      `node ${d.node ? link("node", d.node, d.node) : "none"}</p>` +
      `<h3>Interfaces (${d.interfaces.length})</h3><table><tr><th>if</th><th>MAC</th><th>LAN</th><th>VNI</th>` +
      `<th>announced</th></tr>${rows}</table>`;
  }

  // The LAN's MAC table or the node's session counters: read when shown, again on each update.
  async function loadDetail(sel, row) {
    let path = null;
    if (sel.kind === "lan") path = `/api/v1/vnis/${row.vni}?limit=1000`;
    else if (sel.kind === "node" && row.address) path = `/api/v1/nodes/${encodeURIComponent(row.address)}`;
    if (!path) return;
    const key = `${sel.kind}:${sel.id}:${state.doc.version}`;
    if (state.detail.key === key) { drawDetail(sel); return; }
    state.detail = { key, data: null, error: null };
    try {
      state.detail.data = await api(path);
    } catch (error) {
      state.detail.error = error.message;
    }
    if (state.detail.key === key) drawDetail(sel);
  }

  function drawDetail(sel) {
    const el = $("detail");
    if (!el) return;
    const { data, error } = state.detail;
    if (error && sel.kind === "lan" && error.startsWith("unknown VNI")) { el.textContent = "(nothing announced in this VNI)"; return; }
    if (error) { el.innerHTML = `<span class="error">${esc(error)}</span>`; return; }
    if (!data) return;
    if (sel.kind === "node") {
      el.innerHTML = `<table><tr><th>state</th><td>${esc(data.state)}</td></tr>` +
        `<tr><th>established for</th><td>${duration(data.uptime)}</td></tr>` +
        `<tr><th>routes received</th><td>${data.received}</td></tr><tr><th>routes sent</th><td>${data.sent}</td></tr>` +
        `<tr><th>updates received / sent</th><td>${data.updates_received ?? "-"} / ${data.updates_sent ?? "-"}</td></tr></table>`;
      return;
    }
    const rows = data.macs.map((m) => `<tr><td class="mono">${esc(m.mac)}</td><td class="mono">${esc(m.vtep)}</td>` +
      `<td>${esc(m.node || "-")}</td><td class="mono">${esc((m.ips || []).join(", ") || "-")}</td><td>${when(m.last_changed)}</td></tr>`).join("");
    el.innerHTML = data.macs.length ? `<table><tr><th>MAC</th><th>VTEP</th><th>node</th><th>IP</th><th>changed</th></tr>${rows}</table>` +
      (data.mac_count > data.macs.length ? `<p class="sub">${data.macs.length} of ${data.mac_count} MACs</p>` : "")
      : "(no MAC announced)";
  }

  readToken();
  window.addEventListener("resize", () => { if (!state.selected) fit(); });
  follow();
})();
