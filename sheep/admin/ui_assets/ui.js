// The status page: polls this sheep's admin API (Authorization: Bearer from the token the
// user typed, kept in sessionStorage) and renders it.  Every value goes in with
// textContent or setAttribute, never as HTML.  No network but this sheep.
"use strict";
(function () {
  const KEY = "sheepdog.admin.token";
  const POLL_MS = 1500;        // pause between the end of one refresh and the next
  // Every refresh reads /nodes, /recovery and /locks.  /vdis (it reads every VDI's map) and
  // /cluster (it reads the whole epoch history) only every few refreshes, and at once when
  // /recovery says the epoch changed; /ui/ring once per epoch.
  const VDI_EVERY = 5;
  const CLUSTER_EVERY = 10;
  const EPOCH_ROWS = 50;       // newest epochs shown
  const $ = (id) => document.getElementById(id);
  const seen = new Map();      // node_id -> its last live /nodes record (this page's memory)
  let timer = null, tick = 0, lastEpoch = null, cluster = null, vdis = null, ring = null;

  class Refused extends Error {}

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(cells, attrs) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "-" : String(c);
      tr.appendChild(td);
    }
    for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
    return tr;
  }

  function fill(tableId, rows) { $(tableId).querySelector("tbody").replaceChildren(...rows); }

  function stateTag(state, detail) {
    const s = el("span", state, "state state-" + state);
    s.setAttribute("data-state", state);
    if (detail) s.setAttribute("title", detail);
    return s;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function pct(x) { return x === null || x === undefined || isNaN(x) ? "-" : (100 * x).toFixed(1) + " %"; }

  function bar(parts, cls) {          // parts: [[fraction, class], ...]
    const b = el("div", null, "bar" + (cls ? " " + cls : ""));
    for (const [f, c] of parts) {
      const s = el("span", null, c);
      s.style.width = (100 * Math.max(0, Math.min(1, f || 0))).toFixed(2) + "%";
      b.appendChild(s);
    }
    return b;
  }

  function when(t) { return t ? new Date(t * 1000).toLocaleString() : "-"; }

  async function get(path, token) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + token },
                                  cache: "no-store", credentials: "omit" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    const msg = body && body.error ? body.error : r.statusText;
    if (r.status === 401) throw new Refused(msg);
    if (!r.ok) throw new Error("GET " + path + ": " + r.status + " " + msg);
    return body;
  }

  // -- node states ---------------------------------------------------------------------
  // up | down | fenced | recovering.  down: known (in an epoch, or seen live by this page)
  // but not a live member, or a member whose stat did not answer (no epoch in /nodes).
  function nodeRows(cluster, nodes, recovery) {
    const live = new Map(nodes.nodes.map((n) => [n.node_id, n]));
    const rec = new Map(recovery.nodes.map((p) => [p.node_id, p]));
    const lastIn = new Map();
    for (const e of cluster.epochs) for (const id of e.members) lastIn.set(id, Math.max(lastIn.get(id) || 0, e.epoch));
    const ids = new Set([...live.keys(), ...lastIn.keys(), ...seen.keys()]);
    const out = [];
    for (const id of [...ids].sort()) {
      const n = live.get(id);
      if (n) seen.set(id, n);
      const known = n || seen.get(id) || { node_id: id };
      let state = "up", detail = "";
      const p = rec.get(id);
      if (!n) { state = "down"; detail = "not a live member" + (lastIn.has(id) ? "; last in epoch " + lastIn.get(id) : ""); }
      else if (n.epoch === null || n.epoch === undefined) { state = "down"; detail = "a member that does not answer"; }
      else if (n.fenced) { state = "fenced"; detail = "lost its ZooKeeper session"; }
      else if (p && p.state !== "complete" && n.role !== "gateway") { state = "recovering"; detail = p.state; }
      const st = n ? n.store : null;
      let cap = el("span", n && n.role === "gateway" ? "gateway: no store" : "-");
      if (st && st.capacity_bytes) {
        const other = Math.max(0, st.capacity_bytes - st.free_bytes - st.used_bytes);
        cap = el("div");
        cap.appendChild(bar([[st.used_bytes / st.capacity_bytes, "store"], [other / st.capacity_bytes, "other"]]));
        cap.appendChild(el("span", bytes(st.used_bytes) + " store, " + bytes(st.free_bytes) + " free of " + bytes(st.capacity_bytes), "note"));
      }
      out.push(row([id, known.zone || "", known.role || "-", stateTag(state, detail),
                    n ? n.epoch : null, cap, st ? st.objects : null],
                   { "data-node": id, "data-state": state }));
    }
    return out;
  }

  function recoveryRows(recovery) {
    const s = $("recovery-state");
    s.textContent = recovery.state + " (epoch " + recovery.epoch + ")";
    s.className = "pill state state-" + recovery.state;
    s.setAttribute("data-state", recovery.state);
    s.setAttribute("data-epoch", recovery.epoch);
    return recovery.nodes.map((p) => {
      const total = p.total || 0, done = p.done || 0;
      const progress = el("div");
      progress.appendChild(bar([[total ? done / total : (p.state === "complete" ? 1 : 0), "done"]], "progress"));
      progress.appendChild(el("span", total ? pct(done / total) : (p.state === "complete" ? "nothing to do" : "-"), "note"));
      const rate = p.objects_per_s !== undefined ? p.objects_per_s.toFixed(1) + " obj/s, " + bytes(Math.round(p.bytes_per_s || 0)) + "/s" : "-";
      return row([p.node_id, stateTag(p.state), p.epoch, progress, done + " / " + total,
                  bytes(p.bytes || 0), rate, p.error || ""],
                 { "data-node": p.node_id, "data-state": p.state, "data-done": done, "data-total": total });
    });
  }

  function vdiRows(vdis, locks) {
    const holder = new Map(), attached = new Map();
    for (const l of locks.locks) { holder.set(l.vid, l); attached.set(l.vid, l.attachments || []); }
    for (const a of locks.attached) attached.set(a.vid, a.attachments || []);
    const snaps = new Map();
    for (const v of vdis.vdis) if (v.snapshot) {
      if (!snaps.has(v.name)) snaps.set(v.name, []);
      snaps.get(v.name).push(v.tag || "#" + v.snap_id);
    }
    const who = (a) => (a.node_id || "?") + " / " + (a.client || "?");
    return vdis.vdis.filter((v) => !v.snapshot).map((v) => {
      const s = snaps.get(v.name) || [];
      const l = holder.get(v.vid);
      const att = attached.get(v.vid) || [];
      const list = el("div");
      for (const a of att) list.appendChild(el("div", who(a)));
      if (!att.length) list.textContent = "-";
      const used = el("div");
      used.appendChild(bar([[v.size ? v.used_bytes / v.size : 0, "store"]]));
      used.appendChild(el("span", bytes(v.used_bytes) + (v.shared_bytes ? " (+" + bytes(v.shared_bytes) + " shared)" : ""), "note"));
      return row([v.name, bytes(v.size), used, v.copies, s.length ? s.length + ": " + s.join(", ") : "0",
                  l ? who(l) + " (gen " + l.generation + ")" : "-", list],
                 { "data-vdi": v.name, "data-attached": att.length });
    });
  }

  function ringRows(ring, nodes) {
    $("ring-epoch").textContent = "epoch " + ring.epoch + ", copies " + ring.copies + ", " + ring.samples + " sampled objects";
    const objects = new Map(nodes.nodes.map((n) => [n.node_id, n.store ? n.store.objects : null]));
    const stored = [...objects.values()].reduce((a, b) => a + (b || 0), 0);
    return ring.nodes.map((m) => {
      const o = objects.get(m.node_id);
      const off = m.weight_share ? m.primary_share / m.weight_share - 1 : null;
      return row([m.node_id, m.zone, m.weight, pct(m.weight_share), m.vnodes,
                  pct(m.primary_share) + (off === null ? "" : " (" + (off >= 0 ? "+" : "") + (100 * off).toFixed(1) + " %)"),
                  pct(m.holds_share), stored && o !== null && o !== undefined ? pct(o / stored) : "-"],
                 { "data-node": m.node_id });
    });
  }

  function epochRows(cluster) {
    const epochs = [...cluster.epochs].sort((a, b) => a.epoch - b.epoch);
    const out = [];
    let prev = [];
    for (const e of epochs) {
      const joined = e.members.filter((m) => !prev.includes(m));
      const left = prev.filter((m) => !e.members.includes(m));
      out.push(row([e.epoch, when(e.created), e.members.length + ": " + e.members.join(", "),
                    joined.join(", "), left.join(", ")], { "data-epoch": e.epoch }));
      prev = e.members;
    }
    return out.reverse().slice(0, EPOCH_ROWS);
  }

  // -- the loop ------------------------------------------------------------------------
  async function refresh() {
    timer = null;
    const token = sessionStorage.getItem(KEY);
    if (!token) { showLogin(""); return; }
    const t0 = performance.now();
    try {
      if (cluster === null) cluster = await get("/cluster", token);   // a new token: one request first
      const [nodes, recovery, locks] = await Promise.all(
        ["/nodes", "/recovery", "/locks"].map((p) => get(p, token)));
      const newEpoch = recovery.epoch !== lastEpoch;
      const more = [];
      if (tick > 0 && (newEpoch || tick % CLUSTER_EVERY === 0)) more.push(get("/cluster", token).then((c) => { cluster = c; }));
      if (newEpoch || vdis === null || tick % VDI_EVERY === 0) more.push(get("/vdis", token).then((v) => { vdis = v; }));
      if (newEpoch || ring === null) more.push(get("/ui/ring", token).then((r) => { ring = r; }));
      await Promise.all(more);
      lastEpoch = recovery.epoch;
      tick++;
      const ms = performance.now() - t0;
      $("cluster-name").textContent = cluster.name;
      const fmt = cluster.format || {};
      $("summary").textContent = cluster.state + ", epoch " + recovery.epoch + ", leader " + (cluster.leader || "-") +
        (fmt.copies ? ", copies " + fmt.copies + ", objects of " + bytes(1 << fmt.block_size_shift) : "");
      fill("nodes", nodeRows(cluster, nodes, recovery));
      fill("recovery", recoveryRows(recovery));
      fill("vdis", vdiRows(vdis, locks));
      fill("ring", ringRows(ring, nodes));
      fill("epochs", epochRows(cluster));
      $("updated").textContent = new Date().toLocaleTimeString();
      $("refresh-ms").textContent = ms.toFixed(0);
      $("banner").hidden = true;
      showStatus();
    } catch (e) {
      if (e instanceof Refused) {
        sessionStorage.removeItem(KEY);
        showLogin("The sheep refused this token: " + e.message);
        return;
      }
      $("banner").textContent = "Cannot read the cluster (showing the last data): " + e.message;
      $("banner").hidden = false;
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  function showLogin(message) {
    if (timer) { clearTimeout(timer); timer = null; }
    $("status").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    const m = $("login-msg");
    m.textContent = message;
    m.hidden = !message;
    $("token").value = "";
    $("token").focus();
  }

  function showStatus() {
    $("login").hidden = true;
    $("status").hidden = false;
    $("logout").hidden = false;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(KEY, token);
      $("login-msg").hidden = true;
      cluster = null; vdis = null; ring = null; lastEpoch = null; tick = 0;
      refresh();
    });
    $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(""); });
    if (sessionStorage.getItem(KEY)) refresh(); else showLogin("");
  });
})();
