"""The request form laid out (sections 1 and 2 of the page): the controls FIELDS names, plus the notes and previews
that answer while a visitor edits them, and those events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ltx_demo.requests import FRAME_RATES, MAX_FRAMES, MAX_SEED, MAX_STEPS, MAX_VIDEO_SECONDS
from ltx_demo.types import DecodeTiling, Flow, GuidanceParams, ImageFit, Quantization, Residency
from ltx_demo.ui.form import (
    DEFAULT_RESOLUTION,
    NAMES,
    QUANTIZATION_NOTES,
    RESIDENCY_NOTES,
    RESOLUTIONS,
    WINDOW_FIELDS,
    Preset,
    describe_audio,
    describe_frames,
    pass_unreadable_files_on,
    preview_fit,
    show_resolution,
    sync_frames,
)
from ltx_demo.ui.frames import DEFAULT_MAX_VIDEO_SECONDS, DEFAULT_OVERLAP

DEFAULT_STEPS = 30
DEFAULT_SEED = 42


@dataclass(frozen=True, slots=True)
class FormDefaults:
    """What the form shows first: the first preset (if any) and the engine's options."""

    presets: tuple[Preset, ...]
    prompt: str
    negative_prompt: str
    quantization: str
    unavailable: Mapping[str, str]


class Form:
    """The form's controls by table name, and the notes and previews around them."""

    def __init__(self, components: dict[str, gr.components.Component], extras: dict[str, Any]) -> None:
        missing = set(NAMES) ^ set(components)
        assert not missing, f"the form's controls and FIELDS differ: {sorted(missing)}"
        self.components = components
        self.extras = extras

    def __getitem__(self, name: str) -> Any:
        return self.components[name] if name in self.components else self.extras[name]

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The controls in table order: generate's inputs and reuse_settings' outputs."""
        return [self.components[name] for name in NAMES]

    def wire(self) -> None:
        """The form's own events: the custom size row, the fit preview, the frame count and its notes."""
        c = self
        c["resolution"].change(
            show_resolution, c["resolution"], c["custom_row"], api_name="show_resolution", queue=False
        )
        gr.on(
            [c[n].change for n in ("image", "resolution", "width", "height", "image_fit")],
            preview_fit,
            [c[n] for n in ("image", "resolution", "width", "height", "image_fit")],
            [c["preview"], c["fit_note"]],
            api_name="preview_fit",
            concurrency_limit=4,
            show_progress="minimal",
            trigger_mode="always_last",
        )
        matched = ("audio", "audio_start", "frame_rate", "match_audio", "resolution", "width", "height")
        triggers, frame_inputs = (*matched, *WINDOW_FIELDS), (*matched, "num_frames", *WINDOW_FIELDS)  # in order
        gr.on(
            [c[n].change for n in triggers],
            sync_frames,
            [c[n] for n in frame_inputs],
            [c["num_frames"], c["match_note"], c["duration_note"]],
            api_name="match_frames",
            concurrency_limit=4,
            show_progress="hidden",
            trigger_mode="always_last",
        )
        c["audio"].change(
            describe_audio,
            c["audio"],
            c["audio_note"],
            concurrency_limit=4,
            show_progress="hidden",
            trigger_mode="always_last",
            api_visibility="private",
        )
        # In the browser only (no round trip, so nothing can arrive late): taking the slider ends "match audio".
        c["num_frames"].input(None, None, c["match_audio"], js="() => false")
        length_inputs = ("num_frames", "frame_rate", "match_audio", "resolution", "width", "height", *WINDOW_FIELDS[:2])
        gr.on(  # the length note while frames are set by hand: every input it reads, answered without the queue
            [c[n].change for n in length_inputs],
            describe_frames,
            [c[n] for n in length_inputs],
            c["duration_note"],
            api_name="describe_frames",
            queue=False,
            show_progress="hidden",
        )


def build_form(defaults: FormDefaults) -> Form:
    """Sections 1 and 2 (portrait, voice, prompt; video and weights), inside the caller's column. The first view is
    computed here, not by page-load events: a load event's late reply could overwrite what a visitor has already
    changed (it is not ordered with the change events)."""
    view = FirstView.of(defaults)
    c: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    _inputs_section(defaults, view, c, extras)
    _video_section(view, c, extras)
    _weights_section(defaults, c)
    _advanced_section(defaults, c)
    return Form(c, extras)


