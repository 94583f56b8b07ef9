"""Fixed settings: the default output folder (the mode enums live in types.py)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_OUTPUT_DIR = Path("outputs")
