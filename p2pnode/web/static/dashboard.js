// The node's dashboard: each panel renders one section of the live stream (see dashboard.py).
"use strict";

(() => {
  const { el, fill, table, bar, short, gib, time, dur, post } = P2P;
  let paused = false;
  let sharingShown = false;
  let chart = null;
  let history = null;

  function status(s) {
    const badge = document.getElementById("state");
    badge.textContent = s.state;
    badge.className = "badge " + s.state;
    document.getElementById("who").textContent = `peer ${short(s.peer)} · v${s.version} · up ${dur(s.uptime_s)}`;
    paused = !!s.paused;
    const button = document.getElementById("pause");
    button.disabled = !s.providing;
    button.textContent = paused ? "Resume" : "Pause";
    button.className = paused ? "resume" : "";
    const ex = s.executor || { running: 0, completed: 0 };
    document.getElementById("running").textContent =
      (paused ? "paused · " : "") + `${ex.running} running · ${ex.completed} done`;
    const problems = (s.reasons || []).map((r) => {
      const [what, fix] = r.split(" -- fix: ");
      return el("li", { class: "problem" }, el("strong", { text: what }), fix ? el("div", { class: "fix", text: "fix: " + fix }) : null);
    });
    const notes = (s.notes || []).map((n) => el("li", { class: "note", text: n }));
    fill("health",
      problems.length ? el("ul", { class: "problems" }, ...problems) : el("p", { class: "ok", text: "No problems." }),
      notes.length ? el("ul", { class: "notes" }, ...notes) : null,
      el("p", { class: "muted small", text: `${s.peers} peer(s) · ${s.market} provider(s) in the market · ledger ${s.ledger.entries} entries` }));
    const r = s.reachability || {};
    const upnp = s.upnp || null;
    fill("reach",
      el("p", {}, el("strong", { text: r.reachability || "unknown" }),
        r.relay_service ? " · relaying for others" : "",
        (r.relayed_via || []).length ? ` · via ${r.relayed_via.length} relay(s)` : ""),
      upnp ? el("p", { class: "muted small", text: "UPnP: " + (upnp.state || "") }) : null,
      el("ul", { class: "addrs" }, ...(s.addrs || []).map((a) => el("li", { class: "mono", text: a }))),
      s.metrics ? el("p", { class: "muted small", text: "metrics on " + s.metrics }) : null);
  }

  function gpus(g) {
    const cards = (g.gpus || []).map((d) => el("div", { class: "device" },
      el("div", { class: "devname", text: `GPU ${d.index} · ${d.name}` }),
      el("div", { class: "muted small", text: `compute ${d.cc} · driver ${d.driver}` }),
      el("div", {}, el("span", { class: "lbl", text: "memory" }), bar(1 - d.mem_free / Math.max(1, d.mem_total), `${gib(d.mem_total - d.mem_free)} / ${gib(d.mem_total)} GiB used`)),
      el("div", {}, el("span", { class: "lbl", text: "utilisation" }), bar(d.util / 100, `${d.util}%`)),
      el("div", {}, el("span", { class: "lbl", text: "slots" }), bar(d.slots ? d.busy / d.slots : 0, d.slots ? `${d.busy} / ${d.slots} in use` : "not offered", "slots"))));
    if (!cards.length && g.cpu) {
      const c = g.cpu;
      cards.push(el("div", { class: "device" },
        el("div", { class: "devname", text: `CPU · ${c.model}` }),
        el("div", { class: "muted small", text: `${c.cores} cores` }),
        el("div", {}, el("span", { class: "lbl", text: "memory" }), bar(1 - c.mem_free / Math.max(1, c.mem_total), `${gib(c.mem_total - c.mem_free)} / ${gib(c.mem_total)} GiB used`)),
        el("div", {}, el("span", { class: "lbl", text: "slots" }), bar(c.slots ? c.busy / c.slots : 0, c.slots ? `${c.busy} / ${c.slots} in use` : "not offered", "slots"))));
    }
    fill("gpus", el("div", { class: "devices" }, ...cards),
      el("p", {}, g.offered.length ? `Offers ${g.offered.join(", ")} at ${g.price} µcr per GFLOP` : "Offers nothing (not providing)",
        g.paused ? el("strong", { class: "warn", text: " · paused" }) : ""),
      ...(g.problems || []).map((p) => el("p", { class: "warn", text: p })));
  }

  function sharing(s) {
    if (sharingShown && document.activeElement && document.getElementById("sharing").contains(document.activeElement)) return;
    const f = document.getElementById("sharing");
    f.price.value = s.price;
    f.workloads.value = (s.workloads || []).join(", ");
    f.schedule.value = (s.schedule || []).join("; ");
    f.max_gpu_mem.value = s.max_gpu_mem || "";
    f.checker.checked = !!s.checker;
    sharingShown = true;
  }

  function market(rows) {
    document.getElementById("market-count").textContent = `(${rows.length})`;
    fill("market", table([
      ["provider", (e) => el("span", { class: "mono", title: e.peer, text: short(e.peer) })],
      ["hardware", (e) => (e.gpus || []).length ? e.gpus.map((g) => g.name).join(", ") : `CPU ×${(e.cpu || {}).cores || "?"}`],
      ["memory GiB", (e) => (e.gpus || []).length ? e.gpus.map((g) => `${gib(g.mem_free)}/${gib(g.mem_total)}`).join(", ") : `${gib((e.cpu || {}).mem_free)}/${gib((e.cpu || {}).mem_total)}`, "num"],
      ["offers", (e) => [...new Set((e.offers || []).map((o) => `${o.wl} @ ${o.price}`))].join("; ")],
      ["Gflop/s", (e) => { const v = Object.values(e.speed || {}); return v.length ? Math.max(...v).toFixed(0) : "-"; }, "num"],
      ["ad issued", (e) => time(e.iat / 1000)],
    ], rows, "no providers known yet"));
  }

  function peers(rows) {
    fill("peers", table([
      ["peer", (p) => el("span", { class: "mono", title: p.peer, text: short(p.peer) })],
      ["provider", (p) => (p.provider ? "yes" : "")],
      ["addresses", (p) => el("span", { class: "mono small", text: (p.addrs || []).join(" ") })],
      ["penalty", (p) => p.penalty, "num"],
    ], rows, "no peers connected"));
  }

  const ENDED = new Set(["done", "failed", "rejected", "cancelled", "error", "expired"]);

  function jobs(rows) {
    const live = rows.filter((j) => !ENDED.has(j.state) && !j.ended);
    const past = rows.filter((j) => ENDED.has(j.state) || j.ended);
    const cols = (withProgress) => [
      ["job", (j) => el("span", { class: "mono", title: j.job, text: j.job.slice(0, 10) })],
      ["role", (j) => j.role + (j.purpose && j.purpose !== "job" ? ` (${j.purpose})` : "")],
      ["workload", (j) => j.workload],
      ["peer", (j) => el("span", { class: "mono", title: j.peer, text: short(j.peer) })],
      withProgress ? ["progress", (j) => bar(j.progress, `${Math.round(j.progress * 100)}% · ${j.state}`)]
        : ["state", (j) => el("span", { class: "state-" + j.state, text: j.state })],
      ["price µcr", (j) => j.price, "num"],
      ["verified", (j) => j.verified],
      withProgress ? ["started", (j) => time(j.started)] : ["took", (j) => (j.ended && j.started ? dur(j.ended - j.started) : ""), "num"],
      ...(withProgress ? [] : [["outcome", (j) => el("span", { class: "small", text: j.outcome || "" })]]),
    ];
    fill("jobs-live", table(cols(true), live, "no job running"));
    fill("jobs-past", table(cols(false), past, "no job yet"));
  }

  function credits(c) {
    const t = c.total || { given: 0, received: 0, balance: 0 };
    document.getElementById("credit-totals").textContent =
      `given ${t.given} µcr · received ${t.received} µcr · balance ${t.balance}`;
    fill("credits", table([
      ["peer", (r) => el("span", { class: "mono", title: r.peer, text: short(r.peer) })],
      ["given µcr", (r) => r.given, "num"], ["received µcr", (r) => r.received, "num"],
      ["balance", (r) => r.balance, "num"], ["jobs given", (r) => r.jobs_given, "num"],
      ["jobs received", (r) => r.jobs_received, "num"],
    ], c.peers || [], "no credits moved yet"));
  }

  function drawChart() {
    const box = document.getElementById("chart");
    if (!history || box.offsetParent === null || typeof uPlot === "undefined") return;
    // from zero, a moment before the first receipt, to now
    const t0 = history.t.length ? history.t[0] - 1 : Date.now() / 1000 - 60;
    const data = [[t0, ...history.t, Date.now() / 1000], [0, ...history.given, history.total.given],
      [0, ...history.received, history.total.received]];
    const width = Math.max(300, box.clientWidth - 8);
    if (chart && chart.width === width) { chart.setData(data); return; }
    if (chart) chart.destroy();
    const steps = uPlot.paths.stepped({ align: 1 });  // cumulative sums: a step at each receipt
    chart = new uPlot({
      width, height: 260,
      series: [{}, { label: "given (µcr)", stroke: "#2f9e44", width: 2, fill: "rgba(47,158,68,0.08)", paths: steps },
        { label: "received (µcr)", stroke: "#1c7ed6", width: 2, paths: steps }],
      axes: [{}, { size: 60 }],
    }, data, box);
  }

  function ledger(l) {
    document.getElementById("ledger-count").textContent = `(${l.count} entries, newest first)`;
    fill("ledger", table([
      ["seq", (e) => e.seq, "num"], ["time", (e) => time(e.t_ms / 1000)], ["kind", (e) => e.kind],
      ["peer", (e) => el("span", { class: "mono", title: e.peer, text: short(e.peer) })],
      ["data", (e) => el("span", { class: "mono small", text: Object.entries(e.data || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ") })],
      ["hash", (e) => el("span", { class: "mono small", text: e.hash.slice(0, 12) })],
    ], l.entries || [], "the ledger is empty"));
  }

  function reputation(rows) {
    fill("reputation", table([
      ["peer", (r) => el("span", { class: "mono", title: r.peer, text: short(r.peer) })],
      ["score", (r) => bar(r.score, Number(r.score).toFixed(3), r.distrusted ? "bad" : "good")],
      ["± ", (r) => Number(r.uncertainty).toFixed(3), "num"],
      ["checked good / bad", (r) => `${Number(r.own_pos).toFixed(1)} / ${Number(r.own_neg).toFixed(1)}`, "num"],
      ["cheats", (r) => r.cheats, "num"],
      ["", (r) => (r.distrusted ? el("strong", { class: "warn", text: "distrusted" }) : "")],
    ], rows, "no peer known yet"));
  }

  function logs(lines) {
    const box = document.getElementById("logs");
    const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    for (const l of lines) {
      box.append(el("span", { class: "log-" + l.level, text: `${new Date(l.t * 1000).toLocaleTimeString()} ${l.level} ${l.logger}: ${l.msg}\n` }));
    }
    while (box.childNodes.length > 500) box.firstChild.remove();
    if (atEnd) box.scrollTop = box.scrollHeight;
  }

  async function togglePause() {
    const button = document.getElementById("pause");
    button.disabled = true;
    try {
      const r = await post(paused ? "/api/resume" : "/api/pause");
      paused = r.paused;
      button.textContent = paused ? "Resume" : "Pause";
      button.className = paused ? "resume" : "";
    } catch (err) {
      alert(err.message);
    } finally {
      button.disabled = false;
    }
  }

  async function applySharing(ev) {
    ev.preventDefault();
    const f = ev.target;
    const said = document.getElementById("sharing-said");
    const split = (text, sep) => text.split(sep).map((x) => x.trim()).filter(Boolean);
    const body = {
      price: Number(f.price.value), workloads: split(f.workloads.value, ","),
      schedule: split(f.schedule.value, ";"), max_gpu_mem: f.max_gpu_mem.value.trim(), checker: f.checker.checked,
    };
    try {
      sharing(await post("/api/sharing", body));
      said.textContent = "applied";
      said.className = "ok";
    } catch (err) {
      said.textContent = err.message;
      said.className = "warn";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    P2P.tabs();
    document.getElementById("pause").addEventListener("click", togglePause);
    document.getElementById("sharing").addEventListener("submit", applySharing);
    window.addEventListener("tabshown", drawChart);
    window.addEventListener("resize", drawChart);
    P2P.live({
      status, gpus, sharing, market, peers, jobs, credits, ledger, reputation, logs,
      history: (h) => { history = h; drawChart(); },
    });
  });
})();