@dataclass(frozen=True, slots=True)
class FirstView:
    """What the form shows before a visitor touches it: the first preset's inputs and the notes they give."""

    image: str | None
    audio: str | None
    prompt: str
    resolution: str
    preview: Any
    fit_note: str
    frames: int
    match_note: str
    length_note: str

    @classmethod
    def of(cls, defaults: FormDefaults) -> FirstView:
        first = defaults.presets[0] if defaults.presets else None
        resolution = first.resolution if first else DEFAULT_RESOLUTION
        image, audio = (str(first.image), str(first.audio)) if first else (None, None)
        preview, fit_note = preview_fit(image, resolution, 768, 512, ImageFit.CROP.value)
        slider, match_note, length_note = sync_frames(audio, 0.0, FRAME_RATES[0], True, resolution, 768, 512, 97)
        prompt = first.prompt if first else defaults.prompt
        frames = slider.get("value", 97)
        return cls(image, audio, prompt, resolution, preview, fit_note, frames, match_note, length_note)


def _inputs_section(defaults: FormDefaults, view: FirstView, c: dict, extras: dict) -> None:
    """Section 1: portrait (and what the model sees), voice, prompt, the presets; the resolution and fit controls
    are made here for the presets and rendered in section 2."""
    gr.Markdown("### 1 · Portrait, voice and prompt", elem_classes="section-title")
    with gr.Row():
        c["image"] = pass_unreadable_files_on(
            gr.Image(
                value=view.image,
                type="filepath",
                image_mode=None,
                sources=["upload", "webcam", "clipboard"],
                label="Portrait",  # one short line: the upload/webcam/paste icons say the rest
                elem_id="portrait",
                height=200,
            )
        )
        extras["preview"] = gr.Image(
            view.preview,
            label="What the model sees",
            interactive=False,
            elem_id="fit-preview",
            height=200,
            buttons=[],
            format="png",
        )
    extras["fit_note"] = gr.Markdown(view.fit_note, elem_id="fit-note")
    c["audio"] = gr.Audio(
        value=view.audio,
        type="filepath",
        format=None,
        sources=["upload", "microphone"],
        label="Voice (upload or record: WAV, MP3, FLAC, OGG, M4A)",
        elem_id="audio",
    )
    extras["audio_note"] = gr.Markdown(describe_audio(view.audio), elem_id="audio-note")
    c["prompt"] = gr.Textbox(
        view.prompt,
        label="Prompt",
        lines=3,
        max_lines=4,
        elem_id="prompt",
        placeholder="Describe the person, the scene and the camera.",
    )
    with gr.Accordion("Negative prompt (prefilled with ltx-pipelines' default)", open=False):
        c["negative_prompt"] = gr.Textbox(
            defaults.negative_prompt, show_label=False, lines=4, elem_id="negative-prompt"
        )
    c["resolution"] = gr.Radio(
        RESOLUTIONS,
        value=view.resolution,
        label="Resolution (W × H; portrait when H > W)",
        elem_id="resolution",
        render=False,
    )
    c["image_fit"] = gr.Radio(
        [f.value for f in ImageFit],
        value=ImageFit.CROP.value,
        render=False,
        label="Fit the portrait",
        elem_id="image-fit",
        info="crop fills; pad keeps all",
    )
    if presets := defaults.presets:
        gr.Examples(
            [[str(p.image), str(p.audio), p.prompt, p.resolution, ImageFit.CROP.value] for p in presets],
            inputs=[c["image"], c["audio"], c["prompt"], c["resolution"], c["image_fit"]],
            example_labels=[p.name for p in presets],
            label="Presets: one click fills everything",
            cache_examples=False,
            elem_id="presets",
        )


def _video_section(view: FirstView, c: dict, extras: dict) -> None:
    """Section 2: resolution, fit, frame rate, frames (matched to the audio), seed and steps."""
    gr.Markdown("### 2 · Video", elem_classes="section-title")
    c["resolution"].render()
    with gr.Row(visible=False) as extras["custom_row"]:
        c["width"] = gr.Number(768, label="Width (multiple of 64)", precision=0, step=64, elem_id="width")
        c["height"] = gr.Number(512, label="Height (multiple of 64)", precision=0, step=64, elem_id="height")
    with gr.Row():
        c["image_fit"].render()
        c["frame_rate"] = gr.Radio(
            list(FRAME_RATES), value=FRAME_RATES[0], label="Frame rate (fps)", elem_id="frame-rate"
        )
    with gr.Row(equal_height=True):
        c["match_audio"] = gr.Checkbox(
            True,
            label="Match audio length",
            elem_id="match-audio",
            info="moving the slider unticks it",
        )
        c["audio_start"] = gr.Number(0.0, label="Audio start offset (s)", minimum=0, step=0.1, elem_id="audio-start")
    c["num_frames"] = gr.Slider(
        9, MAX_FRAMES, value=view.frames, step=8, label="Frames (8k+1)", interactive=True, elem_id="frames"
    )
    with gr.Row():
        extras["duration_note"] = gr.Markdown(view.length_note, elem_id="duration-note")
        extras["match_note"] = gr.Markdown(view.match_note, elem_id="match-note")
    _long_recording_section(c)
    with gr.Row(equal_height=True):
        c["seed"] = gr.Number(
            DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed", scale=1
        )
        c["randomize_seed"] = gr.Checkbox(False, label="Randomize seed", elem_id="randomize-seed", scale=1)
        c["steps"] = gr.Slider(
            1,
            MAX_STEPS,
            value=DEFAULT_STEPS,
            step=1,
            label="Steps (stage 1)",
            elem_id="steps",
            scale=2,
        )


