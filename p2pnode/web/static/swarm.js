// The swarm view: one snapshot of every node at a time (see swarm_view.py), drawn whole.
"use strict";

(() => {
  const { el, fill, table, bar, short, dur } = P2P;
  const FAULTS = new Set(["kill", "crash", "partition", "netem", "seen down"]);
  const HEALS = new Set(["heal", "restart", "clear", "seen up", "converged"]);

  function timeline(s) {
    const box = document.getElementById("timeline");
    const span = Math.max(s.duration || 0, s.elapsed, 1);
    const marks = s.events.map((e) => {
      const kind = FAULTS.has(e.event) ? "fault" : HEALS.has(e.event) ? "heal" : "";
      const x = (100 * Math.max(0, e.t) / span).toFixed(2) + "%";
      const what = e.event + (e.nodes && e.nodes.length ? " " + e.nodes.join(",") : "");
      const tick = el("div", { class: "tick " + kind, title: `${e.t.toFixed(1)} s: ${what}` });
      const label = el("div", { class: "tlabel", text: what });
      tick.style.left = x; label.style.left = x;
      return [tick, label];
    }).flat();
    const now = el("div", { class: "now", title: "now" });
    now.style.left = (100 * s.elapsed / span).toFixed(2) + "%";
    box.replaceChildren(...marks, now);
    document.getElementById("clock").textContent =
      `${dur(s.elapsed)}` + (s.duration ? ` of ${dur(s.duration)} of work` : "");
  }

  function nodes(s) {
    const cheaters = new Set(s.cheaters.nodes);
    const t = table([
      ["node", (n) => String(n.index), "num"],
      ["role", (n) => n.role],
      ["peer", (n) => el("span", { class: "mono", title: n.peer, text: short(n.peer) })],
      ["health", (n) => el("span", { class: "badge " + n.state, text: n.state, title: (n.reasons || []).join("\n") || n.error })],
      ["reachability", (n) => n.reachability],
      ["peers", (n) => n.peers, "num"],
      ["market", (n) => (n.up ? `${n.market}` + (n.missing ? ` (${n.missing} missing)` : " ✓") : "-"), "num"],
      ["running", (n) => n.running, "num"],
      ["jobs done (as provider)", (n) => n.jobs["provider:done"] || 0, "num"],
      ["jobs (as requester)", (n) => Object.entries(n.jobs).filter(([k]) => k.startsWith("requester:")).map(([k, v]) => `${k.slice(10)} ${v}`).join(", ")],
      ["", (n) => (n.paused ? "paused" : "")],
      ["dashboard", (n) => (n.ui ? el("a", { href: n.ui, target: "_blank", rel: "noopener noreferrer", text: "open" }) : "")],
    ], s.nodes);
    t.querySelectorAll("tbody tr").forEach((tr, i) => { if (cheaters.has(s.nodes[i].index)) tr.classList.add("cheater"); });
    fill("nodes", t);
  }

  function reputation(s) {
    const m = s.reputation;
    const cheaters = new Set(s.cheaters.nodes);
    if (!m.requesters.length) { fill("reputation", el("p", { class: "empty", text: "no requester" })); return; }
    const head = el("tr", {}, el("th", { text: "requester \\ provider" }),
      ...m.providers.map((p) => el("th", { class: cheaters.has(p) ? "warn" : "", text: String(p) + (cheaters.has(p) ? " ⚠" : "") })));
    const rows = m.requesters.map((r) => el("tr", {}, el("th", { text: String(r) }), ...m.providers.map((p) => {
      const c = (m.scores[String(r)] || {})[String(p)];
      if (!c) return el("td", { class: "muted", text: "·" });
      return el("td", {}, bar(c.score, Number(c.score).toFixed(2) + (c.distrusted ? " ✗" : ""), c.distrusted ? "bad" : "good"));
    })));
    fill("reputation", el("table", { class: "matrix" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }

  function cheaters(s) {
    const c = s.cheaters;
    document.getElementById("caught").textContent = `(${c.caught.length} of ${c.nodes.length})`;
    fill("cheaters", table([
      ["node", (i) => String(i), "num"],
      ["role", (i) => (s.nodes.find((n) => n.index === i) || {}).role || ""],
      ["caught", (i) => (c.by[String(i)].length ? el("span", { class: "yes", text: "yes" }) : el("span", { class: "no", text: "not yet" }))],
      ["distrusted by requesters", (i) => c.by[String(i)].join(", ")],
    ], c.nodes, "no cheater in this swarm"));
  }

  function jobs(s) {
    document.getElementById("job-totals").textContent =
      "(" + Object.entries(s.job_totals).map(([k, v]) => `${k} ${v}`).join(", ") + ")";
    fill("jobs", table([
      ["requester", (j) => String(j.requester), "num"],
      ["provider", (j) => el("span", { class: j.cheater ? "warn" : "", text: j.provider === null ? "?" : String(j.provider) }), "num"],
      ["workload", (j) => j.workload],
      ["state", (j) => el("span", { class: "state-" + j.state, text: j.state })],
      ["checked", (j) => j.checked],
      ["took", (j) => (j.ended && j.started ? dur(j.ended - j.started) : "…"), "num"],
    ], s.jobs, "no job yet"));
  }

  function events(s) {
    fill("events", table([
      ["t", (e) => e.t.toFixed(1) + " s", "num"],
      ["event", (e) => e.event],
      ["detail", (e) => Object.entries(e).filter(([k]) => k !== "t" && k !== "event").map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")],
    ], [...s.events].reverse(), "nothing happened yet"));
  }

  function draw(s) {
    document.getElementById("name").textContent = s.name;
    const badge = document.getElementById("converged");
    badge.textContent = s.converged ? "converged" : "not converged";
    badge.className = "badge " + (s.converged ? "healthy" : "issues");
    const done = s.job_totals.done || 0;
    document.getElementById("summary").textContent =
      `${s.up} of ${s.nodes.length} nodes up · ${done} job(s) done · ${s.cheaters.caught.length}/${s.cheaters.nodes.length} cheater(s) caught`;
    timeline(s); nodes(s); reputation(s); cheaters(s); jobs(s); events(s);
  }

  document.addEventListener("DOMContentLoaded", () => P2P.live({ swarm: draw }));
})();
