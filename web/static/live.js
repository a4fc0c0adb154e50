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
      staff.el("span", { class: "pill hold", hidden: true }),
      staff.el("ul", { class: "flags" }),
      controls(s),
      staff.el("ul", { class: "intervene-log", "aria-live": "polite", "aria-label": "Interventions" }),
      staff.el("footer", {}, staff.el("a", { href: `/sessions/${s.id}` }, "Open review")));
    if (s.hold) setHold(node, s.hold);
    // The media node refreshes the thumbnail every ~3 s; 404 (none yet, or the stream stopped) shows the
    // placeholder and the last picture is not kept.
    img.addEventListener("load", () => { node.dataset.thumb = "ok"; });
    img.addEventListener("error", () => { node.dataset.thumb = "none"; });
    refreshThumb(node, s.id);
    return node;
  }

  // --- live intervention ------------------------------------------------------------------------------------
  const PRESETS = config.presets || {};
  const ACTION_WORDS = { message: "Message", adjust: "Request", pause: "Pause", resume: "Resume", end: "End",
                         break: "Break" };
  const STATE_WORDS = { sent: "sent", queued: "queued: the candidate is not connected; applies when they are back",
                        shown: "shown on the candidate's page", ok: "acknowledged by the candidate",
                        started: "started by the candidate", ended: "ended" };

  function controls(s) {
    const who = s.candidate || "the candidate";
    const select = staff.el("select", { class: "preset", "aria-label": `Request to ${who}` },
      staff.el("option", { value: "" }, "Message (type below)"),
      ...Object.entries(PRESETS).map(([key, text]) => staff.el("option", { value: key }, text)));
    const input = staff.el("input", { type: "text", class: "msg", maxlength: "300", "aria-label": `Message to ${who}`,
                                      placeholder: "Message to the candidate" });
    const form = staff.el("form", { class: "intervene", "aria-label": `Intervene: ${who}` }, select, input,
      staff.el("button", { type: "submit", class: "send" }, "Send"),
      staff.el("button", { type: "button", class: "pause secondary", onclick: () => togglePause(s.id) }, "Pause"),
      staff.el("button", { type: "button", class: "end danger", onclick: () => endExam(s.id, who) }, "End exam"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const preset = select.value;
      const text = input.value.trim();
      if (!preset && !text) { input.focus(); return; }
      const body = preset ? { action: "adjust", preset, text: text || undefined } : { action: "message", text };
      intervene(s.id, body).then((ok) => { if (ok) { input.value = ""; select.value = ""; } });
    });
    return form;
  }

  async function intervene(sessionId, body) {
    const requestedAt = Date.now();
    monitor.lastIntervention = { sessionId, requestedAt, body };
    try {
      const r = await staff.api("POST", `/api/sessions/${sessionId}/intervene`, body);
      monitor.lastIntervention.eventId = r.event_id;
      logIntervention(sessionId, { event_id: r.event_id, action: r.action, state: r.state,
                                   text: body.text || PRESETS[body.preset] || "" });
      return true;
    } catch (e) {
      announce(`Not sent: ${e.message}`);
      alert(`Not sent: ${e.message}`);
      return false;
    }
  }

  function togglePause(sessionId) {
    const entry = sessions.get(sessionId);
    const paused = entry && entry.card.dataset.hold === "paused";
    intervene(sessionId, { action: paused ? "resume" : "pause" });
  }

  function endExam(sessionId, who) {
    if (!confirm(`End the exam of ${who} now? Their recording is kept and submitted.`)) return;
    intervene(sessionId, { action: "end" });
  }

  function setHold(node, hold) {
    if (hold) node.dataset.hold = hold; else delete node.dataset.hold;
    const pill = node.querySelector(".pill.hold");
    pill.hidden = !hold;
    pill.textContent = hold === "paused" ? "paused" : hold === "break" ? "on a break" : "";
    const button = node.querySelector("button.pause");
    if (button) {
      button.textContent = hold === "paused" ? "Resume" : "Pause";
      button.disabled = hold === "break";
    }
  }

  function logIntervention(sessionId, m) {
    const entry = ensure(sessionId);
    const list = entry.card.querySelector(".intervene-log");
    const key = `${m.event_id}:${m.action}`;
    let li = m.event_id != null ? list.querySelector(`li[data-key="${CSS.escape(key)}"]`) : null;
    if (!li) {
      li = staff.el("li", { dataset: { key, eventId: String(m.event_id), action: m.action } },
        staff.el("span", { class: "what" }), " ", staff.el("span", { class: "state hint" }));
      list.prepend(li);
      while (list.children.length > 6) list.lastElementChild.remove();
    }
    if (m.text) li.querySelector(".what").textContent = `${ACTION_WORDS[m.action] || m.action}: ${m.text}`;
    else if (!li.querySelector(".what").textContent) li.querySelector(".what").textContent = ACTION_WORDS[m.action] || m.action;
    // An acknowledgement never goes back to "shown" or "sent" (messages can arrive in any order).
    const rank = { queued: 0, sent: 0, started: 0, shown: 1, ok: 2, ended: 3 };
    if (!li.dataset.state || (rank[m.state] ?? 0) >= (rank[li.dataset.state] ?? 0)) {
      li.dataset.state = m.state;
      li.querySelector(".state").textContent = `— ${STATE_WORDS[m.state] || m.state}`;
    }
    if (m.action === "pause" && (m.state === "sent" || m.state === "queued")) setHold(entry.card, "paused");
    if (m.action === "resume" && (m.state === "sent" || m.state === "queued")) setHold(entry.card, null);
    if (m.action === "break") setHold(entry.card, m.state === "started" ? "break" : m.state === "ended" ? null : entry.card.dataset.hold);
    if (m.state === "ok") announce(`${entry.data.candidate || "The candidate"} acknowledged: ${li.querySelector(".what").textContent}`);
    if (m.action === "break" && m.state === "started") announce(`${entry.data.candidate || "A candidate"} started a break`);
  }

  function announce(text) {
    const el = document.getElementById("announcer");
    // Cleared first: the same words twice in a row are read out again.
    el.textContent = "";
    setTimeout(() => { el.textContent = text; }, 50);
  }
  monitor.announce = announce;

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
        const entry = sessions.get(msg.session_id);
        const who = (entry && entry.data.candidate) || "a candidate";
        announce(`New flag, needs review: ${msg.event.kind.replace(/_/g, " ")} for ${who}`);
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
    } else if (msg.type === "intervention" && msg.session_id) {
      logIntervention(msg.session_id, msg);
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