def _long_recording_section(c: dict) -> None:
    """The window fields, closed by default: a video longer than one window runs in windows of this length."""
    with gr.Accordion("Long recordings: windows past one clip", open=False, elem_id="long-recordings"):
        with gr.Row():
            c["window_frames"] = gr.Number(
                0,
                label="Window length (frames, 8k+1; 0: the most at this size)",
                precision=0,
                minimum=0,
                step=8,
                elem_id="window-frames",
            )
            c["window_overlap_frames"] = gr.Number(
                DEFAULT_OVERLAP, label="Overlap (frames, multiple of 8)", precision=0, step=8, elem_id="window-overlap"
            )
            c["max_video_seconds"] = gr.Number(
                DEFAULT_MAX_VIDEO_SECONDS,
                label=f"Longest video (s, at most {MAX_VIDEO_SECONDS:.0f})",
                elem_id="max-video-seconds",
            )
        gr.Markdown(
            "With *Match audio length* on, audio longer than one window makes one video of the whole recording: "
            "consecutive windows, each continuing the one before. The frame slider shows one window.",
            elem_id="long-recordings-note",
        )


def _weights_section(defaults: FormDefaults, c: dict) -> None:
    """Transformer weights and residency (what cannot run here is greyed out)."""
    blocked = " Greyed out: cannot run here (see Advanced)." if defaults.unavailable else ""
    with gr.Row():
        c["quantization"] = gr.Radio(
            [q.value for q in Quantization],
            value=defaults.quantization,
            label="Transformer weights",
            info=f"fp8 halves the transformer's memory.{blocked}",
            elem_id="quantization",
        )
        c["residency"] = gr.Radio(
            [r.value for r in Residency],
            value=Residency.PERSISTENT.value,
            label="Residency",
            elem_id="residency",
            info="where the models wait between runs",
        )


def _advanced_section(defaults: FormDefaults, c: dict) -> None:
    """The accordion: VRAM budget, guidance, LoRA strength, flow, decoder tiling, enhancement, audio max duration."""
    guidance = GuidanceParams()
    with gr.Accordion("Advanced: VRAM budget, guidance, notes", open=False):
        c["vram_budget_gib"] = gr.Number(
            value=0,
            minimum=0,
            label="VRAM budget for residency auto (GiB; 0: what the device has free)",
            elem_id="vram-budget",
        )
        with gr.Row():
            c["cfg_scale"] = gr.Slider(1.0, 10.0, value=guidance.cfg_scale, step=0.1, label="CFG scale")
            c["stg_scale"] = gr.Slider(0.0, 3.0, value=guidance.stg_scale, step=0.1, label="STG scale")
        with gr.Row():
            c["rescale_scale"] = gr.Slider(0.0, 1.0, value=guidance.rescale_scale, step=0.05, label="Rescale")
            c["modality_scale"] = gr.Slider(
                1.0, 10.0, value=guidance.modality_scale, step=0.1, label="Audio→video modality scale"
            )
        c["distilled_lora_strength"] = gr.Slider(
            0.0, 2.0, value=1.0, step=0.05, label="Distilled LoRA strength (stage 2)"
        )
        with gr.Row():
            c["flow"] = gr.Radio(
                [f.value for f in Flow],
                value=Flow.FAST.value,
                label="Flow",
                info="reference: exactly ltx-pipelines' A2VidPipelineTwoStage (slower; the ground truth)",
                elem_id="flow",
            )
            c["decode_tiling"] = gr.Radio(
                [t.value for t in DecodeTiling],
                value=DecodeTiling.DEFAULT.value,
                label="Decoder tiling",
                info="frame: one tile the frame's size (fewer pixels decoded); off: one pass (more memory)",
                elem_id="decode-tiling",
            )
        with gr.Row():
            c["enhance_prompt"] = gr.Checkbox(
                False, label="Enhance the prompt with Gemma (real weights, GPU)", elem_id="enhance-prompt"
            )
            c["audio_max_duration"] = gr.Number(
                value=0, minimum=0, label="Audio max duration (s; 0: the whole clip)", elem_id="audio-max-duration"
            )
        notes = [QUANTIZATION_NOTES.get(q, q.value) for q in Quantization]
        notes += [RESIDENCY_NOTES.get(r.value, r.value) for r in Residency]
        notes += [f"{name} cannot run here: {reason}." for name, reason in defaults.unavailable.items()]
        gr.Markdown("\n".join(f"- {note}" for note in notes), elem_id="option-notes")
