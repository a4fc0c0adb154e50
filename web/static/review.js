// Review page: the master video is the session media timeline, so seeking to an event is
// video.currentTime = event.start_s, exactly.
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("config").textContent);
  const base = `/api/sessions/${config.sessionId}`;
  const video = document.getElementById("master");
  const timeline = document.getElementById("timeline");
  const playhead = document.getElementById("playhead");
  const body = document.getElementById("events-body");
  const progress = document.getElementById("progress");
  const state = { events: [], current: -1, duration: config.masterDuration || 0, masterLoaded: false };
  window.review = state;

  function duration() {
    if (state.duration > 0) return state.duration;
    if (Number.isFinite(video.duration) && video.duration > 0) return video.duration;
    return 0;
  }

  function seekTo(index) {
    if (index < 0 || index >= state.events.length) return;
    state.current = index;
    const ev = state.events[index];
    if (state.masterLoaded) video.currentTime = ev.start_s;
    render();
    showDetail();
    const row = body.querySelector(`tr[data-event-id="${ev.id}"]`);
    if (row) row.scrollIntoView({ block: "nearest" });
  }

  function renderTimeline() {
    timeline.querySelectorAll(".marker").forEach((m) => m.remove());
    const d = duration();
    if (!d) return;
    state.events.forEach((ev, i) => {
      const end = ev.end_s === null ? d : ev.end_s;
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
      staff.el("td", {}, staff.el("span", { class: "kind", dataset: { kind: ev.kind } }, ev.kind)),
      staff.el("td", { class: "num" }, staff.fmtTime(ev.start_s)),
      staff.el("td", { class: "num" }, ev.end_s === null ? "open" : staff.fmtTime(ev.end_s)),
      staff.el("td", { class: "num" }, (ev.confidence ?? 0).toFixed(2)),
      staff.el("td", {}, staff.el("span", { class: "review-state", dataset: { state: ev.review_state } },
        ev.review_state)));
    }));
    if (!state.events.length) {
      body.append(staff.el("tr", {}, staff.el("td", { colspan: 6, class: "hint" }, "No events.")));
    }
  }

  function render() { renderTimeline(); renderTable(); }

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
    st.textContent = ev.review_state;
    st.dataset.state = ev.review_state;
    document.getElementById("detail-by").textContent = ev.reviewed_by ? `by ${ev.reviewed_by}` : "";
    document.getElementById("note").value = ev.review_note || "";
    document.getElementById("review-msg").textContent = "";
  }

  async function review(newState) {
    const ev = state.events[state.current];
    if (!ev) return;
    const msg = document.getElementById("review-msg");
    try {
      const updated = await staff.api("POST", `${base}/events/${ev.id}/review`,
        { state: newState, note: document.getElementById("note").value });
      state.events[state.current] = updated;
      render();
      showDetail();
      msg.textContent = `Saved (${updated.review_state}).`;
    } catch (e) {
      msg.textContent = e.message;
    }
  }
  document.getElementById("confirm-btn").addEventListener("click", () => review("confirmed"));
  document.getElementById("dismiss-btn").addEventListener("click", () => review("dismissed"));
  document.getElementById("reset-btn").addEventListener("click", () => review("pending"));

  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key.toLowerCase();
    if (key === "j" || key === "n") { seekTo(Math.min(state.events.length - 1, state.current + 1)); }
    else if (key === "k" || key === "p") { seekTo(Math.max(0, state.current - 1)); }
    else if (key === " " && state.masterLoaded) { if (video.paused) video.play(); else video.pause(); }
    else return;
    e.preventDefault();
  });

  video.addEventListener("timeupdate", () => {
    const d = duration();
    if (d) playhead.style.left = `${Math.min(100, (video.currentTime / d) * 100)}%`;
  });
  video.addEventListener("seeked", () => {
    state.lastSeek = { currentTime: video.currentTime };
    video.dispatchEvent(new Event("timeupdate"));
  });
  video.addEventListener("loadedmetadata", () => {
    if (!state.duration && Number.isFinite(video.duration)) state.duration = video.duration;
    state.masterLoaded = true;
    render();
    if (state.current >= 0) video.currentTime = state.events[state.current].start_s;
  });

  async function load() {
    let session;
    try {
      session = await staff.api("GET", base);
      const exported = await staff.api("GET", `${base}/events.json`);
      state.events = exported.events;
    } catch (e) {
      progress.hidden = false;
      progress.textContent = `Could not load the session: ${e.message}. Retrying…`;
      setTimeout(load, 3000);
      return;
    }
    const status = document.getElementById("session-status");
    status.textContent = session.status;
    status.dataset.status = session.status;
    render();
    if (session.master_video_url) {
      progress.hidden = true;
      if (!video.src) video.src = session.master_video_url;
      return;
    }
    if (!state.duration) state.duration = session.duration_s || 0;
    progress.hidden = false;
    const why = {
      created: "The candidate has not started yet.",
      live: "The exam is still running; the recording is being archived.",
      ended: "The exam has ended; the video is queued for assembly.",
      finalizing: "The video is being assembled.",
      failed: `Assembling the video failed${session.failure_reason ? ": " + session.failure_reason : ""}.`,
    }[session.status] || "The video is not available yet.";
    progress.textContent = `${why} (status: ${session.status}) Checking again every 3 s…`;
    if (session.status !== "failed") setTimeout(load, 3000);
  }
  load();
})();
