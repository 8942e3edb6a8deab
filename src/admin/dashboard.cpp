// GET /: the live dashboard. One self-contained page (no external script,
// style sheet or font): it polls GET /status and GET /events?since=N once a
// second and computes rates from successive samples in the browser. Read-only:
// it needs no token. Every value from the gateway goes in with textContent.

#include "gw/admin/api.hpp"

namespace gw::admin {

namespace {

constexpr std::string_view kPage = R"GWHTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gw dashboard</title>
<style>
  :root { --bg: #f6f7f9; --card: #fff; --ink: #1d2430; --dim: #667085; --line: #e3e6eb;
          --up: #13795b; --up-bg: #e3f5ee; --down: #b42318; --down-bg: #fde8e7; --unk: #8a6d00; --unk-bg: #fff6d6; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
         background: var(--bg); color: var(--ink); }
  header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 18px; padding: 12px 20px;
           background: #1d2430; color: #fff; }
  header h1 { font-size: 18px; margin: 0; letter-spacing: .5px; }
  header .fact { color: #c9d1dc; }
  header .fact b { color: #fff; font-weight: 600; }
  #conn.ok { color: #7ee2b8; } #conn.bad { color: #ff9c94; }
  main { padding: 16px 20px; display: grid; gap: 16px; }
  #upstreams { display: grid; gap: 16px; }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  h2 small { color: var(--dim); font-weight: normal; margin-left: 8px; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th { color: var(--dim); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .3px; }
  td.num, th.num { text-align: right; }
  tr.pool td { background: #fafbfc; color: var(--dim); font-size: 12px; }
  .badge { display: inline-block; min-width: 52px; text-align: center; padding: 1px 8px; border-radius: 10px;
           font-size: 12px; font-weight: 600; }
  .badge.up { color: var(--up); background: var(--up-bg); }
  .badge.down { color: var(--down); background: var(--down-bg); }
  .badge.unknown { color: var(--unk); background: var(--unk-bg); }
  .err { color: var(--down); font-weight: 600; }
  #events { max-height: 260px; overflow: auto; font: 12px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
  #events div { white-space: pre; }
  .muted { color: var(--dim); }
</style>
</head>
<body>
<header>
  <h1>gw</h1>
  <span class="fact">shm <b id="shm">-</b></span>
  <span class="fact">generation <b id="generation">-</b></span>
  <span class="fact">master <b id="master">-</b></span>
  <span class="fact">workers <b id="workers">-</b></span>
  <span class="fact" id="cluster"></span>
  <span class="fact">updated <b id="updated">-</b></span>
  <span class="fact" id="conn">connecting</span>
</header>
<main>
  <div id="upstreams"></div>
  <section><h2>Rules <small>gray release, first match wins</small></h2>
    <table><thead><tr><th>Listener / route</th><th>Rule</th><th>Matches</th><th>Upstream</th>
      <th class="num">Hits</th><th class="num">Hits/s</th></tr></thead><tbody id="rules"></tbody></table>
    <div id="norules" class="muted">No rules.</div>
  </section>
  <section><h2>Workers</h2>
    <table><thead><tr><th>Slot</th><th>PID</th><th class="num">Generation</th><th class="num">Connections</th>
      <th class="num">Accepted</th><th class="num">HTTP requests</th><th class="num">No host</th></tr></thead>
      <tbody id="workerrows"></tbody></table>
  </section>
  <section><h2>Recent events <small>newest first</small></h2><div id="events"></div></section>
</main>
<script>
"use strict";
const POLL_MS = 1000;
const prev = new Map();   // key -> {t, total, errors, hits}: hosts and rules of the latest status only
let eventsNext = null;
const eventLines = [];

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function td(text, cls) { return el("td", cls ? {class: cls} : null, text); }
function badge(state) {
  const c = el("td", {class: "state"});
  c.appendChild(el("span", {class: "badge " + (state === "up" || state === "down" ? state : "unknown")}, state));
  return c;
}
function rate(key, t, values) {
  const p = prev.get(key);
  prev.set(key, Object.assign({t}, values));
  if (!p || t <= p.t) return null;
  const dt = (t - p.t) / 1000, out = {};
  for (const k of Object.keys(values)) out[k] = Math.max(0, values[k] - p[k]) / dt;
  return out;
}
function fmtRate(r) { return r === null || r === undefined ? "-" : (r < 10 ? r.toFixed(1) : Math.round(r).toString()); }
// Bytes to the host, from it (status: sent_bytes, received_bytes), as gwctl's
// text status writes them: binary units, one decimal, rounded half up, and the
// next unit when that rounds to 1024 ("1.0 MiB", never "1024.0 KiB").
function fmtBytes(n) {
  if (n === undefined || n === null) return "-";
  if (n < 1024) return n + " B";
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let i = 0, v = n / 1024;
  while (Math.round(v * 10) >= 10240 && i < units.length - 1) { v /= 1024; i++; }
  return (Math.round(v * 10) / 10).toFixed(1) + " " + units[i];
}
function describeRule(r) {
  const parts = [];
  if (r.ip) parts.push("ip=" + r.ip.join(","));
  if (r.header) parts.push("header " + r.header.name + "=" + r.header.value);
  if (r.cookie) parts.push("cookie " + r.cookie.name + "=" + r.cookie.value);
  if (r.percent !== undefined) parts.push(r.percent + "%");
  return parts.join(" and ");
}

function renderUpstreams(st, now) {
  const box = document.getElementById("upstreams");
  const frag = document.createDocumentFragment();
  for (const u of st.upstreams) {
    const sec = el("section", {"data-upstream": u.name});
    let hosts = 0;
    for (const p of u.pools) hosts += p.hosts.length;
    // As the balancer counts them (a host not checked yet may be usable).
    const h2 = el("h2", null, "upstream " + u.name);
    h2.appendChild(el("small", null, u.hosts_usable + " of " + hosts + " host(s) usable"));
    sec.appendChild(h2);
    const table = el("table");
    const head = el("tr");
    for (const [name, num] of [["Host", 0], ["Address", 0], ["Weight", 1], ["Admin", 0], ["Health", 0],
                               ["Active", 1], ["Req/s", 1], ["Errors", 1], ["Total", 1], ["Failures", 1],
                               ["Sent", 1], ["Received", 1]])
      head.appendChild(el("th", num ? {class: "num"} : null, name));
    const thead = el("thead"); thead.appendChild(head); table.appendChild(thead);
    const body = el("tbody");
    for (const p of u.pools) {
      const pr = el("tr", {class: "pool", "data-pool": u.name + "/" + p.id});
      const c = el("td", {colspan: "12"}, "pool " + p.id + " · priority " + p.priority + " · " + p.method);
      pr.appendChild(c); body.appendChild(pr);
      for (const h of p.hosts) {
        const key = u.name + "/" + p.id + "/" + h.id;
        // A 5xx listed in retry.on is a failure too: counted once.
        const r5 = h.responses ? h.responses["5xx"] : 0;
        const rt = rate("h:" + key, now, {total: h.total, errors: h.failures - (h.status_failures || 0) + r5});
        const row = el("tr", {"data-host": key});
        row.appendChild(td(h.id, "id"));
        row.appendChild(td(h.address, "address"));
        row.appendChild(td(h.weight, "num weight"));
        const a = badge(h.admin); a.classList.add("admin"); row.appendChild(a);
        const hh = badge(h.health); hh.classList.add("health"); row.appendChild(hh);
        row.appendChild(td(h.active, "num active"));
        row.appendChild(td(rt ? fmtRate(rt.total) : "-", "num rps"));
        let errText = "-", errCls = "num errors";
        if (rt && rt.total > 0) {
          const pct = Math.min(100, 100 * rt.errors / rt.total);
          errText = pct.toFixed(1) + "%";
          if (pct > 0) errCls += " err";
        } else if (rt && rt.errors > 0) { errText = fmtRate(rt.errors) + "/s"; errCls += " err"; }
        row.appendChild(td(errText, errCls));
        row.appendChild(td(h.total, "num total"));
        row.appendChild(td(h.failures, "num failures"));
        row.appendChild(td(fmtBytes(h.sent_bytes), "num sent"));
        row.appendChild(td(fmtBytes(h.received_bytes), "num received"));
        body.appendChild(row);
      }
    }
    table.appendChild(body);
    sec.appendChild(table);
    frag.appendChild(sec);
  }
  box.replaceChildren(frag);
}

function renderRules(st, now) {
  const body = document.getElementById("rules");
  const frag = document.createDocumentFragment();
  let n = 0;
  for (const route of st.routes) for (const r of route.rules) {
    n++;
    const key = route.listener + "/" + route.route + "/" + r.id;
    const rt = rate("r:" + key, now, {hits: r.hits || 0});
    const row = el("tr", {"data-rule": key});
    row.appendChild(td(route.listener + "/" + route.route));
    row.appendChild(td(r.id));
    row.appendChild(td(describeRule(r)));
    row.appendChild(td(r.upstream));
    row.appendChild(td(r.hits || 0, "num hits"));
    row.appendChild(td(rt ? fmtRate(rt.hits) : "-", "num"));
    frag.appendChild(row);
  }
  body.replaceChildren(frag);
  document.getElementById("norules").style.display = n ? "none" : "";
}

function renderWorkers(st) {
  const body = document.getElementById("workerrows");
  const frag = document.createDocumentFragment();
  for (const w of st.workers) {
    const row = el("tr", {"data-worker": String(w.slot)});
    for (const [v, cls] of [[w.slot, ""], [w.pid, ""], [w.generation, "num"], [w.connections, "num"],
                            [w.accepted, "num"], [w.http ? w.http.requests : 0, "num"], [w.no_host, "num"]])
      row.appendChild(td(v, cls));
    frag.appendChild(row);
  }
  body.replaceChildren(frag);
}

function renderHeader(st) {
  document.getElementById("shm").textContent = st.shm;
  document.getElementById("generation").textContent = st.generation;
  document.getElementById("master").textContent = st.master_pid ? "pid " + st.master_pid : "NOT RUNNING";
  document.getElementById("workers").textContent = st.workers.length;
  const c = document.getElementById("cluster");
  c.textContent = st.cluster ? "etcd " + st.cluster.state + " @" + st.cluster.revision : "";
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  document.body.setAttribute("data-generation", String(st.generation));
}

async function getEvents(query) {
  const res = await fetch("/events?" + query, {cache: "no-store"});
  if (!res.ok) throw new Error("/events: HTTP " + res.status);
  return res.json();
}

async function pollEvents() {
  if (eventsNext === null) {
    // First poll: start 50 events before the head (a `since` past the head answers the head).
    const probe = await getEvents("since=18446744073709551615&limit=1");
    eventsNext = Math.max(0, probe.head - 50);
  }
  const ev = await getEvents("since=" + eventsNext + "&limit=200");
  eventsNext = ev.next;
  for (const e of ev.events) eventLines.push(e.time + " #" + e.seq + " gen=" + e.generation + " " + e.text);
  while (eventLines.length > 200) eventLines.shift();
  if (ev.events.length) {
    const box = document.getElementById("events");
    const frag = document.createDocumentFragment();
    for (let i = eventLines.length - 1; i >= 0; i--) frag.appendChild(el("div", null, eventLines[i]));
    box.replaceChildren(frag);
  }
}

async function poll() {
  const conn = document.getElementById("conn");
  try {
    const res = await fetch("/status", {cache: "no-store"});
    if (!res.ok) throw new Error("/status: HTTP " + res.status);
    const st = await res.json();
    const now = Date.now();
    renderHeader(st);
    renderUpstreams(st, now);
    renderRules(st, now);
    // A host or rule not in this status is gone: its sample goes too, or a
    // page left open under host churn would keep one for every host ever seen.
    for (const [key, p] of prev) if (p.t !== now) prev.delete(key);
    renderWorkers(st);
    await pollEvents();
    conn.textContent = "live"; conn.className = "fact ok";
  } catch (e) {
    conn.textContent = "disconnected: " + e.message; conn.className = "fact bad";
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script>
</body>
</html>
)GWHTML";

}  // namespace

std::string_view dashboard_html() noexcept {
  return kPage;
}

}  // namespace gw::admin
