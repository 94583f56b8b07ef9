"""Fixed settings: the default output folder. The mode enums live in types.py; they are named here too only for the
modules that still import them from here (residency), until those import them from types."""

from __future__ import annotations

from pathlib import Path

from ltx_demo.types import ImageFit, LoraMode, Quantization, Residency, TextEncoderQuantization

__all__ = ["DEFAULT_OUTPUT_DIR", "ImageFit", "LoraMode", "Quantization", "Residency", "TextEncoderQuantization"]

DEFAULT_OUTPUT_DIR = Path("outputs")
