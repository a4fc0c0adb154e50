// Candidate exam page: consent -> camera check -> reference photo -> WebRTC stream with automatic reconnect.
// No build step; plain browser APIs only.
"use strict";

(() => {
  const cfg = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const storeKey = `proctor:${cfg.sessionId}`;
  const saved = JSON.parse(sessionStorage.getItem(storeKey) || "{}");
  const save = (patch) => { Object.assign(saved, patch); sessionStorage.setItem(storeKey, JSON.stringify(saved)); };

  // Exposed for the browser tests and for support staff looking at a candidate's console.
  const state = window.proctor = { connection: "idle", attempts: 0, connects: 0, pc: null, finished: false };

  function api(path, options = {}) {
    const headers = Object.assign({ Authorization: `Bearer ${cfg.token}` }, options.headers || {});
    return fetch(`/api/sessions/${cfg.sessionId}${path}`, Object.assign({}, options, { headers }));
  }

  function show(step) {
    for (const el of document.querySelectorAll(".step")) el.hidden = el.id !== step;
    // The candidate keeps seeing what the proctor sees during the exam.
    if (step === "step-exam" && media && $("selfview").srcObject !== media) $("selfview").srcObject = media;
  }

  function setConnection(value, text) {
    state.connection = value;
    const pill = $("conn-state");
    pill.dataset.state = value;
    pill.textContent = text || value;
  }

  function hint(id, text, kind) {
    const el = $(id);
    el.textContent = text;
    el.className = `hint ${kind || ""}`;
  }

  // --- step 1: notice and consent -------------------------------------------------------------
  $("consent-box").addEventListener("change", (e) => { $("consent-btn").disabled = !e.target.checked; });
  $("consent-btn").addEventListener("click", async () => {
    $("consent-btn").disabled = true;
    const r = await api("/consent", { method: "POST" });
    if (!r.ok) { $("consent-btn").disabled = false; return alert((await r.json()).error || "Could not save consent"); }
    save({ consented: true });
    if (await openCamera()) precheckLoop();
  });

  // --- step 2: camera, pre-check, reference photo ---------------------------------------------
  let media = null;
  let precheckTimer = null;

  async function openCamera() {
    show("step-camera");
    try {
      media = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: cfg.video.width }, height: { ideal: cfg.video.height },
                 frameRate: { ideal: cfg.video.fps } },
        audio: { echoCancellation: true, noiseSuppression: true },
      });
    } catch (err) {
      hint("precheck-msg", `The camera or microphone is not available (${err.name}). Allow access and reload.`, "bad");
      return false;
    }
    const video = $("preview");
    video.srcObject = media;
    await video.play().catch(() => {});
    return true;
  }

  function snapshot() {
    const video = $("preview");
    const canvas = $("snap");
    canvas.width = video.videoWidth || cfg.video.width;
    canvas.height = video.videoHeight || cfg.video.height;
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  }

  async function postPhoto(path) {
    const form = new FormData();
    form.append("photo", await snapshot(), "frame.jpg");
    return api(path, { method: "POST", body: form });
  }

  async function precheckLoop() {
    if (!media || saved.reference) return;
    try {
      const r = await postPhoto("/precheck");
      const body = await r.json();
      if (r.ok) {
        hint("precheck-msg", body.message, body.ok ? "ok" : "bad");
        $("photo-btn").disabled = !body.ok;
      } else {
        hint("precheck-msg", body.error || "Check failed", "bad");
      }
    } catch (err) {
      hint("precheck-msg", "Checking the camera...", "");
    }
    precheckTimer = setTimeout(precheckLoop, 1500);
  }

  $("photo-btn").addEventListener("click", async () => {
    $("photo-btn").disabled = true;
    const r = await postPhoto("/reference");
    const body = await r.json();
    if (r.status === 201) {
      clearTimeout(precheckTimer);
      save({ reference: true });
      hint("reference-msg", "Reference photo saved.", "ok");
      show("step-exam");
    } else {
      hint("reference-msg", body.error || "The photo was not accepted; try again.", "bad");
      $("photo-btn").disabled = false;
    }
  });

  // --- step 3: stream ---------------------------------------------------------------------------
  let channel = null;
  let reconnectTimer = null;
  let disconnectTimer = null;

  function waitForIce(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(done, ms);
    });
  }

  async function tuneSender(pc) {
    // Keep 640x480 rather than trading resolution for frame rate, and let the encoder use the bitrate.
    for (const sender of pc.getSenders()) {
      if (!sender.track || sender.track.kind !== "video") continue;
      const params = sender.getParameters();
      params.encodings = params.encodings && params.encodings.length ? params.encodings : [{}];
      params.encodings[0].maxBitrate = cfg.bitrateKbps * 1000;
      params.encodings[0].maxFramerate = cfg.video.fps;
      params.degradationPreference = "maintain-resolution";
      try { await sender.setParameters(params); } catch (err) { console.warn("setParameters", err); }
    }
  }

  async function connect() {
    clearTimeout(reconnectTimer);
    if (state.finished) return;
    hideNotices();  // the new connection's node tells again what still holds
    setConnection(state.connects ? "reconnecting" : "connecting");
    const pc = new RTCPeerConnection({ iceServers: cfg.iceServers });
    state.pc = pc;
    for (const track of media.getTracks()) pc.addTrack(track, media);
    channel = pc.createDataChannel("signals", { ordered: true });
    channel.onopen = () => { state.lastPong = Date.now(); sendSignal("hello", { screen_extended: screenExtended() }); };
    channel.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (err) { return; }
      if (!message || typeof message !== "object") return;
      if (message.type === "pong") state.lastPong = Date.now();
      else if (message.type === "notice") showNotice(message);
      else if (message.type === "proctor") showProctorMessage(message);
      else if (message.type === "hold") showHold(message);
    };
    pc.onconnectionstatechange = () => onState(pc);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc, 3000);
      const r = await api("/offer", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
      });
      const body = await r.json();
      if (!r.ok) {
        if (r.status === 409 && body.status) return ended(`The session is ${body.status}.`);
        if (r.status === 401 || r.status === 403) return ended(body.error || "This link is no longer valid.");
        throw new Error(body.error || `offer refused (${r.status})`);
      }
      if (state.pc !== pc) return;  // superseded while waiting
      await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    } catch (err) {
      console.warn("connect failed", err);
      scheduleReconnect(pc);
    }
  }

  function onState(pc) {
    if (state.pc !== pc) return;
    const s = pc.connectionState;
    if (s === "connected") {
      clearTimeout(disconnectTimer);
      state.attempts = 0;
      state.connects += 1;
      setConnection("connected");
      $("start-btn").hidden = true;
      $("finish-btn").hidden = false;
      updateBreaks();
      tuneSender(pc);
    } else if (s === "disconnected") {
      // Often recovers by itself within a few seconds; give it that chance first.
      setConnection("reconnecting");
      clearTimeout(disconnectTimer);
      disconnectTimer = setTimeout(() => { if (pc.connectionState !== "connected") scheduleReconnect(pc); }, 1500);
    } else if (s === "failed" || s === "closed") {
      scheduleReconnect(pc);
    }
  }

  function scheduleReconnect(pc) {
    if (state.finished || (pc && state.pc !== pc)) return;
    if (pc) { try { pc.close(); } catch (err) { /* already closed */ } }
    state.pc = null;
    setConnection("reconnecting");
    const delay = Math.min(10000, 500 * 2 ** state.attempts) * (0.8 + Math.random() * 0.4);
    state.attempts += 1;
    hint("exam-msg", `Connection lost; reconnecting (attempt ${state.attempts})...`, "bad");
    reconnectTimer = setTimeout(connect, delay);
  }

  // Notices from the media node ({"type": "notice", "kind", "active", "message"}): what the candidate can fix
  // now ("More light, please: ..."), shown until the node says it is over. One element per kind, made here so the
  // template stays as it is; textContent only, never HTML (the text comes over the network).
  const notices = {};
  state.notices = notices;

  function noticeElement(kind) {
    if (!notices[kind]) {
      const el = document.createElement("p");
      el.className = "notice";
      el.dataset.kind = kind;
      el.setAttribute("role", "alert");
      el.hidden = true;
      const exam = $("step-exam");
      exam.insertBefore(el, exam.querySelector("h1").nextSibling);
      notices[kind] = el;
    }
    return notices[kind];
  }

  function showNotice(message) {
    if (typeof message.kind !== "string" || !/^[a-z_]{1,32}$/.test(message.kind)) return;
    const el = noticeElement(message.kind);
    const text = typeof message.message === "string" ? message.message.slice(0, 300) : "";
    el.textContent = text;
    el.hidden = !(message.active === true && text);
  }

  function hideNotices() {
    for (const el of Object.values(notices)) el.hidden = true;
  }

  // --- live intervention: the proctor's messages, a pause, the candidate's breaks -----------------------------
  // {"type": "proctor", "id", "action": "message" | "adjust" | "end", "text"}: shown at once as its own role=alert
  // item (screen readers read it out), acknowledged "shown" at once and "ok" when the candidate confirms.
  const messages = state.messages = {};
  state.hold = null;
  state.breaks = { allowed: 0, minutes: 0, taken: 0 };

  function ack(id, stage) { sendSignal("ack", { id, stage }); }

  function showProctorMessage(message) {
    const id = message.id;
    if (!Number.isInteger(id) || messages[id]) return;  // a replay after the channel reopened
    const text = typeof message.text === "string" ? message.text.slice(0, 300) : "";
    if (message.action === "end") {
      messages[id] = { shownAt: Date.now() };
      ack(id, "shown");
      return ended(text || "Your proctor has ended the exam.");
    }
    const okButton = document.createElement("button");
    okButton.type = "button";
    okButton.textContent = "OK, understood";
    const body = document.createElement("p");
    body.textContent = text;  // textContent only: the text comes over the network
    const title = document.createElement("strong");
    title.textContent = message.action === "adjust" ? "Your proctor asks: " : "Message from your proctor: ";
    const item = document.createElement("li");
    item.className = "proctor-msg";
    item.dataset.id = String(id);
    item.dataset.action = message.action;
    item.setAttribute("role", "alert");
    body.prepend(title);
    item.append(body, okButton);
    okButton.addEventListener("click", () => {
      ack(id, "ok");
      item.dataset.acknowledged = "1";
      item.remove();
      const next = document.querySelector("#proctor-msgs button");
      if (next) next.focus();
    });
    $("proctor-msgs").append(item);
    messages[id] = { shownAt: Date.now() };
    item.dataset.shownAt = String(messages[id].shownAt);
    ack(id, "shown");
    okButton.focus();  // keyboard users confirm with Enter / Space at once
  }

  // {"type": "hold", "active", "id", "hold": "paused" | "break", "text", "ends_in_s"}: the exam is paused by the
  // proctor, or the candidate is on a break; the recording goes on, nothing is flagged meanwhile.
  let holdTimer = null;
  function showHold(message) {
    clearInterval(holdTimer);
    const screen = $("hold-screen");
    if (message.active !== true) {
      state.hold = null;
      screen.hidden = true;
      $("break-end-btn").hidden = true;
      hint("exam-msg", message.hold === "break" ? "Your break is over: the exam continues." :
        "The exam continues.", "ok");
      updateBreaks();
      return;
    }
    const isBreak = message.hold === "break";
    state.hold = { kind: isBreak ? "break" : "paused", id: message.id, shownAt: Date.now() };
    $("hold-title").textContent = isBreak ? "You are on a break" : "Exam paused";
    $("hold-text").textContent = (typeof message.text === "string" && message.text.slice(0, 300)) ||
      (isBreak ? "Nothing is flagged during your break; the camera keeps recording. Come back before it ends."
        : "Your proctor has paused the exam.");
    $("break-end-btn").hidden = !isBreak;
    screen.dataset.hold = state.hold.kind;
    screen.hidden = false;
    $("break-box").hidden = true;
    if (isBreak && Number.isFinite(message.ends_in_s)) {
      const endsAt = Date.now() + message.ends_in_s * 1000;
      const tick = () => {
        const left = Math.max(0, Math.round((endsAt - Date.now()) / 1000));
        $("hold-time").textContent = `${Math.floor(left / 60)} min ${left % 60} s left`;
      };
      tick();
      holdTimer = setInterval(tick, 1000);
    } else {
      $("hold-time").textContent = "";
    }
    if (Number.isInteger(message.id)) ack(message.id, "shown");
    (isBreak ? $("break-end-btn") : $("hold-title")).focus();
  }

  function updateBreaks() {
    const b = state.breaks;
    const left = b.allowed - b.taken;
    $("break-box").hidden = !(b.allowed > 0 && left > 0 && state.connection === "connected" && !state.hold);
    $("break-info").textContent = `${left} of ${b.allowed} left, up to ${b.minutes} min each`;
  }

  async function breakCall(action) {
    const r = await api("/break", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ action }),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) return hint("exam-msg", body.error || "That did not work; try again.", "bad");
    if (typeof body.taken === "number") state.breaks.taken = body.taken;
  }
  $("break-btn").addEventListener("click", () => breakCall("start"));
  $("break-end-btn").addEventListener("click", () => breakCall("end"));

  // Liveness: the node answers pings on the data channel. A node that died stops answering; reconnect after
  // LIVENESS_MS instead of waiting ~30 s for ICE consent to expire.
  const LIVENESS_MS = 4000;
  setInterval(() => {
    const pc = state.pc;
    if (!pc || state.connection !== "connected" || !channel || channel.readyState !== "open") return;
    channel.send(JSON.stringify({ type: "ping", t: Date.now() }));
    if (Date.now() - (state.lastPong || 0) > LIVENESS_MS) {
      console.warn("media node stopped answering; reconnecting");
      scheduleReconnect(pc);
    }
  }, 1000);

  $("start-btn").addEventListener("click", async () => {
    $("start-btn").disabled = true;
    save({ started: true });
    await connect();
  });

  $("finish-btn").addEventListener("click", async () => {
    if (!confirm("Finish the exam and submit your recording?")) return;
    await finish();
  });

  async function finish() {
    state.finished = true;
    const r = await api("/end", { method: "POST" });
    if (!r.ok && r.status !== 409) {
      state.finished = false;
      return hint("exam-msg", "Could not finish; try again.", "bad");
    }
    ended("Your recording has been submitted. You can close this page.");
  }

  function ended(message) {
    state.finished = true;
    clearTimeout(reconnectTimer);
    clearTimeout(precheckTimer);
    if (state.pc) state.pc.close();
    state.pc = null;
    if (media) for (const t of media.getTracks()) t.stop();
    setConnection("ended", "ended");
    $("done-msg").textContent = message;
    show("step-done");
  }
  window.proctor.finish = finish;

  // --- browser signals over the data channel ----------------------------------------------------
  function screenExtended() { return window.screen && "isExtended" in window.screen ? window.screen.isExtended : null; }

  function sendSignal(type, extra) {
    if (channel && channel.readyState === "open") {
      channel.send(JSON.stringify(Object.assign({ type, at: Date.now() }, extra || {})));
    }
  }

  document.addEventListener("visibilitychange", () => sendSignal(document.hidden ? "tab_hidden" : "tab_visible"));
  window.addEventListener("blur", () => sendSignal("window_blur"));
  window.addEventListener("focus", () => sendSignal("window_focus"));
  document.addEventListener("fullscreenchange", () => {
    sendSignal(document.fullscreenElement ? "fullscreen_enter" : "fullscreen_exit");
  });
  for (const kind of ["copy", "cut", "paste"]) document.addEventListener(kind, () => sendSignal(kind));
  if (window.screen && "onchange" in window.screen) {
    window.screen.addEventListener("change", () => sendSignal("screen_change", { screen_extended: screenExtended() }));
  }

  // --- resume: a reload continues the same session ------------------------------------------------
  async function resume() {
    const r = await api("/state");
    const body = await r.json();
    if (!r.ok) return ended(body.error || "This link is no longer valid.");
    if (!["created", "live"].includes(body.status)) return ended(`The session is ${body.status}.`);
    if (body.breaks) state.breaks = body.breaks;
    if (body.consented) save({ consented: true });
    if (body.has_reference) save({ reference: true });
    if (!saved.consented) return show("step-notice");
    if (!(await openCamera())) return;
    if (!saved.reference) return precheckLoop();
    show("step-exam");
    if (saved.started || body.status === "live") {
      $("start-btn").disabled = true;
      await connect();
    }
  }
  resume();
})();
