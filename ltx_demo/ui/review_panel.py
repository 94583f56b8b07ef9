"""Section 3 of the page: the history of results, the selected result, Reuse / Reproduce / the other take, the A/B
comparison and the exports. Its GPU jobs run through jobs.run_job, in Generate's queue."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ltx_demo import ab_pair, results, review
from ltx_demo.types import GenerationResult, InvalidRequest
from ltx_demo.ui.form import form_from_request
from ltx_demo.ui.jobs import GPU_JOB, DemoController, EngineLike, refuse, run_job, session_of
from ltx_demo.ui.review_html import (
    ab_notes,
    compare_html,
    compare_message_html,
    history_items,
    reproduce_verdict,
    selected_html,
)

SCROLL_TO_FORM = "() => document.querySelector('#portrait').scrollIntoView({behavior: 'smooth', block: 'start'})"
EMPTY_HISTORY = "No results yet: every finished generation appears here, also after a restart."


def section_style(shown: bool) -> str:
    """Until there is a result the review section is not drawn: its empty placeholders made the page twice as tall."""
    return "" if shown else "<style>#review-section { display: none !important; }</style>"


class ReviewPanel:
    """The review section's controls and handlers; `build` lays it out, `wire` connects it to Generate and Cancel."""

    def __init__(self, engine: EngineLike, controller: DemoController) -> None:
        self.engine, self.controller = engine, controller

    # -- layout ----------------------------------------------------------------------------------------------------
    def build(self) -> None:
        gr.Markdown("### 3 · Review lip sync: history, A/B comparison, reproduce, export", elem_classes="section-title")
        self.empty_note = gr.Markdown(EMPTY_HISTORY, elem_id="review-empty")
        # Hidden by a style rule, not visible=False: gradio 6 does not show a Column again that started hidden.
        self.section_style = gr.HTML(section_style(bool(self.history_entries())), js_on_load=None, padding=False)
        with gr.Column(elem_id="review-section"):  # shown once there is a result
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=420):
                    self.history = gr.Gallery(
                        label="History: every finished generation, newest first (click one to load it)",
                        columns=3,
                        fit_columns=False,  # one result is one small thumbnail, not the whole panel
                        height=380,
                        allow_preview=False,
                        object_fit="contain",
                        interactive=False,
                        buttons=[],
                        elem_id="history",
                    )
                    with gr.Row():
                        self.history_note = gr.Markdown("", elem_id="history-note")
                        self.refresh_button = gr.Button("Refresh", size="sm", scale=0, elem_id="history-refresh")
                with gr.Column(scale=6, min_width=460):
                    self.selected_video = gr.Video(
                        label="Selected result", elem_id="selected-video", interactive=False, height=300
                    )
                    self.selected_panel = gr.HTML(selected_html(None), elem_id="selected-result", js_on_load=None)
                    with gr.Row():
                        self.reuse_button = gr.Button("Reuse settings", elem_id="reuse-settings", interactive=False)
                        self.reproduce_button = gr.Button(
                            "Reproduce into a new file", elem_id="reproduce", interactive=False
                        )
                        self.other_take_button = gr.Button(
                            "Compare with bf16 at the same seed",
                            variant="primary",
                            elem_id="compare-other",
                            interactive=False,
                        )
                        self.reference_take_button = gr.Button(
                            "Compare with the reference flow at the same seed",
                            elem_id="compare-reference",
                            interactive=False,
                        )
                    with gr.Row():
                        self.use_a_button = gr.Button("Use as A", size="sm", elem_id="use-as-a", interactive=False)
                        self.use_b_button = gr.Button("Use as B", size="sm", elem_id="use-as-b", interactive=False)
                    with gr.Accordion("Selected result: its parameters (the JSON sidecar)", open=False):
                        self.selected_parameters = gr.JSON(label="Parameters", elem_id="selected-parameters")
            with gr.Row(equal_height=True):
                self.pick_a = gr.Dropdown(
                    [], label="A: pick a result", allow_custom_value=True, scale=4, elem_id="pick-a"
                )
                self.pick_b = gr.Dropdown(
                    [], label="B: pick another", allow_custom_value=True, scale=4, elem_id="pick-b"
                )
                self.compare_button = gr.Button(
                    "Compare A/B", variant="primary", scale=1, elem_id="compare", interactive=False
                )
                self.export_button = gr.Button(
                    "Export A/B as one mp4", scale=1, elem_id="export-pair", interactive=False
                )
            self.compare_view = gr.HTML(
                '<div class="result-empty">Pick A and B (same frame count and rate) and press Compare: they play '
                "side by side on one timeline, with one audio track and the waveform under them.</div>",
                elem_id="ab-compare",
                js_on_load=None,
            )
            self.review_files = gr.File(
                label="Export: the selected result (mp4 + parameters JSON), or the A/B pair as one side-by-side mp4",
                file_count="multiple",
                interactive=False,
                elem_id="review-downloads",
            )
            self.selected_path = gr.Textbox(visible=False, elem_id="selected-path")
            self.reproduce_report = gr.JSON(visible=False)
        self.history_videos = gr.State([])

    @property
    def history_outputs(self) -> list:
        return [
            self.history,
            self.history_videos,
            self.pick_a,
            self.pick_b,
            self.history_note,
            self.section_style,
            self.empty_note,
        ]

    @property
    def selected_outputs(self) -> list:
        return [
            self.selected_path,
            self.selected_video,
            self.selected_parameters,
            self.selected_panel,
            self.review_files,
            self.other_take_button,
            self.reference_take_button,
            self.reuse_button,
            self.reproduce_button,
            self.use_a_button,
            self.use_b_button,
        ]

    # -- handlers --------------------------------------------------------------------------------------------------
    def history_entries(self) -> tuple[review.HistoryEntry, ...]:
        return review.scan_history(self.engine.output_dir)

    def entry_or_error(self, path: str | None) -> review.HistoryEntry:
        """Only results in the output folder's history are loaded, compared or re-run (paths come from the page)."""
        entry = review.find_entry(self.history_entries(), path)
        if entry is None:
            message = "click a result in the history first" if not path else f"{Path(path).name} is not a result"
            raise refuse(message, "No result selected")
        return entry

    def pin(self, request: gr.Request | None, view: str, *videos: Path) -> None:
        """What this tab's `view` shows is not pruned by --keep-outputs; what it showed before no longer held."""
        self.engine.pins.pin(session_of(request), view, *videos)

    def show_history(self, selected: str | None = None):
        """The gallery (newest first, the selected result highlighted), the clicked-item -> mp4 list, the A/B
        pickers' choices and a count."""
        found = self.history_entries()
        items, videos = history_items(found)
        choices = [(e.label(), str(e.video)) for e in found if str(e.video) in videos]
        note = f"{len(items)} result(s) in `{self.engine.output_dir}`" if items else EMPTY_HISTORY
        gallery = items
        if selected is not None:  # from the page: highlight what is selected (an API call gets the plain list)
            gallery = gr.update(value=items, selected_index=videos.index(selected) if selected in videos else None)
        return (
            gallery,
            videos,
            gr.update(choices=choices),
            gr.update(choices=choices),
            note,
            section_style(bool(items)),
            gr.update(visible=not items),
        )

    def history_api(self) -> list[dict]:
        """Every finished result in the output folder, newest first: key parameters, elapsed s, peak VRAM."""
        return [entry.summary() for entry in self.history_entries()]

    def load_result(self, path: str | None, request: gr.Request | None, verdict: str = ""):
        """The selected result: its video, parameters and facts, downloads, and what the one-click A/B runs."""
        entry = self.entry_or_error(path)
        self.pin(request, "selected", entry.video)
        other = review.other_quantization(entry.value("quantization"))
        flow = review.other_flow(entry.value("flow"))
        return (
            str(entry.video),
            str(entry.video),
            entry.params(),
            selected_html(entry, verdict),
            [str(entry.video), str(entry.sidecar)],
            gr.update(value=f"Compare with {other} at the same seed", interactive=True),
            gr.update(value=f"Compare with the {flow} flow at the same seed", interactive=True),
            *[gr.update(interactive=True)] * 4,  # reuse, reproduce, use as A, use as B: now there is a result
        )

    def select_history(self, videos: list[str], evt: gr.SelectData, request: gr.Request):
        index = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        in_range = isinstance(index, int) and 0 <= index < len(videos)
        return self.load_result(videos[index] if in_range else None, request)

    def select_new_result(self, result: GenerationResult | None, request: gr.Request):
        return self.load_result(result.output if result else None, request)

    def reuse_settings(self, path: str | None):
        """Fill every control from the selected result (its saved inputs, verified by hash), in the form's order."""
        entry = self.entry_or_error(path)
        try:
            again, notes = review.reproduce_request(entry)
        except InvalidRequest as exc:
            raise refuse(str(exc), "Cannot reuse these settings") from None
        for note in notes:
            gr.Warning(note)
        gr.Info(f"The form now holds the settings of {entry.video.name}: press Generate to run them.", title="Reused")
        return form_from_request(again, self.controller.negative_prompt)

    @staticmethod
    def pair_buttons(a_path: str | None, b_path: str | None):
        """Compare and Export act once A and B are both picked."""
        ready = bool(a_path) and bool(b_path)
        return gr.update(interactive=ready), gr.update(interactive=ready)

    def refuse_other_bundle(self, entry: review.HistoryEntry) -> None:
        mismatch = review.bundle_mismatch(entry, self.engine.bundle.describe())
        if mismatch:
            raise refuse(mismatch, "Cannot reproduce with this bundle")

    def reproduce(
        self,
        path: str | None,
        request: gr.Request,
    ):
        """Re-run a result from its saved inputs into a NEW file and say whether it decodes identically."""
        entry = self.entry_or_error(path)
        self.refuse_other_bundle(entry)
        try:
            again, notes = review.reproduce_request(entry)
        except InvalidRequest as exc:
            raise refuse(str(exc), "Cannot reproduce this result") from None
        result = run_job(self.controller, again, request)
        difference = ab_pair.decoded_difference(entry.video, result.output)
        verdict = reproduce_verdict(entry, result.output, difference, notes)
        report = {"original": str(entry.video), "output": result.output, **difference, "notes": notes}
        return (*self.load_result(result.output, request, verdict), report)

    def compare(self, a_path: str | None, b_path: str | None, request: gr.Request) -> str:
        """The A/B view for two results, or why they cannot share a timeline."""
        found = self.history_entries()
        a, b = review.find_entry(found, a_path), review.find_entry(found, b_path)
        if a is None or b is None:
            message = "pick two results from the history as A and B"
            gr.Warning(message)
            return compare_message_html(message)
        try:
            info_a, info_b = ab_pair.VideoInfo.probe(a.video), ab_pair.VideoInfo.probe(b.video)
        except InvalidRequest as exc:
            return compare_message_html(str(exc))
        reason = ab_pair.why_not_comparable(info_a, info_b)
        if reason:
            gr.Warning(reason, title="Cannot compare these two")
            return compare_message_html(reason)
        self.pin(request, "compare", a.video, b.video)
        peaks = ab_pair.waveform(a.video, info_a.duration)
        shown = (ab_pair.video_only(a.video), ab_pair.video_only(b.video))
        return compare_html(info_a, info_b, (a.short_label(), b.short_label()), peaks, ab_notes(a, b), shown)

    def other_take(
        self,
        path: str | None,
        request: gr.Request,
    ):
        """One click: the same request with the other weights (bf16 for a quantized take), then A/B them."""
        entry = self.entry_or_error(path)
        other = review.other_quantization(entry.value("quantization"))
        reason = self.engine.unavailable(other)
        if reason:
            raise refuse(f"{other} cannot run here: {reason}", "Cannot make the other take")
        return self._take_and_compare(entry, request, f"The {other} take", quantization=other)

    def reference_take(self, path: str | None, request: gr.Request):
        """One click: the same request through the reference flow (ltx-pipelines' A2VidPipelineTwoStage exactly), or
        through the fast flow for a reference result, then A/B them: what the speed-ups change, at the same seed."""
        entry = self.entry_or_error(path)
        overrides = review.flow_take_overrides(entry)
        return self._take_and_compare(entry, request, f"The {overrides['flow']} flow's take", **overrides)

    def _take_and_compare(self, entry: review.HistoryEntry, request: gr.Request, what: str, **overrides):
        """`entry` with `overrides` (reused from the history when it was made already), then the A/B view."""
        self.refuse_other_bundle(entry)
        existing = review.find_take(self.history_entries(), entry, **overrides)
        if existing is not None:
            gr.Info(f"{what} is already in the history ({existing.video.name}): comparing with it.")
            b_path = str(existing.video)
        else:
            try:
                again, _notes = review.reproduce_request(entry, **overrides)
            except InvalidRequest as exc:
                raise refuse(str(exc), "Cannot make the other take") from None
            b_path = run_job(self.controller, again, request).output
        return str(entry.video), b_path, self.compare(str(entry.video), b_path, request)

    def export_pair(self, a_path: str | None, b_path: str | None) -> list[str]:
        """A and B side by side in one mp4 (PyAV), with A's audio, in the output folder's exports/."""
        found = self.history_entries()
        a, b = review.find_entry(found, a_path), review.find_entry(found, b_path)
        if a is None or b is None:
            raise refuse("pick two results from the history as A and B", "Nothing to export")
        out = results.export_path(self.engine.output_dir, a.video, b.video)
        labels = (f"A · {a.short_label()}", f"B · {b.short_label()}")
        try:
            ab_pair.render_side_by_side(a.video, b.video, out, labels, ab_pair.pair_record(a, b))
        except InvalidRequest as exc:
            raise refuse(str(exc), "Cannot export this pair") from None
        return [str(out)]

    # -- events ----------------------------------------------------------------------------------------------------
    def wire(self, demo: gr.Blocks, run_event, result_state: gr.State, form_inputs: list, cancel_button: gr.Button):
        """The history refreshes after every run (and on page load); the review's jobs share Generate's GPU queue."""
        quiet = dict(show_progress="hidden", api_visibility="private")
        # The new result is selected first, so the refreshed history highlights it.
        selected = run_event.success(self.select_new_result, result_state, self.selected_outputs, **quiet)
        selected.then(self.show_history, self.selected_path, self.history_outputs, **quiet)
        demo.load(self.show_history, None, self.history_outputs, **quiet)
        refresh = self.refresh_button.click(
            self.show_history, None, self.history_outputs, api_name="history_view", api_visibility="undocumented"
        )
        refresh.then(self.show_history, self.selected_path, self.history_outputs, **quiet)  # the highlight again
        self.history.select(self.select_history, self.history_videos, self.selected_outputs, api_visibility="private")
        reuse_event = self.reuse_button.click(
            self.reuse_settings, self.selected_path, form_inputs, api_name="reuse_settings"
        )
        reuse_event.success(None, None, None, js=SCROLL_TO_FORM, api_visibility="private")  # where it changed
        reproduce_event = self.reproduce_button.click(
            self.reproduce,
            self.selected_path,
            [*self.selected_outputs, self.reproduce_report],
            api_name="reproduce",
            **GPU_JOB,
            show_progress="minimal",  # steps and ETA are on the progress line
        )
        reproduce_event.success(self.show_history, self.selected_path, self.history_outputs, **quiet)
        other_take_event = self.other_take_button.click(
            self.other_take,
            self.selected_path,
            [self.pick_a, self.pick_b, self.compare_view],
            api_name="compare_other_take",
            **GPU_JOB,
            show_progress="minimal",
        )
        other_take_event.success(self.show_history, self.selected_path, self.history_outputs, **quiet)
        reference_take_event = self.reference_take_button.click(
            self.reference_take,
            self.selected_path,
            [self.pick_a, self.pick_b, self.compare_view],
            api_name="compare_reference_flow",
            **GPU_JOB,
            show_progress="minimal",
        )
        reference_take_event.success(self.show_history, self.selected_path, self.history_outputs, **quiet)
        self.use_a_button.click(
            lambda path: path, self.selected_path, self.pick_a, queue=False, api_visibility="private"
        )
        self.use_b_button.click(
            lambda path: path, self.selected_path, self.pick_b, queue=False, api_visibility="private"
        )
        gr.on(
            [self.pick_a.change, self.pick_b.change],
            self.pair_buttons,
            [self.pick_a, self.pick_b],
            [self.compare_button, self.export_button],
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )
        self.compare_button.click(
            self.compare, [self.pick_a, self.pick_b], self.compare_view, api_name="compare", concurrency_limit=4
        )
        self.export_button.click(
            self.export_pair, [self.pick_a, self.pick_b], self.review_files, api_name="export_pair", concurrency_limit=2
        )
        # Cancel also drops a queued review job (the running one is stopped by the controller, per session).
        cancel_button.click(
            None, None, None, cancels=[reproduce_event, other_take_event, reference_take_event], queue=False
        )
        gr.api(self.history_api, api_name="history")
