// Shared by the node's dashboard and the swarm view: the token, the API, the live stream, and
// small DOM helpers. Every value a peer or the node sends is set as text, never as HTML.
"use strict";

const P2P = (() => {
  const token = document.querySelector('meta[name="p2pnode-token"]').content;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fill(id, ...children) {
    const box = document.getElementById(id);
    if (box) box.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
    return box;
  }

  function table(columns, rows, empty) {
    if (!rows.length) return el("p", { class: "empty", text: empty || "nothing yet" });
    const head = el("tr", {}, ...columns.map((c) => el("th", { text: c[0], class: c[2] || "" })));
    const body = rows.map((r, i) => el("tr", { "data-row": i },
      ...columns.map((c) => { const v = c[1](r); return el("td", { class: c[2] || "" }, v); })));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
  }

  function bar(fraction, label, cls) {
    const f = Math.max(0, Math.min(1, Number(fraction) || 0));
    const inner = el("span", { class: "fill " + (cls || "") });
    inner.style.width = (f * 100).toFixed(1) + "%";
    return el("span", { class: "bar", title: label || "" }, inner, el("span", { class: "barlabel", text: label || "" }));
  }

  const short = (peer) => (peer && peer.length > 12 ? "…" + peer.slice(-8) : peer || "");
  const gib = (n) => (Number(n || 0) / 2 ** 30).toFixed(1);
  const time = (s) => (s ? new Date(s * 1000).toLocaleTimeString() : "");
  const dur = (s) => {
    s = Math.max(0, Math.round(Number(s) || 0));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  };

  async function api(path) {
    const r = await fetch(path, { headers: { "X-P2PNode-Token": token }, credentials: "same-origin" });
    if (!r.ok) throw new Error((await r.text()) || r.statusText);
    return r.json();
  }

  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "X-P2PNode-Token": token, "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    const answer = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(answer.error || r.statusText);
    return answer;
  }

  // Live updates: server-sent events, one event per section that changed; the browser reconnects.
  function live(handlers) {
    const state = document.getElementById("live");
    const source = new EventSource("/api/events");
    source.onopen = () => { if (state) { state.textContent = "live"; state.className = "live ok"; } };
    source.onerror = () => { if (state) { state.textContent = "reconnecting…"; state.className = "live bad"; } };
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, (ev) => {
        try { fn(JSON.parse(ev.data)); } catch (err) { console.error(name, err); }
      });
    }
    return source;
  }

  // Tabs: the hash names the shown section (#jobs); no reload.
  function tabs() {
    const show = () => {
      const want = (location.hash || "#overview").slice(1);
      const sections = document.querySelectorAll("main > section[data-tab]");
      let found = false;
      sections.forEach((s) => { const on = s.dataset.tab === want; s.hidden = !on; found = found || on; });
      if (!found && sections.length) { sections[0].hidden = false; }
      document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.hash === "#" + want));
      window.dispatchEvent(new Event("tabshown"));
    };
    window.addEventListener("hashchange", show);
    show();
  }

  return { token, el, fill, table, bar, short, gib, time, dur, api, post, live, tabs };
})();
