"""The page: build_demo lays out the form, the run column (Generate, progress, result, live memory) and the review
panel, and wires them. Built on the engine's public API only: imports neither torch nor ltx_* (app.py at the
repository root builds the engine and hands it in)."""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib import resources
from pathlib import Path

import gradio as gr

from ltx_demo.types import GenerationResult, InvalidRequest
from ltx_demo.ui.form import (
    Preset,
    disabled_options_css,
    form_handler,
    request_from_form,
    small_portrait_note,
)
from ltx_demo.ui.form_panel import FormDefaults, build_form
from ltx_demo.ui.frames import record_pace
from ltx_demo.ui.jobs import GPU_JOB, DemoController, EngineLike, refuse, run_job, session_of
from ltx_demo.ui.readouts import (
    READOUT_INTERVAL_S,
    memory_now_html,
    memory_plot_html,
    result_html,
    samples_key,
    status_html,
)
from ltx_demo.ui.review_panel import ReviewPanel

logger = logging.getLogger(__name__)

SYNTHETIC_BANNER = (
    "<b>Synthetic weights: the output is noise.</b> Start with <code>--bundle DIR</code> or "
    "<code>--checkpoint-path CKPT --distilled-lora-path LORA --spatial-upsampler-path UPSAMPLER "
    "--gemma-root GEMMA_DIR</code> to use LTX-2.3."
)


def static_text(name: str) -> str:
    """A file of ltx_demo/ui/static (package data)."""
    return resources.files("ltx_demo.ui").joinpath("static", name).read_text(encoding="utf-8")


def theme() -> gr.themes.Base:
    """The demo's look; a function, not a module constant, so importing the UI builds nothing."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate", radius_size="lg")


def launch_options() -> dict:
    """Gradio 6 takes the theme, CSS and head (the A/B player's script) at launch()."""
    return {"theme": theme(), "css": static_text("demo.css"), "head": f"<script>{static_text('ab_player.js')}</script>"}


def api_summary(result: GenerationResult) -> dict:
    """What `generate` returns to API clients and shows as the result's parameters: the engine's summary plus the
    request, the provenance (input hashes, versions, bundle fingerprint) and where the JSON sidecar was saved."""
    sidecar = Path(result.output).with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text()).get("provenance") or {}
    except (OSError, json.JSONDecodeError):
        record = {}
    return result.summary() | {
        "request": dataclasses.asdict(result.request),
        "provenance": record,
        "parameters_file": str(sidecar),
    }


class RunHandlers:
    """Generate, Cancel and the live readouts (the timer): what the run column's events call."""

    def __init__(self, engine: EngineLike, controller: DemoController) -> None:
        self.engine, self.controller = engine, controller

    def generate(self, values: dict, request: gr.Request):
        """Generate a lip-synced video; returns the video and the run's summary JSON (with its request)."""
        try:
            generation = request_from_form(values)  # typed here; the engine checks it as it checks every request
        except InvalidRequest as exc:
            raise refuse(str(exc), "Check your input") from None
        if blur := small_portrait_note(generation.image_path):
            gr.Warning(f"The portrait is {blur}.", title="Small portrait")
        result = run_job(self.controller, generation, request)
        record_pace(result)  # the match note's rough time for the next long recording
        if "padded" in result.audio_note:  # the clip is longer than the audio: say so where it is seen
            gr.Warning(f"The audio is shorter than the video. Audio: {result.audio_note}.", title="Audio padded")
        return result.output, api_summary(result), result

    def show_result(self, result: GenerationResult | None):
        if result is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        sidecar = Path(result.output).with_suffix(".json")
        files = [result.output, *([str(sidecar)] if sidecar.is_file() else [])]
        cuda = result.peak_vram_bytes is not None
        return (
            result_html(result),
            memory_plot_html(result.samples, cuda),
            samples_key(result.samples),
            files,
            result.seed,
        )

    def cancel(self, request: gr.Request) -> str:
        """Cancel this session's job: it stops between steps and frees what it built."""
        self.controller.cancel(session_of(request), announce=lambda message: gr.Info(message, title="Cancel"))
        return self.controller.progress_html(session_of(request))

    def readouts(self, last_key: tuple, request: gr.Request):
        """The live panel (timer): status line, progress, memory now, and the plot when its samples changed. Each
        tick also says this tab is still open, which keeps what it shows pinned."""
        session = session_of(request)
        self.engine.pins.renew(session)
        now = self.engine.status()
        samples = self.engine.live_samples()
        running = bool(now["busy"])
        sample = samples[-1] if running and samples else self.engine.memory_now()
        key = samples_key(samples)
        new_plot = memory_plot_html(samples, now["cuda"]) if key != tuple(last_key or ()) else gr.skip()
        return (
            status_html(now, self.controller.job_line()),
            self.controller.progress_html(session, now.get("loading")),
            memory_now_html(sample, now["cuda"], running),
            new_plot,
            key,
            gr.update(interactive=not self.controller.has_job(session)),  # Generate waits for this visitor's job
        )

    def engine_status(self) -> dict:
        """The engine's status (device, busy, loading, resident models, synthetic) for API clients."""
        return self.engine.status() | {"unavailable": self.controller.unavailable()}

    def tab_closed(self, request: gr.Request) -> None:
        """A closed tab (its heartbeat ends) releases its pins and cancels its job, which frees what it built."""
        session = getattr(request, "session_hash", None)
        if session:
            self.engine.pins.release(session)
        if session and self.controller.has_job(session):
            logger.info("session %s went away: %s", session, self.controller.cancel(session))


