"""The command line's flags: the parser of `python -m ltx_demo`, its defaults, and the request, bundle and engine they
describe (the app's flags reuse the bundle group)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ltx_demo.checkpoints import cache_dir
from ltx_demo.requests import FRAME_RATES, GUIDANCE_SPLITS
from ltx_demo.types import (
    PROMPT_CACHE_ENTRIES,
    AttentionBackend,
    CompileBlocks,
    CudaGraphs,
    DecodeTiling,
    Flow,
    ImageFit,
    LoraMode,
    Parallel,
    Quantization,
    Residency,
    TextEncoderQuantization,
    TextModels,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_IMAGE = ASSETS / "astronaut.png"
DEFAULT_AUDIO = ASSETS / "speech_hello.wav"
DEFAULT_OUTPUT_DIR = Path("outputs")
DEFAULT_PROMPT = (
    "A woman in a white space suit speaks calmly to the camera, natural head movement and lip motion, "
    "soft studio light, static medium close-up shot."
)

logger = logging.getLogger("ltx_demo")


def add_bundle_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model bundle (default: the embedded tiny synthetic bundle)")
    group.add_argument("--bundle", help="a bundle folder with bundle.json (see make-bundle)")
    group.add_argument("--checkpoint-path", help="LTX-2.3 checkpoint .safetensors (real, unmanifested bundle)")
    group.add_argument("--distilled-lora-path", help="distilled LoRA .safetensors")
    group.add_argument("--spatial-upsampler-path", help="spatial upsampler x2 .safetensors")
    group.add_argument("--gemma-root", help="Gemma-3 text encoder folder")
    group.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="where results are written")
    group.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if available)")
    group.add_argument(
        "--compute-dtype",
        choices=list(COMPUTE_DTYPES),
        default=None,
        help="default: bf16 on CUDA, float32 on CPU (bf16 convolutions are slow there); the reference flow matches "
        "ltx-pipelines bit for bit only in bf16, its dtype",
    )
    group.add_argument(
        "--cuda-graphs",
        nargs="?",
        const=CudaGraphs.ON.value,
        default=CudaGraphs.AUTO.value,
        choices=[c.value for c in CudaGraphs],
        help="replay the transformer blocks as CUDA graphs: less host time per step, ~1.3 GiB more held; auto: on "
        "in persistent mode on CUDA (per-request modes would capture again for every request); a bare --cuda-graphs "
        "means on",
    )
    group.add_argument(
        "--attention",
        default=AttentionBackend.AUTO.value,
        choices=[a.value for a in AttentionBackend],
        help="the fast flow's attention kernel: ltx-core's (sdpa, xformers, flash-attention-3) or PyTorch SDPA with "
        f"one backend first; auto: {attention_auto_help()}",
    )
    group.add_argument(
        "--compile-blocks",
        nargs="?",
        const=CompileBlocks.ON.value,
        default=CompileBlocks.AUTO.value,
        choices=[c.value for c in CompileBlocks],
        help="torch.compile the transformer blocks (Inductor fuses their norms, modulation and RoPE; the first "
        "request compiles: about 45 s at full scale on an H200, kept in the cache folder for later starts); auto: "
        "on for persistent residency on CUDA; on: anywhere, CPU too; a bare --compile-blocks means on",
    )
    group.add_argument(
        "--inductor-deterministic",
        action="store_true",
        help="compiled blocks: Inductor's deterministic mode (no kernel configs picked by timing), so a restarted "
        "server compiles the same kernels and renders the same frames; torch >= 2.10; its speed is being measured",
    )
    group.add_argument(
        "--prompt-cache",
        type=int,
        default=PROMPT_CACHE_ENTRIES,
        metavar="TEXTS",
        help="keep the contexts of this many recent texts on the host: a prompt asked again (and the default "
        "negative prompt) skips Gemma and the embeddings processor, and their builds in per-request residency modes; "
        "the video is the same bit for bit; 0: encode every text",
    )
    group.add_argument(
        "--text-models",
        default=TextModels.AUTO.value,
        choices=[t.value for t in TextModels],
        help="persistent residency: where nf4 Gemma and the fp8 embeddings processor wait between prompts; on-host: "
        "in (pinned) host memory as built, uploaded only for a text the prompt cache lacks, so the device holds "
        "about 10 GB less for LTX-2.3 during the stages; auto: on-host on CUDA while the prompt cache is on, "
        "else on-device",
    )
    group.add_argument(
        "--cold-start-cache-dir",
        default=str(cache_dir() / "cold-start"),
        help="cold-start and persistent keep the models whose build costs more than their size here, as built (fp8 "
        "transformer, nf4 Gemma, fp8 embeddings processor: ~33 GB for LTX-2.3), and read them instead of the bf16 "
        "files on later requests (cold-start) and after a restart (persistent); 'off': build from the bundle every "
        "time",
    )


def add_gpus_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--gpus", default=None, help=what)


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="the portrait (PNG, JPEG, WebP)")
    parser.add_argument(
        "--image-fit",
        choices=[f.value for f in ImageFit],
        default=ImageFit.CROP.value,
        help="crop fills the frame; pad keeps the whole photo",
    )
    parser.add_argument("--audio", default=str(DEFAULT_AUDIO), help="the voice (WAV, MP3, FLAC, OGG, M4A)")
    parser.add_argument("--audio-start", type=float, default=0.0, help="seconds into the audio clip")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the person, the scene and the camera")
    parser.add_argument("--negative-prompt", default=None, help="default: ltx-pipelines' negative prompt")
    parser.add_argument("--width", type=int, default=768, help="a multiple of 64")
    parser.add_argument("--height", type=int, default=512, help="a multiple of 64")
    parser.add_argument("--num-frames", type=int, default=97, help="8k+1")
    parser.add_argument("--frame-rate", type=int, choices=FRAME_RATES, default=24, help="fps")
    parser.add_argument("--steps", type=int, default=30, help="stage-1 denoising steps")
    parser.add_argument("--seed", type=int, default=42, help="the same seed gives the same video")
    parser.add_argument(
        "--quantization",
        "--transformer-quantization",
        dest="quantization",
        choices=[q.value for q in Quantization],
        default=None,
        help="transformer weights (default: fp8-scaled-mm on Ada/Hopper GPUs, fp8-cast elsewhere and for the "
        "reference flow)",
    )
    parser.add_argument(
        "--residency",
        choices=[r.value for r in Residency],
        default=Residency.PERSISTENT.value,
        help="auto: the fastest mode whose peak fits --vram-budget-gib",
    )
    parser.add_argument(
        "--vram-budget-gib", type=float, default=None, help="for --residency auto (default: the device's free memory)"
    )
    parser.add_argument(
        "--text-encoder-quantization",
        choices=[q.value for q in TextEncoderQuantization],
        default=None,
        help="default: nf4 on CUDA, bf16 elsewhere (nf4 needs CUDA)",
    )
    parser.add_argument(
        "--lora-mode",
        choices=[m.value for m in LoraMode],
        default=LoraMode.ADAPTER.value,
        help="adapter: one transformer, LoRA at runtime in stage 2; fused: a second copy",
    )
    parser.add_argument("--distilled-lora-strength", type=float, default=1.0, help="stage 2's distilled LoRA")
    parser.add_argument(
        "--no-batch-guidance",
        dest="batch_guidance",
        action="store_false",
        help="run stage 1's guidance passes one after another (ltx-pipelines' way) instead of as one batch",
    )
    parser.add_argument(
        "--guidance-split",
        type=int,
        choices=list(GUIDANCE_SPLITS),
        default=None,
        help="stage 1's guidance passes in this many batched calls per step, one after another on this process: the "
        "same grouping --parallel guidance runs one group per rank, with the same frames (default: 1, one call)",
    )
    parser.add_argument(
        "--flow",
        choices=[f.value for f in Flow],
        default=Flow.FAST.value,
        help="reference: ltx-pipelines' A2VidPipelineTwoStage exactly (bf16 Gemma and processor, LoRA fused by "
        "ltx-core into a second transformer, unbatched guidance, its audio and image reading); overrides "
        "--lora-mode, --text-encoder-quantization and --no-batch-guidance (default: %(default)s)",
    )
    parser.add_argument(
        "--enhance-prompt",
        action="store_true",
        help="Gemma rewrites the prompt from it and the portrait first (ltx-pipelines' enhancer; keeps all of Gemma)",
    )
    parser.add_argument(
        "--audio-max-duration", type=float, default=None, help="seconds of audio used from --audio-start; the rest of "
        "the clip is silence (default: the clip's duration)"
    )  # fmt: skip
    parser.add_argument(
        "--decode-tiling",
        choices=[t.value for t in DecodeTiling],
        default=DecodeTiling.DEFAULT.value,
        help="default: ltx-core's tiles (512 px, 64 frames); frame: one spatial tile the frame's size, 64-frame tiles; "
        "off: decode in one pass (more memory)",
    )
    parser.add_argument("--decode-tile-pixels", type=int, default=None, help="spatial tile size (default: 512)")
    parser.add_argument("--decode-tile-frames", type=int, default=None, help="temporal tile length (default: 64)")
    parser.add_argument(
        "--whole-audio",
        action="store_true",
        help="a video as long as the audio from --audio-start (windows when longer than one; overrides --num-frames)",
    )
    parser.add_argument(
        "--window-frames", type=int, default=None, help="most frames per window, 8k+1 (default: the frame cap, 257)"
    )
    parser.add_argument(
        "--window-overlap-frames", type=int, default=16, help="frames each window continues from (a multiple of 8)"
    )
    parser.add_argument("--max-video-seconds", type=float, default=60.0, help="the longest video a request may ask")
    parser.add_argument("--output", default=None, help="mp4 path (default: a new file in --output-dir)")


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help says each flag's default, except where there is none to say (None, a switch) or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in help_text:
            return help_text
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ltx_demo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="log more and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    generate = sub.add_parser(
        "generate",
        help="one generation; prints one JSON object (progress on stderr)",
        description="One generation: the JSON summary on stdout, one line per phase (and per step) on stderr.",
        formatter_class=HelpWithDefaults,
    )
    add_bundle_flags(generate)
    add_generation_flags(generate)
    generate.add_argument(
        "--parallel",
        choices=[p.value for p in Parallel],
        default=None,
        help="guidance: stage 1's guidance passes split across the --gpus processes (2 or 4; NCCL on GPUs, gloo on "
        "cpu:N), the same frames as --guidance-split N on one process; rank 0 writes the result",
    )
    add_gpus_flag(generate, "with --parallel: the processes, one per GPU ('0,1', 'all') or 'cpu:2' (CPU, gloo)")
    generate.add_argument(
        "--warm-runs",
        type=int,
        default=0,
        help="run the request this many times first (models built, kernels warm; their results are saved too): the "
        "printed summary is the run after them (benchmarks)",
    )
    make = sub.add_parser("make-bundle", help="write a synthetic bundle in the real LTX-2 formats")
    make.add_argument("--scale", choices=["tiny", "full"], default="tiny")
    make.add_argument("--out", required=True)
    make.add_argument("--seed", type=int, default=0)
    check = sub.add_parser("check-bundle", help="validate a bundle's keys, shapes and metadata without running it")
    add_bundle_flags(check)
    bench = sub.add_parser("bench", help="time and measure configurations x runs; writes results JSON")
    add_bundle_flags(bench)
    bench.add_argument("--resolutions", default="768x512,1024x768,1280x768")
    bench.add_argument("--num-frames", type=int, default=97)
    bench.add_argument("--steps", type=int, default=30)
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument(
        "--quantization", default="default", help="comma-separated; default: what a request naming none runs here"
    )
    bench.add_argument("--residency", default="persistent", help="comma-separated")
    bench.add_argument("--seed", type=int, default=42)
    bench.add_argument("--batch-guidance", default="on", help="on, off or on,off (stage-1 guidance passes batched)")
    bench.add_argument("--image", default=str(DEFAULT_IMAGE))
    bench.add_argument("--audio", default=str(DEFAULT_AUDIO))
    bench.add_argument("--prompt", default=DEFAULT_PROMPT)
    bench.add_argument("--drop-page-cache", action="store_true", help="before each cold-start run (needs root)")
    bench.add_argument(
        "--decode-tiling", choices=[t.value for t in DecodeTiling], default=DecodeTiling.DEFAULT.value,
        help="the VAE decoder's tiles (generate --help)",
    )  # fmt: skip
    bench.add_argument(
        "--baseline",
        choices=["stock", "none"],
        default="stock",
        help="stock: also time ltx-pipelines' A2VidPipelineTwoStage (fp8_cast) at each shape, in this run",
    )
    bench.add_argument("--baseline-runs", type=int, default=2, help="stock pipeline calls per shape")
    bench.add_argument("--out", required=True)
    roofline = sub.add_parser("roofline", help="FLOPs of stage 1, stage 2 and the decode at one shape (JSON)")
    add_bundle_flags(roofline)
    roofline.add_argument("--width", type=int, default=768)
    roofline.add_argument("--height", type=int, default=512)
    roofline.add_argument("--num-frames", type=int, default=97)
    roofline.add_argument("--out", required=True)
    forward = sub.add_parser("forward-bench", help="one transformer forward per shape x quantization vs bf16")
    add_bundle_flags(forward)
    forward.add_argument(
        "--shapes",
        default="384x256x97,384x256x97/4,512x384x97,768x512x97",
        help="stage pixel shapes WxHxF[/passes]: 1248, 4x1248, 2496 and 4992 video tokens by default",
    )
    forward.add_argument("--quantization", default="bf16,fp8-cast,fp8-scaled-mm", help="comma-separated")
    forward.add_argument(
        "--attentions", default="sdpa", help="comma-separated attention backends, each timed (see --attention)"
    )
    forward.add_argument("--profile", action="store_true", help="record where each forward's GPU time goes")
    forward.add_argument("--warmup", type=int, default=2)
    forward.add_argument("--repeats", type=int, default=5)
    forward.add_argument("--out", required=True)
    fidelity = sub.add_parser(
        "fidelity",
        help="each speed-up against the reference flow: latent error, PSNR, seconds saved; writes JSON and Markdown",
        description="Each speed-up of the fast flow on its own inside the reference flow, and the default as a whole, "
        "against the reference flow (== A2VidPipelineTwoStage) on the same inputs and seed. Computes in bf16 unless "
        "--compute-dtype says otherwise; --cuda-graphs applies to the default row (a row of its own measures graphs).",
        formatter_class=HelpWithDefaults,
    )
    add_bundle_flags(fidelity)
    fidelity.add_argument("--width", type=int, default=768, help="a multiple of 64")
    fidelity.add_argument("--height", type=int, default=512, help="a multiple of 64")
    fidelity.add_argument("--num-frames", type=int, default=97, help="8k+1")
    fidelity.add_argument("--steps", type=int, default=30, help="stage-1 denoising steps")
    fidelity.add_argument("--seed", type=int, default=42)
    fidelity.add_argument("--quantization", choices=["fp8-cast", "bf16"], default="fp8-cast", help="the reference's")
    fidelity.add_argument("--image", default=str(DEFAULT_IMAGE))
    fidelity.add_argument("--audio", default=str(DEFAULT_AUDIO))
    fidelity.add_argument("--prompt", default=DEFAULT_PROMPT)
    fidelity.add_argument("--timed-runs", type=int, default=1, help="timed runs after the warm one (the fastest)")
    fidelity.add_argument("--only", default=None, help="comma-separated row keys (default: every row)")
    fidelity.add_argument("--out", default="docs/fidelity.json")
    fidelity.add_argument("--markdown", default="docs/fidelity.md")
    report = sub.add_parser("bench-report", help="merge bench results into docs/benchmarks.json and render .md")
    report.add_argument("results", nargs="+")
    report.add_argument("--into", default="docs/benchmarks.json")
    report.add_argument("--markdown", default="docs/benchmarks.md")
    return parser


def request_from_args(args: argparse.Namespace):
    """The typed request the generation flags describe (requests.py; the engine checks it before it runs)."""
    from ltx_demo.requests import parse_request

    fields = dict(
        image_path=args.image,
        audio_path=args.audio,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        num_frames=args.num_frames,
        frame_rate=args.frame_rate,
        steps=args.steps,
        seed=args.seed,
        quantization=args.quantization,
        residency=args.residency,
        audio_start=args.audio_start,
        image_fit=args.image_fit,
        distilled_lora_strength=args.distilled_lora_strength,
        batch_guidance=args.batch_guidance,
        guidance_split=args.guidance_split or 1,
        output_path=args.output,
        text_encoder_quantization=args.text_encoder_quantization,
        lora_mode=args.lora_mode,
        vram_budget_gib=args.vram_budget_gib,
        flow=args.flow,
        enhance_prompt=args.enhance_prompt,
        audio_max_duration=args.audio_max_duration,
        decode_tiling=args.decode_tiling,
        decode_tile_pixels=args.decode_tile_pixels,
        decode_tile_frames=args.decode_tile_frames,
        window_frames=args.window_frames,
        window_overlap_frames=args.window_overlap_frames,
        max_video_seconds=args.max_video_seconds,
    )
    if args.whole_audio:  # the video as long as the audio: frames_for_audio, in windows when longer than one
        from ltx_demo import media
        from ltx_demo.requests import window_frames_for

        seconds = media.audio_duration(args.audio) - args.audio_start
        window = window_frames_for(parse_request(fields))
        fields["num_frames"] = media.frames_for_audio(seconds, args.frame_rate, window)
    return parse_request(fields)


def resolve_from_args(args: argparse.Namespace):
    from ltx_demo.checkpoints import resolve_bundle

    return resolve_bundle(
        args.bundle, args.checkpoint_path, args.distilled_lora_path, args.spatial_upsampler_path, args.gemma_root
    )


COMPUTE_DTYPES = {"bf16": "bfloat16", "float32": "float32"}  # flag value -> torch dtype name


def compute_dtype(flag: str):
    import torch

    return getattr(torch, COMPUTE_DTYPES[flag])


def engine_from_args(args: argparse.Namespace, **options):
    """The engine the bundle flags describe (the CLI's and the app's); `options` go to Engine as they are."""
    from ltx_demo.engine import Engine

    folder = args.cold_start_cache_dir
    if args.inductor_deterministic:
        from ltx_demo.compiled_blocks import use_deterministic_kernels

        use_deterministic_kernels()
    if args.compute_dtype is not None:
        options.setdefault("compute_dtype", compute_dtype(args.compute_dtype))
    return Engine(
        resolve_from_args(args),
        Path(args.output_dir),
        args.device,
        cuda_graphs=CudaGraphs(args.cuda_graphs),
        cold_start_cache_dir=None if folder.lower() == "off" else Path(folder).expanduser(),
        attention=AttentionBackend(args.attention),
        compile_blocks=CompileBlocks(args.compile_blocks),
        prompt_cache_entries=args.prompt_cache,
        text_models=TextModels(args.text_models),
        **options,
    )


def attention_auto_help() -> str:
    from ltx_demo.attention import AUTO_ON_CUDA

    return f"{AUTO_ON_CUDA.value} on CUDA, sdpa elsewhere"
