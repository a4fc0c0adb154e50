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
      if (screenTransceiver && sender === screenTransceiver.sender) { tuneScreen(sender); continue; }
      const params = sender.getParameters();
      params.encodings = params.encodings && params.encodings.length ? params.encodings : [{}];
      params.encodings[0].maxBitrate = cfg.bitrateKbps * 1000;
      params.encodings[0].maxFramerate = cfg.video.fps;
      params.degradationPreference = "maintain-resolution";
      // Temporal layers (VIDEO_SCALABILITY_MODE, L1T2 by default): the node decodes only the base layer; a
      // browser that refuses streams without.
      const layered = cfg.scalabilityMode && cfg.scalabilityMode !== "off";
      if (layered) params.encodings[0].scalabilityMode = cfg.scalabilityMode;
      try { await sender.setParameters(params); } catch (err) {
        console.warn("setParameters", err);
        if (layered) {
          delete params.encodings[0].scalabilityMode;
          try { await sender.setParameters(params); } catch (err2) { console.warn("setParameters", err2); }
        }
      }
    }
  }

  async function connect() {
    clearTimeout(reconnectTimer);
    clearInterval(busyTimer);
    if (state.finished) return;
    hideNotices();  // the new connection's node tells again what still holds
    if (!state.moving) setConnection(state.connects ? "reconnecting" : "connecting");
    // iceTransportPolicy "relay": only TURN-relayed paths (ICE_TRANSPORT_POLICY), for networks that must hide host IPs.
    const pc = new RTCPeerConnection({ iceServers: cfg.iceServers, iceTransportPolicy: cfg.iceTransportPolicy || "all" });
    state.pc = pc;
    for (const track of media.getTracks()) pc.addTrack(track, media);
    addScreen(pc);  // after the camera: the second video m-line is the screen
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
      else if (message.type === "move") moveNow();
    };
    pc.onconnectionstatechange = () => onState(pc);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc, 3000);
      const r = await api("/offer", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
      });
      const body = await r.json().catch(() => ({}));  // a proxy's own 502/503 page is not JSON
      if (!r.ok) {
        if (r.status === 409 && body.status) return ended(`The session is ${body.status}.`);
        if (r.status === 401 || r.status === 403) return ended(body.error || "This link is no longer valid.");
        // No server has room yet (a move keeps its old connection instead: moveFailed below).
        if (r.status === 503 && !state.moving) return waitForServer(pc, r, body);
        throw new Error(body.error || `offer refused (${r.status})`);
      }
      if (state.pc !== pc) return;  // superseded while waiting
      await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    } catch (err) {
      console.warn("connect failed", err);
      if (state.moving && state.pc === pc) return moveFailed(pc);
      scheduleReconnect(pc);
    }
  }

  // No media server has room (503: every node is busy by its measured load, or none runs): wait at least as long as
  // Retry-After says, tell the candidate plainly with a countdown, then offer again, as often as it takes. The
  // session and everything done so far are kept and the candidate has nothing to do: not a lost connection, no alarm.
  let busyTimer = null;

  function retryAfterMs(r, fallbackMs) {
    const raw = r.headers.get("Retry-After");
    const seconds = raw === null || raw.trim() === "" ? NaN : Number(raw);
    return Number.isFinite(seconds) && seconds >= 0 ? Math.min(seconds, 600) * 1000 : fallbackMs;
  }

  function waitForServer(pc, r, body) {
    if (state.finished || state.pc !== pc) return;
    try { pc.close(); } catch (err) { /* already closed */ }
    state.pc = null;
    state.busy = (state.busy || 0) + 1;
    const backoff = Math.min(30000, 2000 * 2 ** Math.min(state.busy - 1, 4));
    // Never sooner than the server asks; up to a fifth later at random, so a room of waiting pages does not come
    // back in one burst when a server frees.
    const wait = retryAfterMs(r, backoff) * (1 + Math.random() * 0.2);
    const until = Date.now() + wait;
    const busy = body.reason === "no_capacity" || body.reason === "no_media_node";
    state.retryInMs = wait;
    setConnection(state.connects ? "reconnecting" : "connecting", "waiting for a server");
    const tell = () => {
      if (state.finished) return clearInterval(busyTimer);
      const left = Math.max(1, Math.ceil((until - Date.now()) / 1000));
      hint("exam-msg", busy ? `All proctoring servers are busy; retrying in ${left} s, keep this page open.`
        : `The proctoring server is briefly unavailable; retrying in ${left} s, keep this page open.`, "");
    };
    tell();
    clearInterval(busyTimer);
    busyTimer = setInterval(tell, 1000);
    reconnectTimer = setTimeout(connect, wait);
  }

  // A draining media node asks the page to move ({"type": "move"}): connect again at once. Signaling places the
  // new connection on another node and has the old one let go first, so the session's timeline and archive
  // continue; the old connection streams until then. Not a lost connection: no alarm, no backoff.
  function moveNow() {
    if (state.finished || state.moving || !state.pc) return;
    clearTimeout(reconnectTimer);
    state.moving = { pc: state.pc, channel };
    state.moves = (state.moves || 0) + 1;
    hint("exam-msg", "Switching to another server; your exam continues.", "");
    connect();
  }

  function moveDone() {
    const old = state.moving;
    state.moving = null;
    if (old && old.pc) { try { old.pc.close(); } catch (err) { /* already closed */ } }
    hint("exam-msg", "", "");
  }

  // No node could take the page yet: keep the old connection (its node still streams it) and try again shortly.
  function moveFailed(pc) {
    const old = state.moving;
    state.moving = null;
    try { pc.close(); } catch (err) { /* already closed */ }
    state.pc = old.pc;
    channel = old.channel;
    if (["closed", "failed"].includes(old.pc.connectionState)) return scheduleReconnect(old.pc);
    reconnectTimer = setTimeout(moveNow, 2000);
  }

  function onState(pc) {
    if (state.pc !== pc) return;
    const s = pc.connectionState;
    if (s === "connected") {
      if (state.moving) moveDone();
      clearTimeout(disconnectTimer);
      if (state.busy) hint("exam-msg", "", "");  // the "servers are busy" countdown is over
      state.busy = 0;
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
    if (state.moving) moveDone();  // the move's new connection failed after its answer: reconnect as usual
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
    // The entire screen is recorded from the start: no exam without it (asked here, in the click: browsers
    // only offer screen capture in answer to a gesture).
    if (!screenLive() && !(await shareScreen())) { $("start-btn").disabled = false; return; }
    save({ started: true });
    await connect();
  });

  // --- the shared screen: the entire screen, as a second video track of the same connection -----------------
  // The node tells the webcam from the screen by m-line order (media_server/screen.py): camera tracks first,
  // then always one screen transceiver, with no track until the candidate shares.
  const SCREEN_MAX_KBPS = 600;  // 1-2 fps of a mostly still desktop (media_server/sdp.py adds it to the answer)
  let screenTransceiver = null;
  state.screen = { sharing: false, label: null, surface: null, stops: 0, refused: 0 };

  function screenLive() { return !!(state.screenTrack && state.screenTrack.readyState === "live"); }

  async function shareScreen() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({
        video: { displaySurface: "monitor", frameRate: { max: 2 }, width: { max: 1920 }, height: { max: 1080 } },
        audio: false, selfBrowserSurface: "exclude", monitorTypeSurfaces: "include",
      });
    } catch (err) {
      hint("screen-msg", `Screen sharing is needed for this exam (${err.name}). Choose "Entire screen" and ` +
        "allow it.", "bad");
      $("screen-box").hidden = false;
      return false;
    }
    const track = stream.getVideoTracks()[0];
    const surface = track ? track.getSettings().displaySurface : undefined;
    if (!track || surface !== "monitor") {
      // A window or a tab hides everything else on the screen: refuse it and ask again.
      for (const t of stream.getTracks()) t.stop();
      state.screen.refused += 1;
      hint("screen-msg", "Please share your entire screen, not a window or a browser tab: choose " +
        "\"Entire screen\" and try again.", "bad");
      $("screen-box").hidden = false;
      return false;
    }
    track.contentHint = "detail";  // text: keep resolution, drop frames
    const previous = state.screen.label;
    state.screenTrack = track;
    Object.assign(state.screen, { sharing: true, label: track.label, surface });
    track.addEventListener("ended", () => screenLost(track, "ended"));
    track.addEventListener("mute", () => screenLost(track, "muted"));
    track.addEventListener("unmute", () => { if (state.screenTrack === track) screenBack(); });
    if (screenTransceiver) {
      try { await screenTransceiver.sender.replaceTrack(track); } catch (err) { console.warn("replaceTrack", err); }
      tuneScreen(screenTransceiver.sender);
    }
    if (previous && previous !== track.label) sendSignal("screen_changed", { reason: "surface" });
    screenBack();
    return true;
  }

  function screenBack() {
    state.screen.sharing = true;
    $("screen-box").hidden = true;
    hint("screen-msg", "", "");
    sendSignal("screen_share_started");  // for the log: only the node's frames end the flag
  }

  function screenLost(track, reason) {
    if (state.screenTrack !== track || state.finished) return;
    if (reason === "ended") state.screenTrack = null;
    state.screen.sharing = false;
    state.screen.stops += 1;
    sendSignal("screen_share_stopped", { reason });
    hint("screen-msg", "Your screen is no longer being shared. Share your screen again to continue the exam.",
      "bad");
    $("screen-box").hidden = false;
    $("screen-btn").focus();
  }

  $("screen-btn").addEventListener("click", async () => {
    $("screen-btn").disabled = true;
    try {
      if (state.screenTrack) state.screenTrack.stop();  // muted: take a fresh capture
      state.screenTrack = null;
      await shareScreen();
    } finally {
      $("screen-btn").disabled = false;
    }
  });

  function addScreen(pc) {
    const track = screenLive() ? state.screenTrack : null;
    screenTransceiver = pc.addTransceiver(track || "video", {
      // The webcam comes first when bandwidth is short: the screen's share of it is the smallest.
      direction: "sendonly", sendEncodings: [{ maxBitrate: SCREEN_MAX_KBPS * 1000, maxFramerate: 2,
                                              priority: "very-low", networkPriority: "very-low" }],
    });
    if (!track && !state.finished) {
      // A reload cannot ask for the screen without a click: say so at once (the node flags it meanwhile).
      hint("screen-msg", "Share your screen again to continue the exam.", "bad");
      $("screen-box").hidden = false;
    }
  }

  async function tuneScreen(sender) {
    const params = sender.getParameters();
    params.encodings = params.encodings && params.encodings.length ? params.encodings : [{}];
    params.encodings[0].maxBitrate = SCREEN_MAX_KBPS * 1000;
    params.encodings[0].maxFramerate = 2;
    params.degradationPreference = "maintain-resolution";
    try { await sender.setParameters(params); } catch (err) { console.warn("setParameters (screen)", err); }
  }

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
    clearInterval(busyTimer);
    clearTimeout(precheckTimer);
    if (state.moving) moveDone();
    if (state.pc) state.pc.close();
    state.pc = null;
    if (media) for (const t of media.getTracks()) t.stop();
    if (state.screenTrack) state.screenTrack.stop();
    $("screen-box").hidden = true;
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
    window.screen.addEventListener("change", () => {
      sendSignal("screen_change", { screen_extended: screenExtended() });  // second_screen: on while extended
      sendSignal("screen_changed", { reason: "display", screen_extended: screenExtended() });
    });
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
