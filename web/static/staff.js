// Shared by staff pages: JSON calls with the session's CSRF token (cookie login), and small helpers.
"use strict";
window.staff = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function api(method, url, body) {
    const headers = { "X-CSRF-Token": csrf };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
    return data;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function fmtTime(s) {
    if (s === null || s === undefined) return "…";
    const m = Math.floor(s / 60), sec = s - m * 60;
    return `${m}:${sec.toFixed(2).padStart(5, "0")}`;
  }

  // Suspicion score 0-100, one decimal; green < 10, amber < 40, red >= 40 (as the server renders it).
  function fmtScore(s) { return (Math.round((s || 0) * 10) / 10).toFixed(1); }
  function scoreLevel(s) {
    const v = Math.round((s || 0) * 10) / 10;
    return v < 10 ? "low" : v < 40 ? "mid" : "high";
  }

  return { api, el, fmtTime, fmtScore, scoreLevel, csrf };
})();
