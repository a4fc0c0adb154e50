"""The synthetic videos the review-page tests write (VP8 copy-muxed into WebM): their frame rate and size."""

from __future__ import annotations

FPS = 30
WIDTH, HEIGHT = 320, 240
