// Review page. With the master video, the video is the session media timeline, so seeking to an event is
// video.currentTime = event.start_s, exactly.
// Before the master exists (live, ended, finalizing; or failed), the page plays the stored pieces (segments, and
// batches of already merged segments) one after another. Each piece is a WebM whose own time starts at 0 at the
// piece's start_s, so seeking to session time t is: load the piece holding t, then currentTime = t - start_s.
// When the master appears (polling every 3 s) the player switches to it at the same session time.
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("config").textContent);
  const base = `/api/sessions/${config.sessionId}`;
  const video = document.getElementById("master");
  const timeline = document.getElementById("timeline");
  const playhead = document.getElementById("playhead");
  const body = document.getElementById("events-body");
  const progress = document.getElementById("progress");
  const state = {
    events: [], current: -1, duration: config.masterDuration || 0, masterLoaded: false,
    mode: null, // null (nothing to play yet) | "preview" (stored pieces) | "master"
    pieces: [], playing: null, pieceLoaded: false, waitingForMore: false,
    pendingSeek: null, autoplay: false, resumeAt: null, status: config.status, score: config.score, deleted: false,
  };
  window.review = state;
  const PIECE_EPSILON = 0.005;

  function duration() {
    if (state.duration > 0) return state.duration;
    if (state.mode === "master" && Number.isFinite(video.duration) && video.duration > 0) return video.duration;
    return 0;
  }

  // --- session time <-> the playing file's time -----------------------------------------------------------

  function sessionTime() {
    if (state.mode === "preview") return state.playing ? state.playing.start_s + video.currentTime : 0;
    return video.currentTime;
  }

  function pieceFor(t) {
    // The first piece that ends after t: the one holding t, or the next one after a gap; else the last.
    const found = state.pieces.find((p) => t < p.end_s - PIECE_EPSILON);
    return found || state.pieces[state.pieces.length - 1] || null;
  }

  function nextAfter(t) {
    return state.pieces.find((p) => p.end_s > t + PIECE_EPSILON) || null;
  }

  function playOnFrom(t) {
    // Continue at t with whichever piece holds it now (a segment may have been merged into a batch meanwhile).
    const next = nextAfter(t);
    if (next) loadPiece(next, t - next.start_s, true);
    else state.waitingForMore = true; // the live tail: a later poll brings the next segment
    return !!next;
  }

  function samePiece(a, b) { return !!a && !!b && a.kind === b.kind && a.idx === b.idx; }

  function loadPiece(piece, offset, play) {
    state.playing = piece;
    state.pieceLoaded = false;
    state.waitingForMore = false;
    state.pendingSeek = Math.max(0, offset);
    state.autoplay = play;
    video.src = piece.url;
  }

  function seekSession(t) {
    if (state.mode === "master") {
      if (state.masterLoaded) video.currentTime = t;
      else state.pendingSeek = t;
    } else if (state.mode === "preview") {
      const piece = pieceFor(t);
      if (!piece) return;
      const offset = Math.max(0, t - piece.start_s);
      if (!samePiece(piece, state.playing)) loadPiece(piece, offset, state.pieceLoaded && !video.paused);
      else if (state.pieceLoaded) video.currentTime = offset;
      else state.pendingSeek = offset; // still loading: seek when its metadata is in
    }
  }

  function seekTo(index) {
    if (index < 0 || index >= state.events.length) return;
    state.current = index;
    state.playUntil = null; // another flag: a flag's play that was on stops where the reviewer left it
    const ev = state.events[index];
    seekSession(ev.start_s);
    render();
    showDetail();
    const last = state.pieces[state.pieces.length - 1];
    if (state.mode === "preview" && last && ev.start_s >= last.end_s) {
      document.getElementById("review-msg").textContent =
        `Not in the preview yet: it is stored up to ${staff.fmtTime(last.end_s)}.`;
    }
    const row = body.querySelector(`tr[data-event-id="${ev.id}"]`);
    if (row) row.scrollIntoView({ block: "nearest" });
  }

  // --- rendering ------------------------------------------------------------------------------------------

  function renderTimeline() {
    timeline.querySelectorAll(".marker").forEach((m) => m.remove());
    const d = duration();
    if (!d) return;
    state.events.forEach((ev, i) => {
      const end = ev.end_s === null ? d : Math.min(d, ev.end_s);
      const left = Math.min(100, (ev.start_s / d) * 100);
      const width = Math.max(0, ((end - ev.start_s) / d) * 100);
      const marker = staff.el("button", {
        type: "button", class: "marker" + (i === state.current ? " current" : ""),
        title: `${ev.kind} at ${staff.fmtTime(ev.start_s)}`,
        dataset: { kind: ev.kind, eventId: ev.id, review: ev.review_state },
        onclick: () => seekTo(i),
      });
      marker.style.left = `${left}%`;
      marker.style.width = `max(2px, ${width}%)`;
      timeline.append(marker);
    });
  }

  function renderTable() {
    body.replaceChildren(...state.events.map((ev, i) => {
      const thumb = ev.snapshot_url
        ? staff.el("img", { src: ev.snapshot_url, alt: `${ev.kind} snapshot`, class: "thumb", loading: "lazy" })
        : staff.el("span", { class: "hint" }, "—");
      return staff.el("tr", {
        class: i === state.current ? "current" : "",
        dataset: { eventId: ev.id, kind: ev.kind, reviewState: ev.review_state },
        onclick: () => seekTo(i),
      },
      staff.el("td", {}, thumb),
      staff.el("td", {}, staff.el("button", {
        type: "button", class: "link kind-btn", "aria-label": `Go to ${ev.kind} at ${staff.fmtTime(ev.start_s)}`,
        onclick: (e) => { e.stopPropagation(); seekTo(i); },
      }, staff.el("span", { class: "kind", dataset: { kind: ev.kind } }, ev.kind))),
      staff.el("td", { class: "num" }, staff.fmtTime(ev.start_s)),
      staff.el("td", { class: "num" }, ev.end_s === null ? "open" : staff.fmtTime(ev.end_s)),
      staff.el("td", { class: "num" }, (ev.confidence ?? 0).toFixed(2)),
      staff.el("td", {}, staff.el("span", { class: "review-state", dataset: { state: ev.review_state } },
        reviewLabel(ev.review_state))));
    }));
    if (!state.events.length) {
      body.append(staff.el("tr", {}, staff.el("td", { colspan: 6, class: "hint" }, "No flags.")));
    }
  }

  // Flags are never a verdict: an unreviewed one "needs review".
  function reviewLabel(st) { return st === "pending" ? "needs review" : st; }

  function isFlag(ev) { return ev.source !== "proctor" && ev.source !== "candidate"; }

  function entryText(ev) {
    const d = ev.details || {};
    if (ev.kind === "exam_paused") return "Exam paused by the proctor";
    if (ev.kind === "exam_break") return "Break taken by the candidate";
    const text = typeof d.text === "string" && d.text ? `: “${d.text}”` : "";
    const by = typeof d.by === "string" && d.by ? ` by ${d.by}` : "";
    const ack = d.ok_at ? " (acknowledged by the candidate)" : d.shown_at ? " (shown, not acknowledged)"
      : " (not shown on the candidate's page)";
    return `Proctor ${d.action || "message"}${by}${text}${ack}`;
  }

  function renderEntries() {
    const list = document.getElementById("timeline-entries");
    const entries = state.entries || [];
    document.getElementById("session-timeline").hidden = !entries.length;
    list.replaceChildren(...entries.map((ev) => {
      const span = ev.end_s !== null && ev.end_s > ev.start_s
        ? `${staff.fmtTime(ev.start_s)} – ${staff.fmtTime(ev.end_s)}` : staff.fmtTime(ev.start_s);
      return staff.el("li", { dataset: { kind: ev.kind, eventId: ev.id } },
        staff.el("button", { type: "button", class: "link", onclick: () => seekSession(ev.start_s),
          "aria-label": `Go to ${span}: ${entryText(ev)}` }, span),
        " ", entryText(ev) + (ev.end_s === null ? " (still on)" : ""));
    }));
  }

  function render() { renderTimeline(); renderTable(); renderEntries(); }

  function showScore(score) {
    state.score = score;
    const badge = document.getElementById("session-score");
    badge.dataset.level = staff.scoreLevel(score);
    document.getElementById("session-score-value").textContent = staff.fmtScore(score);
  }

  function showDetail() {
    const ev = state.events[state.current];
    const panel = document.getElementById("detail");
    if (!ev) { panel.hidden = true; return; }
    panel.hidden = false;
    document.getElementById("detail-kind").textContent = ev.kind;
    document.getElementById("detail-times").textContent =
      `${staff.fmtTime(ev.start_s)} – ${ev.end_s === null ? "open" : staff.fmtTime(ev.end_s)}` +
      ` · confidence ${(ev.confidence ?? 0).toFixed(2)} · ${ev.source}`;
    const img = document.getElementById("detail-snapshot");
    img.hidden = !ev.snapshot_url;
    if (ev.snapshot_url) img.src = ev.snapshot_url;
    const st = document.getElementById("detail-state");
    st.textContent = reviewLabel(ev.review_state);
    st.dataset.state = ev.review_state;
    document.getElementById("detail-by").textContent = ev.reviewed_by ? `by ${ev.reviewed_by}` : "";
    document.getElementById("note").value = ev.review_note || "";
    document.getElementById("review-msg").textContent = "";
  }

  // --- review and delete ----------------------------------------------------------------------------------

  async function review(newState, advance = false) {
    const ev = state.events[state.current];
    if (!ev) return;
    if (state.saving) return; // one save at a time: a held key must not post the same flag twice
    state.saving = true;
    const msg = document.getElementById("review-msg");
    try {
      const updated = await staff.api("POST", `${base}/events/${ev.id}/review`,
        { state: newState, note: document.getElementById("note").value });
      if (typeof updated.session_score === "number") showScore(updated.session_score);
      delete updated.session_score;
      const index = state.events.findIndex((x) => x.id === updated.id);
      if (index >= 0) state.events[index] = updated;
      const last = state.current >= state.events.length - 1;
      if (advance && !last) {
        seekTo(state.current + 1);
      } else {
        render();
        showDetail();
      }
      msg.textContent = `Saved: ${updated.kind} at ${staff.fmtTime(updated.start_s)} ${reviewLabel(updated.review_state)}.` +
        (advance && last ? " That was the last flag." : "");
    } catch (e) {
      msg.textContent = e.message;
    } finally {
      state.saving = false;
    }
  }
  document.getElementById("confirm-btn").addEventListener("click", () => review("confirmed"));
  document.getElementById("dismiss-btn").addEventListener("click", () => review("dismissed"));
  document.getElementById("reset-btn").addEventListener("click", () => review("pending"));

  const deleteBtn = document.getElementById("delete-btn");
  if (deleteBtn) {
    deleteBtn.addEventListener("click", async () => {
      if (!window.confirm("Delete this session for good? Its video, snapshots and events are removed; " +
                          "the audit log keeps a record of the deletion.")) return;
      const msg = document.getElementById("delete-msg");
      deleteBtn.disabled = true;
      try {
        await staff.api("DELETE", base);
        state.deleted = true;
        video.removeAttribute("src");
        location.href = "/";
      } catch (e) {
        msg.textContent = `Could not delete the session: ${e.message}`;
        msg.hidden = false;
        deleteBtn.disabled = false;
      }
    });
  }

  // A new join link revokes every earlier one (a leaked link); only while the session is open.
  const rotateBtn = document.getElementById("rotate-link-btn");
  function showRotate() { if (rotateBtn) rotateBtn.hidden = !["created", "live"].includes(state.status); }
  if (rotateBtn) {
    showRotate();
    rotateBtn.addEventListener("click", async () => {
      if (!window.confirm("Make a new join link? The candidate's current link stops working at once " +
                          "(a candidate who is connected keeps streaming but cannot reconnect with it).")) return;
      const box = document.getElementById("rotate-link-box");
      const msg = document.getElementById("rotate-link-msg");
      const field = document.getElementById("rotate-link-url");
      rotateBtn.disabled = true;
      try {
        const rotated = await staff.api("POST", `${base}/join-link`);
        field.value = rotated.join_url;
        msg.textContent = "";
        box.hidden = false;
        field.select();
      } catch (e) {
        field.value = "";
        msg.textContent = `Could not make a new link: ${e.message}`;
        box.hidden = false;
      } finally {
        rotateBtn.disabled = false;
      }
    });
  }

  // --- the case: review status, reviewer, decision with its rationale, history -----------------------------

  const caseEl = {
    badge: document.getElementById("case-badge"), status: document.getElementById("case-status"),
    section: document.getElementById("case"), assignee: document.getElementById("case-assignee"),
    closed: document.getElementById("case-closed"), open: document.getElementById("case-open"),
    start: document.getElementById("case-start-btn"), select: document.getElementById("case-assignee-select"),
    assign: document.getElementById("case-assign-btn"), decide: document.getElementById("case-decide"),
    decided: document.getElementById("case-decided"), rationale: document.getElementById("rationale"),
    decideBtn: document.getElementById("case-decide-btn"), shownRationale: document.getElementById("case-rationale"),
    decidedBy: document.getElementById("case-decided-by"), reopen: document.getElementById("case-reopen"),
    reopenReason: document.getElementById("reopen-reason"), reopenBtn: document.getElementById("case-reopen-btn"),
    msg: document.getElementById("case-msg"), history: document.getElementById("case-history"),
  };
  state.case = config.case;
  const labels = config.caseLabels;
  caseEl.select.replaceChildren(staff.el("option", { value: "" }, "nobody"),
    ...config.reviewers.map((name) => staff.el("option", { value: name }, name)));

  function fmtWhen(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

  function renderCase() {
    const c = state.case;
    const ended = config.endedStatuses.includes(state.status);
    for (const el of [caseEl.badge, caseEl.status, caseEl.section]) el.dataset.case = c.status;
    caseEl.badge.textContent = labels[c.status];
    caseEl.status.textContent = labels[c.status];
    caseEl.assignee.textContent = c.assignee ? `· reviewer: ${c.assignee}` : "· no reviewer yet";
    caseEl.closed.hidden = ended;
    caseEl.open.hidden = !ended;
    const decided = c.status === "cleared" || c.status === "concern_raised";
    caseEl.start.hidden = c.status !== "unreviewed";
    caseEl.select.value = c.assignee || "";
    caseEl.decide.hidden = decided;
    caseEl.decided.hidden = !decided;
    caseEl.reopen.hidden = !(decided && config.isAdmin);
    caseEl.shownRationale.textContent = c.rationale || "";
    caseEl.decidedBy.textContent = decided ? `${labels[c.status]} by ${c.decided_by || "a removed account"}, ` +
      fmtWhen(c.decided_at) : "";
    caseEl.history.replaceChildren(...c.history.map((h) => staff.el("li", { dataset: { action: h.action } },
      `${fmtWhen(h.at)} · ${h.actor} · ${h.action.replace(/^decide:.*/, "decision")}: ` +
      `${labels[h.from_status]} → ${labels[h.to_status]}` + (h.assignee ? ` (reviewer: ${h.assignee})` : ""),
      h.note ? staff.el("blockquote", {}, h.note) : null)));
    if (!c.history.length) caseEl.history.append(staff.el("li", { class: "hint" }, "No changes yet."));
  }

  async function changeCase(body, done) {
    caseEl.msg.textContent = "";
    try {
      state.case = await staff.api("POST", `${base}/case`, { ...body, version: state.case.version });
      renderCase();
      caseEl.msg.textContent = done;
      return true;
    } catch (e) {
      caseEl.msg.textContent = e.message;
      try { state.case = await staff.api("GET", `${base}/case`); renderCase(); } catch (ignored) { /* shown */ }
      return false;
    }
  }
  caseEl.start.addEventListener("click", () => changeCase({ action: "start" }, "Review started."));
  caseEl.assign.addEventListener("click", () => changeCase(
    { action: "assign", assignee: caseEl.select.value || null },
    caseEl.select.value ? `Assigned to ${caseEl.select.value}.` : "Unassigned."));
  caseEl.decideBtn.addEventListener("click", async () => {
    const picked = document.querySelector('input[name="decision"]:checked');
    const rationale = caseEl.rationale.value.trim();
    if (!picked) { caseEl.msg.textContent = "Choose a decision: cleared or concern raised."; return; }
    if (rationale.length < config.minRationale) {
      caseEl.msg.textContent = `Write the rationale (at least ${config.minRationale} characters): ` +
        "the reason for the decision is kept with it.";
      caseEl.rationale.focus();
      return;
    }
    if (await changeCase({ action: "decide", decision: picked.value, rationale },
      `Decision recorded: ${labels[picked.value]}.`)) {
      caseEl.rationale.value = "";
      picked.checked = false;
    }
  });
  caseEl.reopenBtn.addEventListener("click", async () => {
    if (await changeCase({ action: "reopen", reason: caseEl.reopenReason.value }, "Case reopened.")) {
      caseEl.reopenReason.value = "";
    }
  });
  renderCase();

  const reportLinkBtn = document.getElementById("report-link-btn");
  if (reportLinkBtn) {
    reportLinkBtn.addEventListener("click", async () => {
      const box = document.getElementById("report-link-box");
      const field = document.getElementById("report-link-url");
      const msg = document.getElementById("report-link-msg");
      reportLinkBtn.disabled = true;
      try {
        const link = await staff.api("POST", `${base}/report-link`);
        field.value = link.url;
        msg.textContent = `Valid until ${fmtWhen(link.expires_at)}.`;
        box.hidden = false;
        field.select();
      } catch (e) {
        field.value = "";
        msg.textContent = `No link: ${e.message}`;
        box.hidden = false;
      } finally {
        reportLinkBtn.disabled = false;
      }
    });
  }

  // --- keys and the player --------------------------------------------------------------------------------

  // Playback speed 1-10x: the select, the digit keys and [ ]. (Chromium mutes audio above 4x; the picture plays.)
  const speed = document.getElementById("speed");
  const MAX_SPEED = 10;
  function setSpeed(n) {
    const rate = Math.max(1, Math.min(MAX_SPEED, Math.round(n)));
    state.speed = rate;
    video.playbackRate = rate;
    video.defaultPlaybackRate = rate;
    speed.value = String(rate);
    document.getElementById("speed-value").textContent = `${rate}×`;
  }
  speed.addEventListener("change", () => setSpeed(Number(speed.value)));
  // A new source (a piece, the master) starts at its default rate: keep the reviewer's choice.
  video.addEventListener("loadedmetadata", () => { video.playbackRate = state.speed || 1; });
  state.speed = 1;

  function togglePlay() {
    if (!(state.masterLoaded || state.pieceLoaded)) return;
    if (video.paused) video.play().catch(() => {}); else video.pause();
  }
  // Play the current flag from its start to its end, with sound: a talking flag is judged by listening (the master
  // carries the microphone's audio on the same timeline). Unmutes, and drops a speed above 4x (Chromium mutes
  // audio there); pauses at the flag's end (an open or instant flag: 5 s).
  state.playUntil = null;
  function playFlag() {
    const ev = state.events[state.current];
    if (!ev || !(state.masterLoaded || state.pieceLoaded)) return;
    video.muted = false;
    if (video.volume === 0) video.volume = 1;
    if ((state.speed || 1) > 4) setSpeed(1);
    state.playUntil = ev.end_s !== null && ev.end_s > ev.start_s ? ev.end_s : ev.start_s + 5;
    state.flagPlays = (state.flagPlays || 0) + 1;
    if (state.mode === "preview") {
      const piece = pieceFor(ev.start_s);
      if (piece && !samePiece(piece, state.playing)) { loadPiece(piece, ev.start_s - piece.start_s, true); return; }
    }
    seekSession(ev.start_s);
    video.play().catch(() => {});
  }
  video.addEventListener("timeupdate", () => {
    if (state.playUntil !== null && sessionTime() >= state.playUntil - 0.05) {
      video.pause();
      state.playUntil = null;
    }
  });
  document.getElementById("play-flag").addEventListener("click", playFlag);
  function nextFlag() { seekTo(Math.min(state.events.length - 1, state.current + 1)); }
  function previousFlag() { seekTo(Math.max(0, state.current - 1)); }
  function skip(seconds) {
    const d = duration();
    const t = Math.max(0, sessionTime() + seconds);
    seekSession(d ? Math.min(d, t) : t);
  }
  document.getElementById("prev-flag").addEventListener("click", previousFlag);
  document.getElementById("next-flag").addEventListener("click", nextFlag);
  document.getElementById("play-btn").addEventListener("click", togglePlay);

  function typing(target) {
    return !!target.closest && (!!target.closest("input, textarea, select, [contenteditable]") ||
      target.isContentEditable);
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing(e.target)) {
      // Esc leaves a text field, so the shortcuts work again without reaching for the mouse.
      if (e.key === "Escape" && e.target.matches("input, textarea")) { e.target.blur(); e.preventDefault(); }
      return;
    }
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    // Space and Enter on a focused button or link press it; on the <video> its own controls play/pause.
    if ((key === " " || key === "Enter") && e.target.closest("button, a, summary, video")) return;
    if (key === "ArrowLeft" || key === "ArrowRight") {
      if (e.target.closest("video, .timeline")) return; // their own keys
      skip(key === "ArrowLeft" ? -5 : 5);
    }
    else if (key === "j" || key === "n") nextFlag();
    else if (key === "k" || key === "p") previousFlag();
    else if (key === "c") review("confirmed", true);
    else if (key === "d") review("dismissed", true);
    else if (key === "u") review("pending", false);
    else if (key === "e") { if (state.current >= 0) document.getElementById("note").focus(); else return; }
    else if (key === "r") {
      const target = document.querySelector("#case-open:not([hidden]) #rationale:not([disabled])") ||
        document.getElementById("case-title");
      target.scrollIntoView({ block: "center" });
      if (target.id === "rationale") target.focus();
    }
    else if (key === " ") togglePlay();
    else if (/^[0-9]$/.test(key)) setSpeed(key === "0" ? 10 : Number(key));
    else if (key === "[") setSpeed((state.speed || 1) - 1);
    else if (key === "]") setSpeed((state.speed || 1) + 1);
    else return;
    e.preventDefault();
  });

  video.addEventListener("timeupdate", () => {
    const d = duration();
    if (d) playhead.style.left = `${Math.min(100, (sessionTime() / d) * 100)}%`;
  });
  video.addEventListener("seeked", () => {
    state.lastSeek = { currentTime: video.currentTime, sessionTime: sessionTime() };
    video.dispatchEvent(new Event("timeupdate"));
  });
  video.addEventListener("loadedmetadata", () => {
    if (state.mode === "master") {
      if (!state.duration && Number.isFinite(video.duration)) state.duration = video.duration;
      state.masterLoaded = true;
    } else if (state.mode === "preview") {
      state.pieceLoaded = true;
    }
    render();
    const seek = state.pendingSeek;
    state.pendingSeek = null;
    if (seek !== null && Math.abs(video.currentTime - seek) > 0.001) video.currentTime = seek;
    if (state.autoplay) video.play().catch(() => {});
    state.autoplay = false;
  });
  video.addEventListener("ended", () => {
    if (state.mode === "preview" && state.playing) playOnFrom(state.playing.end_s);
  });
  let pieceErrors = 0;
  let masterErrors = 0;
  function refreshMaster() {
    if (state.mode !== "master" || !state.masterUrl || state.deleted || masterErrors >= 5) return false;
    // The presigned URL behind the master route expired (PRESIGN_SECONDS) during a long review: ask the
    // route again (it redirects to a fresh one) and carry on at the same time.
    masterErrors += 1;
    state.pendingSeek = state.pendingSeek ?? video.currentTime;
    state.autoplay = !video.paused;
    const sep = state.masterUrl.includes("?") ? "&" : "?";
    video.src = `${state.masterUrl}${sep}retry=${Date.now()}`;
    return true;
  }
  // Chromium does not fire "error" promptly for an expired URL: S3's 403 (an XML body) is blocked for a media
  // request (ORB) as a network failure, which its media loader retries with back-off for ~30 s, the video frozen
  // meanwhile. So a seek, or playback, stalled for data (no bytes for ~3 s) takes a fresh URL at once too.
  // (On a merely slow network that costs a reload; masterErrors caps it.)
  video.addEventListener("stalled", () => {
    const waiting = video.seeking || (!video.paused && video.readyState < HTMLMediaElement.HAVE_FUTURE_DATA);
    if (state.masterLoaded && waiting) refreshMaster();
  });
  video.addEventListener("error", () => {
    if (refreshMaster()) return;
    // A piece merged into a batch (or the master) since the list was read: read the list again, same time.
    if (state.mode !== "preview" || !state.playing || state.deleted || pieceErrors > 5) return;
    pieceErrors += 1;
    state.resumeAt = state.playing.start_s + (state.pendingSeek ?? video.currentTime ?? 0);
    state.playing = null;
    state.pieceLoaded = false;
    schedule(500);
  });
  video.addEventListener("playing", () => { pieceErrors = 0; masterErrors = 0; });
  // A reviewer who stays paused and only clicks events never fires "playing": a seek that lands proves the URL
  // works too, or the cap (5) would end recovery after 5 expiries in one sitting.
  video.addEventListener("seeked", () => {
    if (video.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA) masterErrors = 0;
  });

  // --- loading and polling --------------------------------------------------------------------------------

  // --- the shared screen: a second video beside the webcam's, following its clock ---------------------------
  // Both masters are on the session media timeline, so the screen's time is the webcam's time: the webcam video
  // is the clock (its controls, keys and flag seeks drive it) and the screen follows its seeks, play, pause and
  // rate, and is put back in step when it drifts more than SCREEN_DRIFT_S while playing.
  const screen = document.getElementById("screen");
  const SCREEN_DRIFT_S = 0.2;
  state.screen = { loaded: false, missing: false, resyncs: 0 };
  function followMaster() {
    if (!state.screen.loaded) return;
    if (Math.abs(screen.currentTime - video.currentTime) > 0.001) screen.currentTime = video.currentTime;
  }
  function loadScreen() {
    state.screen = { loaded: false, missing: false, resyncs: 0 };
    screen.src = `${base}/screen`;
  }
  screen.addEventListener("loadedmetadata", () => {
    state.screen.loaded = true;
    screen.hidden = false;
    screen.playbackRate = video.playbackRate;
    followMaster();
    if (!video.paused) screen.play().catch(() => {});
  });
  screen.addEventListener("error", () => { state.screen.missing = true; screen.hidden = true; });  // none (404)
  video.addEventListener("seeking", followMaster);
  video.addEventListener("seeked", followMaster);
  video.addEventListener("play", () => { if (state.screen.loaded) screen.play().catch(() => {}); });
  video.addEventListener("pause", () => { if (state.screen.loaded) { screen.pause(); followMaster(); } });
  video.addEventListener("ratechange", () => { screen.playbackRate = video.playbackRate; });
  video.addEventListener("timeupdate", () => {
    if (!state.screen.loaded || screen.seeking || video.seeking) return;
    if (Math.abs(screen.currentTime - video.currentTime) > SCREEN_DRIFT_S) {
      state.screen.resyncs += 1;
      screen.currentTime = video.currentTime;
    }
  });

  function switchToMaster(url) {
    if (state.mode === "master") return;
    loadScreen();
    let at = state.current >= 0 ? state.events[state.current].start_s : null;
    let play = false;
    if (state.mode === "preview" && state.playing) { at = sessionTime(); play = !video.paused; }
    state.mode = "master";
    state.masterUrl = url;
    state.playing = null;
    state.pieceLoaded = false;
    state.pieces = [];
    state.duration = config.masterDuration || 0;
    state.pendingSeek = at;
    state.autoplay = play;
    progress.hidden = true;
    progress.classList.remove("preview");
    video.src = url;
  }

  function setPieces(pieces) {
    state.pieces = pieces;
    if (!pieces.length) return;
    state.duration = pieces[pieces.length - 1].end_s; // the timeline is what is stored so far
    if (state.mode !== "preview" || !state.playing) {
      state.mode = "preview";
      const start = state.resumeAt ?? (state.current >= 0 ? state.events[state.current].start_s : pieces[0].start_s);
      state.resumeAt = null;
      seekSession(start);
    } else if (state.waitingForMore) {
      playOnFrom(state.playing.end_s);
    }
  }

  function segmentCount() {
    return state.pieces.reduce((n, p) => n + (p.segments || 1), 0);
  }

  let timer = null;
  function schedule(ms) { // one polling chain, whoever asks for the next load
    clearTimeout(timer);
    timer = setTimeout(load, ms);
  }

  async function load() {
    if (state.deleted) return;
    let session, preview;
    try {
      session = await staff.api("GET", base); // the session with its events, in the one event shape
      const currentId = state.current >= 0 ? state.events[state.current].id : null;
      // Flags are what a reviewer confirms or dismisses; a proctor's messages, pauses and breaks (source
      // proctor or candidate, core.events.TIMELINE_KINDS) are listed apart, as the record of what happened.
      state.events = session.events.filter(isFlag);
      state.entries = session.events.filter((e) => !isFlag(e));
      state.current = currentId === null ? -1 : state.events.findIndex((e) => e.id === currentId);
      preview = session.master_video_url ? null : await staff.api("GET", `${base}/preview`);
    } catch (e) {
      if (state.deleted) return;
      progress.hidden = false;
      progress.textContent = `Could not load the session: ${e.message}. Retrying…`;
      schedule(3000);
      return;
    }
    const status = document.getElementById("session-status");
    status.textContent = session.status;
    status.dataset.status = session.status;
    const wasEnded = config.endedStatuses.includes(state.status);
    state.status = session.status;
    if (wasEnded !== config.endedStatuses.includes(state.status)) renderCase();
    showRotate();
    showScore(session.score);
    if (session.master_video_url) {
      switchToMaster(session.master_video_url);
      render();
      return;
    }
    if (!state.duration) state.duration = session.duration_s || 0;
    setPieces(preview.pieces);
    render();
    progress.hidden = false;
    const failed = session.status === "failed";
    const reason = session.failure_reason ? ": " + session.failure_reason : "";
    if (state.pieces.length) {
      const n = segmentCount();
      progress.classList.add("preview");
      progress.textContent = failed
        ? `Assembling the video failed${reason}. Playing the ${n} stored segment${n === 1 ? "" : "s"} instead.`
        : `Preview from ${n} stored segment${n === 1 ? "" : "s"}; the full video is being built. ` +
          `(status: ${session.status}) Checking again every 3 s…`;
    } else {
      progress.classList.remove("preview");
      const why = {
        created: "The candidate has not started yet.",
        live: "The exam is still running; the recording is being archived.",
        ended: "The exam has ended; the video is queued for assembly.",
        finalizing: "The video is being assembled.",
        failed: `Assembling the video failed${reason}.`,
      }[session.status] || "The video is not available yet.";
      progress.textContent = `${why} (status: ${session.status}) Checking again every 3 s…`;
    }
    if (!failed) schedule(3000);
  }

  if (!config.masterDuration && config.pieces && config.pieces.length) setPieces(config.pieces);
  load();
})();
