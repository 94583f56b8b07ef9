"""The Gradio demo: portrait + audio + prompt in, lip-synced video out, with live memory and timing readouts beside it.

app.py (the page), form.py (the request's fields), frames.py (the video's length), jobs.py (the GPU job),
readouts.py, review_panel.py, static/.
Built on the engine's public API only: imports neither torch nor ltx_* (the repository's app.py hands the engine in).
"""

from ltx_demo.requests import max_frames_at
from ltx_demo.ui.app import build_demo, launch_options
from ltx_demo.ui.form import FIELDS, RESOLUTIONS, Preset, resolve_resolution
from ltx_demo.ui.frames import matched_frames
from ltx_demo.ui.readouts import memory_now_html, memory_plot_html, samples_payload

__all__ = [
    "FIELDS",
    "RESOLUTIONS",
    "Preset",
    "build_demo",
    "launch_options",
    "matched_frames",
    "max_frames_at",
    "memory_now_html",
    "memory_plot_html",
    "resolve_resolution",
    "samples_payload",
]
