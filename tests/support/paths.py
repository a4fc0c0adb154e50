"""Where tests leave what a person may want to look at after a run (screenshots, logs)."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
