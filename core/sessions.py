"""An exam session's life: its statuses, the transitions between them, and what a session id looks like.

    created ──> live ──> ended ──> finalizing ──> finalized
       └──────────────────^            └────────> failed ──> finalizing (a retry)

`created`: the join link exists, no media yet. `live`: a media node carries (or carried, and may again after a
reconnect) the candidate's stream. `ended`: by staff, by the candidate, by the disconnect sweep or by deletion;
the archive's finalize job is queued. `finalizing` / `finalized` / `failed`: the archive worker building the
master video. proctor.store.sessions applies every change and refuses one this table does not allow.
"""

from __future__ import annotations

import uuid

STATUSES = ("created", "live", "ended", "finalizing", "finalized", "failed")
OPEN_STATUSES = ("created", "live")

# status -> the statuses a session may move to from it. A reconnect sets `live` again; a finalize retried after
# a crash or a failure sets `finalizing` again.
TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({"live", "ended"}),
    "live": frozenset({"live", "ended"}),
    "ended": frozenset({"finalizing", "failed"}),
    "finalizing": frozenset({"finalizing", "finalized", "failed"}),
    "failed": frozenset({"finalizing", "failed"}),
    "finalized": frozenset(),
}


def can_move(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def sources(target: str) -> list[str]:
    """The statuses from which a session may move to `target` (for a conditional UPDATE)."""
    if target not in STATUSES:
        raise ValueError(f"unknown session status {target!r}")
    return [status for status in STATUSES if target in TRANSITIONS[status]]


def parse_id(raw: str) -> str | None:
    """A canonical session UUID, or None for anything else (so bad ids read as 'not found', never a 500)."""
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError):
        return None
