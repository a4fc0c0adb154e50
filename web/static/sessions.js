"use strict";
(() => {
  const form = document.getElementById("new-session-form");
  const err = document.getElementById("new-session-error");
  const box = document.getElementById("join-box");
  const urlField = document.getElementById("join-url");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const candidate = document.getElementById("new-candidate").value.trim();
    const exam = document.getElementById("new-exam").value.trim();
    const sensitivity = document.getElementById("new-sensitivity").value;
    try {
      const session = await staff.api("POST", "/api/sessions", { candidate, exam, sensitivity });
      urlField.value = session.join_url;
      box.hidden = false;
      box.dataset.sessionId = session.id;
      urlField.select();
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    }
  });
  document.getElementById("copy-btn").addEventListener("click", async () => {
    const msg = document.getElementById("copy-msg");
    try {
      await navigator.clipboard.writeText(urlField.value);
      msg.textContent = "Copied";
    } catch (e) {
      urlField.select();
      msg.textContent = document.execCommand("copy") ? "Copied" : "Press Ctrl+C to copy";
    }
  });
})();