def build_demo(
    engine: EngineLike,
    *,
    negative_prompt: str,
    presets_path: Path | None = None,
    default_prompt: str = "",
    preload: bool = False,
) -> gr.Blocks:
    """The whole app. app.py builds the engine, passes the pipeline's default negative prompt, then queues and launches
    what this returns; the GPU event has concurrency_limit=1, so others see their queue position."""
    controller = DemoController(engine, negative_prompt)
    handlers = RunHandlers(engine, controller)
    blocked = controller.unavailable()
    status = engine.status()
    presets = Preset.load_all(presets_path) if presets_path else ()
    defaults = FormDefaults(presets, default_prompt, negative_prompt, controller.default_quantization(), blocked)

    with gr.Blocks(title="LTX-2 audio-to-video", analytics_enabled=False) as demo:
        gr.HTML(
            '<div id="header"><h1>LTX-2 audio-to-video</h1><p>A portrait, a voice and a prompt in; a lip-synced video '
            "out, with live memory and timing beside it.</p></div>",
            js_on_load=None,
        )
        if engine.bundle.synthetic:
            gr.HTML(f'<div id="synthetic-banner">⚠ {SYNTHETIC_BANNER}</div>', js_on_load=None)
        status_line = gr.HTML(status_html(status, ""), elem_id="status-line", js_on_load=None)
        gr.HTML(disabled_options_css("quantization", list(blocked)), js_on_load=None)

        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=420):
                form = build_form(defaults)
            with gr.Column(scale=6, min_width=460):
                with gr.Row(elem_id="generate-row"):
                    generate_button = gr.Button("Generate", variant="primary", scale=3, elem_id="generate")
                    cancel_button = gr.Button("Cancel", variant="stop", scale=1, elem_id="cancel")
                progress_line = gr.HTML(controller.progress_html(""), elem_id="progress-line", js_on_load=None)
                video = gr.Video(
                    label="Result (plays with its audio)",
                    elem_id="result-video",
                    interactive=False,
                    buttons=["download"],
                    height=400,
                )
                memory_now = gr.HTML(
                    memory_now_html(engine.memory_now(), status["cuda"], False), elem_id="memory-now", js_on_load=None
                )
                plot = gr.HTML(
                    memory_plot_html(engine.live_samples(), status["cuda"]), elem_id="memory-plot", js_on_load=None
                )
                result_panel = gr.HTML(
                    '<div class="result-empty">Per-phase wall time and peak memory appear here after a run.</div>',
                    elem_id="result-panel",
                    js_on_load=None,
                )
                with gr.Accordion("Parameters (saved next to the video as JSON) and downloads", open=False):
                    downloads = gr.File(
                        label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                    )
                    parameters = gr.JSON(label="Parameters", elem_id="parameters", open=True)
        review = ReviewPanel(engine, controller)
        review.build()
        result_state = gr.State(None)
        plot_key = gr.State(samples_key(engine.live_samples()))
        timer = gr.Timer(READOUT_INTERVAL_S)

        form.wire()
        run_event = generate_button.click(
            form_handler("generate", handlers.generate),
            form.inputs,
            [video, parameters, result_state],
            api_name="generate",
            **GPU_JOB,
            show_progress="hidden",  # the progress line is the one display
        )
        run_event.success(
            handlers.show_result,
            result_state,
            [result_panel, plot, plot_key, downloads, form["seed"]],
            api_name="show_result",
            api_visibility="undocumented",
            show_progress="hidden",
        )
        review.wire(demo, run_event, result_state, form.inputs, cancel_button)
        # Our cancel stops the running job between steps; gradio's `cancels` also drops a job still in the queue.
        cancel_button.click(
            handlers.cancel,
            None,
            progress_line,
            api_name="cancel",
            concurrency_limit=None,
            cancels=[run_event],
            show_progress="hidden",
        )
        timer.tick(
            handlers.readouts,
            plot_key,
            [status_line, progress_line, memory_now, plot, plot_key, generate_button],
            api_name="readouts",
            concurrency_limit=None,
            show_progress="hidden",
            api_visibility="undocumented",
        )
        gr.api(handlers.engine_status, api_name="status")
        demo.unload(handlers.tab_closed)

    if preload:
        controller.preload_in_background(controller.default_quantization())
    return demo
