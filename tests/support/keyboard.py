"""Keyboard reachability in real Chromium: every visible control a mouse user could click is reached by Tab."""

from __future__ import annotations

from typing import Any

# Every visible control a mouse user could click, and whether Tab reached each. A radio group is one stop.
MARK_CONTROLS = """() => {
  const sel = 'a[href], button, input:not([type=hidden]), select, textarea, summary, video[controls], ' +
              '[tabindex]:not([tabindex="-1"])';
  const seen = new Set();
  const found = [];
  for (const el of document.querySelectorAll(sel)) {
    if (el.disabled || !el.getClientRects().length || getComputedStyle(el).visibility === 'hidden') continue;
    if (el.type === 'radio') { if (seen.has(el.name)) continue; seen.add(el.name); }
    el.dataset.kbd = String(found.length);
    found.push(el.id || el.name || el.textContent.trim().slice(0, 30) || el.tagName);
  }
  window.__reached = new Set();
  document.addEventListener('focusin', (e) => {
    const el = e.target.type === 'radio'
      ? document.querySelector(`input[type=radio][name="${e.target.name}"][data-kbd]`) : e.target;
    if (el && el.dataset.kbd !== undefined) window.__reached.add(el.dataset.kbd);
  });
  return found;
}"""


async def every_control_reachable(page: Any) -> None:
    controls = await page.evaluate(MARK_CONTROLS)
    assert controls
    # Each control is one Tab stop (the <video>'s own buttons are a few more): go round the page once.
    for _ in range(len(controls) + 40):
        await page.keyboard.press("Tab")
        if await page.evaluate("window.__reached.size") == len(controls):
            break
    reached = set(await page.evaluate("[...window.__reached]"))
    missing = [name for i, name in enumerate(controls) if str(i) not in reached]
    assert not missing, f"not reachable with Tab: {missing}"
