"""ltx-demo: a browser demo for LTX-2 audio-to-video (engine, residency, telemetry and Gradio UI)."""
