// Live monitor: the initial grid from the page, then every message from the /api/live WebSocket.
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("config").textContent);
  const grid = document.getElementById("grid");
  const wsState = document.getElementById("ws-state");
  const sessions = new Map(); // id -> {data, card}
  const monitor = { sessions, ws: null, connected: false, lastAlert: null, messages: 0 };
  window.monitor = monitor;

  const THUMB_MS = 3000;

  function card(s) {
    const img = staff.el("img", { class: "thumb-live", alt: `latest frame of ${s.candidate || "the candidate"}` });
    const node = staff.el("article", {
      class: "card", dataset: { sessionId: s.id, connection: s.connection, thumb: "loading" },
    },
      staff.el("header", {},
        staff.el("strong", { class: "candidate" }, s.candidate || s.id.slice(0, 8)),
        staff.el("span", { class: "hint exam" }, s.exam || ""),
        staff.el("span", { class: "pill conn", dataset: { state: s.connection } }, s.connection)),
      staff.el("div", { class: "thumbbox" }, img, staff.el("span", { class: "placeholder" }, "No picture yet")),
      staff.el("ul", { class: "flags" }),
      staff.el("footer", {}, staff.el("a", { href: `/sessions/${s.id}` }, "Open review")));
    // The media node refreshes the thumbnail every ~3 s; 404 (none yet, or the stream stopped) shows the
    // placeholder and the last picture is not kept.
    img.addEventListener("load", () => { node.dataset.thumb = "ok"; });
    img.addEventListener("error", () => { node.dataset.thumb = "none"; });
    refreshThumb(node, s.id);
    return node;
  }

  function refreshThumb(node, id) {
    const img = node.querySelector("img.thumb-live");
    if (img) img.src = `/api/sessions/${id}/thumbnail?t=${Date.now()}`;
  }

  setInterval(() => {
    if (document.hidden) return;
    for (const [id, entry] of sessions) if (!entry.card.classList.contains("ended")) refreshThumb(entry.card, id);
  }, THUMB_MS);

  function ensure(id, data = {}) {
    let entry = sessions.get(id);
    if (!entry) {
      const s = { id, candidate: "", exam: "", connection: "unknown", flags: [], ...data };
      entry = { data: s, card: card(s) };
      sessions.set(id, entry);
      grid.prepend(entry.card);
      if (!data.candidate) fillIn(id);
      for (const f of s.flags) upsertFlag(id, f, false);
      counts();
    }
    return entry;
  }

  async function fillIn(id) {
    try {
      const s = await staff.api("GET", `/api/sessions/${id}`);
      const entry = sessions.get(id);
      if (!entry) return;
      entry.card.querySelector(".candidate").textContent = s.candidate;
      entry.card.querySelector(".exam").textContent = s.exam;
    } catch (e) { /* not visible to us or deleted */ }
  }

  function setConnection(id, state) {
    const entry = ensure(id);
    entry.card.dataset.connection = state;
    const pill = entry.card.querySelector(".conn");
    pill.textContent = state;
    pill.dataset.state = state;
  }

  function upsertFlag(sessionId, ev, alert) {
    const entry = ensure(sessionId);
    const list = entry.card.querySelector(".flags");
    let li = list.querySelector(`li[data-event-id="${ev.id}"]`);
    if (!li) {
      li = staff.el("li", { class: "flag", dataset: { eventId: ev.id, kind: ev.kind } },
        staff.el("span", { class: "kind", dataset: { kind: ev.kind } }, ev.kind),
        staff.el("span", { class: "hint when" }),
        staff.el("button", { type: "button", class: "ack secondary", onclick: () => ack(sessionId, ev.id) },
          "Acknowledge"));
      list.prepend(li);
    }
    // Merged copy/pastes count themselves: "copy_paste ×7".
    li.querySelector(".kind").textContent = ev.count > 1 ? `${ev.kind} ×${ev.count}` : ev.kind;
    li.querySelector(".when").textContent = ev.end_s === null || ev.end_s === undefined
      ? `since ${staff.fmtTime(ev.start_s)}` : `${staff.fmtTime(ev.start_s)}–${staff.fmtTime(ev.end_s)}`;
    li.dataset.open = ev.end_s === null || ev.end_s === undefined ? "1" : "0";
    if (ev.acknowledged) markAcked(li);
    if (alert) {
      li.classList.add("alert");
      entry.card.classList.add("alert");
      setTimeout(() => entry.card.classList.remove("alert"), 10000);
    }
    return li;
  }

  function markAcked(li) {
    li.classList.remove("alert");
    li.classList.add("acked");
    const btn = li.querySelector(".ack");
    if (btn) btn.remove();
  }

  async function ack(sessionId, eventId) {
    try {
      await staff.api("POST", `/api/sessions/${sessionId}/events/${eventId}/ack`);
      const li = grid.querySelector(`li[data-event-id="${eventId}"]`);
      if (li) markAcked(li);
    } catch (e) { alert(`Could not acknowledge: ${e.message}`); }
  }

  function counts() {
    document.getElementById("live-count").textContent = `${sessions.size} live session(s)`;
    document.getElementById("empty").hidden = sessions.size > 0;
  }

  function handle(msg) {
    monitor.messages += 1;
    if (msg.type === "hello") { monitor.connected = true; return; }
    if (msg.type === "overflow") { location.reload(); return; }
    if (msg.type === "hub" && msg.state === "reconnecting") {
      wsState.textContent = "reconnecting…"; wsState.dataset.state = "reconnecting"; return;
    }
    // The server lost Redis for a while: alerts of that time are stored but were never pushed. Reload them.
    if (msg.type === "hub" && msg.state === "resync") { location.reload(); return; }
    if (msg.type === "event" && msg.session_id && msg.event) {
      const li = upsertFlag(msg.session_id, msg.event, msg.action === "start");
      if (msg.action === "start") {
        monitor.lastAlert = { eventId: msg.event.id, shownAt: Date.now(), delayMs: msg.at ? Date.now() - msg.at * 1000 : null };
        li.dataset.shownAt = String(monitor.lastAlert.shownAt);
      }
    } else if (msg.type === "connection" && msg.session_id) {
      setConnection(msg.session_id, msg.connection);
    } else if (msg.type === "session" && msg.session_id) {
      if (msg.status === "live") { ensure(msg.session_id); setConnection(msg.session_id, "connected"); }
      else if (sessions.has(msg.session_id)) {
        const entry = sessions.get(msg.session_id);
        entry.card.classList.add("ended");
        setConnection(msg.session_id, msg.status);
        setTimeout(() => { entry.card.remove(); sessions.delete(msg.session_id); counts(); }, 30000);
      }
    } else if (msg.type === "ack") {
      const li = grid.querySelector(`li[data-event-id="${msg.event_id}"]`);
      if (li) markAcked(li);
    }
  }

  let backoff = 500;
  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/live`);
    monitor.ws = ws;
    ws.onopen = () => { backoff = 500; wsState.textContent = "live"; wsState.dataset.state = "connected"; };
    ws.onmessage = (e) => { try { handle(JSON.parse(e.data)); } catch (err) { console.error(err); } };
    ws.onclose = () => {
      monitor.connected = false;
      wsState.textContent = "reconnecting…";
      wsState.dataset.state = "reconnecting";
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  for (const s of config.sessions) ensure(s.id, s);
  counts();
  connect();
})();
