"""Event kinds: what a flag can be, where it comes from, and the states a reviewer puts it in."""

from __future__ import annotations

# Raised by detectors from sampled video frames (analyzers/).
# poor_image: too dark, too bright, blurred or covered; the candidate is told at once, and it is never a no_face.
FRAME_KINDS = ("no_face", "multiple_people", "looking_away", "identity_mismatch", "phone", "poor_image")
# Reported by the candidate page over the data channel (tab hidden, window blur, ...). The screen share's: the
# shared screen stopped (the page says so, or the media node sees no screen frames: media_server/stream.py) and
# the shared screen changed (the display set-up or the shared monitor changed; a second display appearing is
# second_screen).
BROWSER_KINDS = ("tab_hidden", "window_blur", "fullscreen_exit", "second_screen", "copy_paste",
                 "screen_share_stopped", "screen_changed")
# Raised by the voice detector from the candidate's microphone (analyzers/voice.py): someone talking for a couple
# of seconds, and the microphone muted, stopped or digitally silent for long. An exam's "audio flags off"
# (core.sensitivity) raises neither; the audio is recorded either way.
AUDIO_KINDS = ("talking", "audio_muted")
# Raised by the server: about itself (the archive could not write), and when staff replace a session's reference
# photo (web/candidate.py: the candidate may not, once the exam has started).
SYSTEM_KINDS = ("recording_error", "reference_replaced")
# Put on the timeline by people, never flags (no score, nothing to confirm or dismiss): a proctor's message or
# request to the candidate (and its acknowledgement), a pause of the exam, and a break the candidate's
# accommodations allow (core.accommodations). Detectors raise no flag while a pause or a break is on.
PROCTOR_KINDS = ("proctor_message", "exam_paused")
CANDIDATE_KINDS = ("exam_break",)
TIMELINE_KINDS = (*PROCTOR_KINDS, *CANDIDATE_KINDS)
# The intervals during which monitoring is held (one at most is open per session).
HOLD_KINDS = ("exam_paused", "exam_break")

REVIEW_STATES = ("pending", "confirmed", "dismissed")


def source_of(kind: str) -> str:
    """The `source` column of an event of this kind: analyzer, browser, system, proctor or candidate."""
    if kind in BROWSER_KINDS:
        return "browser"
    if kind in SYSTEM_KINDS:
        return "system"
    if kind in PROCTOR_KINDS:
        return "proctor"
    if kind in CANDIDATE_KINDS:
        return "candidate"
    return "analyzer"
