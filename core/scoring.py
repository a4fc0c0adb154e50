"""The session's suspicion score: flags weighted by kind and by how long they lasted, dismissed ones excluded.

score = min(100, sum over events of weight[kind] * max(duration_s, 1) / 10): a weight is the points one flag of
that kind earns per 10 seconds. An instant flag counts as one second; merged instants (copy/paste), whose
details count them, as one second each, so twenty pastes in a minute weigh what twenty separate flags did.
Weights are a setting (SCORE_WEIGHTS); kinds without a weight earn 1. The score is stored on the session and
refreshed whenever an event ends or grows (a merged instant) or a reviewer changes its state, so lists sort and
filter on it without recomputing (proctor.store.sessions.refresh_score computes it in SQL).
"""

from __future__ import annotations

DEFAULT_WEIGHTS = {
    "identity_mismatch": 10.0, "phone": 8.0, "multiple_people": 6.0, "second_screen": 5.0, "no_face": 3.0,
    "looking_away": 2.0, "tab_hidden": 2.0, "copy_paste": 2.0, "window_blur": 1.0, "fullscreen_exit": 1.0,
    # A dark or blurred picture is mostly the room's fault, yet it also hides the candidate: a little weight.
    "poor_image": 0.5,
    # The screen went unrecorded (often a mis-click that the page asks to fix), or the display set-up changed.
    "screen_share_stopped": 2.0, "screen_changed": 2.0,
    # Talking is often innocent (reading a question aloud, a sigh, a word to a pet): a little weight, a reviewer
    # listens; a microphone muted for long hides the room.
    "talking": 1.0, "audio_muted": 2.0,
    # The server's own events (the archive failed, staff replaced the reference photo) say nothing about the
    # candidate: they are on the timeline for the reviewer, never in the score.
    "recording_error": 0.0, "reference_replaced": 0.0,
}


def parse_weights(raw: str) -> dict[str, float]:
    """`kind=weight,...` over the defaults; raises ValueError naming the bad entry."""
    weights = dict(DEFAULT_WEIGHTS)
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        kind, sep, value = part.partition("=")
        try:
            if not sep or not kind.strip():
                raise ValueError
            weights[kind.strip()] = float(value)
        except ValueError:
            raise ValueError(f"expected kind=number, got {part!r}") from None
        if weights[kind.strip()] < 0:
            raise ValueError(f"weight of {kind.strip()} must not be negative")
    return weights
