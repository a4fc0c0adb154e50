"""Event kinds: what a flag can be, where it comes from, and the states a reviewer puts it in."""

from __future__ import annotations

# Raised by detectors from sampled video frames (analyzers/).
# poor_image: too dark, too bright, blurred or covered; the candidate is told at once, and it is never a no_face.
FRAME_KINDS = ("no_face", "multiple_people", "looking_away", "identity_mismatch", "phone", "poor_image")
# Reported by the candidate page over the data channel (tab hidden, window blur, ...).
BROWSER_KINDS = ("tab_hidden", "window_blur", "fullscreen_exit", "second_screen", "copy_paste")
# Raised by the server: about itself (the archive could not write), and when staff replace a session's reference
# photo (web/candidate.py: the candidate may not, once the exam has started).
SYSTEM_KINDS = ("recording_error", "reference_replaced")

REVIEW_STATES = ("pending", "confirmed", "dismissed")


def source_of(kind: str) -> str:
    """The `source` column of an event of this kind: analyzer, browser or system."""
    if kind in BROWSER_KINDS:
        return "browser"
    if kind in SYSTEM_KINDS:
        return "system"
    return "analyzer"
