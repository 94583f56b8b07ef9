"""Start the LTX-2 audio-to-video demo in a browser: flags -> bundle -> engine -> UI -> one GPU queue -> launch.

`python app.py` serves 127.0.0.1:7860 on the embedded tiny synthetic bundle; pass --bundle or the four path flags
for LTX-2.3. This is the only place where the engine (torch, ltx_*) and the UI (ltx_demo.ui) meet, and where what the
server exposes is decided: the address, the login, which files it may serve, and how big an upload may be.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ltx_demo.cli_flags import DEFAULT_PROMPT, add_bundle_flags, add_gpus_flag, engine_from_args

if TYPE_CHECKING:
    import gradio as gr

    from ltx_demo.engine import Engine

logger = logging.getLogger("ltx_demo.app")
ASSETS = Path(__file__).resolve().parent / "assets"
QUEUE_MAX_SIZE = 32  # people waiting for the one GPU; more are turned away with "queue full"
AUTH_ENV = "LTX_DEMO_AUTH"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRADIO_CACHE_CLEANUP = (3600, 86400)  # every hour, drop Gradio's copies of uploads and results older than a day


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """'user:pass' (or several, comma-separated) -> Gradio's auth list; None for no login."""
    if not value:
        return None
    pairs = []
    for item in value.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--auth / ${AUTH_ENV}: expected user:password (several: comma-separated), got {item!r}")
        pairs.append((user, password))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--auth",
        default=None,
        help=f"user:password required to open the app or its API (or set ${AUTH_ENV}); use it whenever --host or "
        "--share exposes the app",
    )
    parser.add_argument(
        "--keep-outputs",
        default="20GB",
        help="prune the oldest results in --output-dir past a cap: a count (200), a total size (20GB), an age (7d), "
        "comma-separated to combine, or 'all' to keep everything; the result just made is never pruned",
    )
    parser.add_argument("--max-upload-mb", type=int, default=200, help="largest portrait or audio upload accepted")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a public *.gradio.live link: anyone with it can use this machine's GPU",
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="build every model at start (persistent mode), so the first request pays no load",
    )
    parser.add_argument("--debug", action="store_true", help="log more")
    add_bundle_flags(parser)
    add_gpus_flag(
        parser,
        "one engine process (worker) per GPU: 'all', '0,1', or 'cpu:N' for N CPU workers; as many jobs run at once "
        "as there are workers, the other visitors see their queue position (default: one engine in this process)",
    )
    return parser


def create_app(args: argparse.Namespace) -> tuple[Engine, gr.Blocks]:
    """Build the engine from the bundle flags and the UI around it, with the queue configured."""
    from ltx_demo import ui
    from ltx_demo.pipeline import default_negative_prompt
    from ltx_demo.results import KeepPolicy, prune
    from ltx_demo.types import InvalidRequest

    try:
        keep = KeepPolicy.parse(args.keep_outputs)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    engine = engine_for(args, keep)
    logger.info("engine on %s, bundle %s", engine.device, engine.bundle.describe())
    logger.info("output folder %s: %s", Path(args.output_dir).resolve(), keep.describe())
    if not keep.unlimited:
        prune(Path(args.output_dir), keep)
    demo = ui.build_demo(
        engine,
        negative_prompt=default_negative_prompt(),
        presets_path=ASSETS / "presets.json",
        default_prompt=DEFAULT_PROMPT,
        preload=args.preload,
    )
    # The GPU events run as many at once as there are engines (ui/jobs.py GPU_JOB takes this default); the queue shows
    # everyone else their position.
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=getattr(engine, "workers", 1))
    demo.delete_cache = GRADIO_CACHE_CLEANUP  # read at launch: Gradio's own copies must not fill the disk either
    return engine, demo


def engine_for(args: argparse.Namespace, keep):
    """One Engine in this process (no --gpus, or one device), or a WorkerPool of one engine process per device."""
    if not args.gpus:
        return engine_from_args(args, keep_outputs=keep)
    from ltx_demo.devices import ProcessDevices, visible_gpu_ids
    from ltx_demo.types import InvalidRequest

    try:
        devices = ProcessDevices.parse(args.gpus)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if devices.count == 1:  # the one-engine path, on that device
        visible = visible_gpu_ids()
        gpu = devices.gpus[0] if devices.cuda else None
        args.device = "cpu" if gpu is None else f"cuda:{visible.index(gpu) if gpu in visible else gpu}"
        return engine_from_args(args, keep_outputs=keep)
    from ltx_demo.cli_flags import resolve_from_args
    from ltx_demo.workers import WorkerPool

    return WorkerPool(args, devices, resolve_from_args(args), keep)


def file_access(args: argparse.Namespace, engine: Engine | None) -> tuple[list[str], list[str]]:
    """(allowed_paths, blocked_paths) for launch. Gradio serves its own upload/cache folder and these allowed folders
    only: the output folder (results, their inputs and thumbnails). The model files are blocked outright, even if an
    output folder was put next to them."""
    allowed = [str(Path(args.output_dir).resolve())]
    if engine is None:
        return allowed, []
    bundle = engine.bundle
    models = (bundle.root, bundle.checkpoint, bundle.distilled_lora, bundle.spatial_upsampler, bundle.gemma_root)
    return allowed, sorted({str(Path(p).resolve()) for p in models if p})


def quiet_library_warnings() -> None:
    """Gradio 6 reads starlette's HTTP_422_UNPROCESSABLE_ENTITY, which starlette (1.x here) deprecates with a warning on
    every request that reads it (hundreds per session): filtered by that message alone, so any other warning shows."""
    import warnings

    from starlette.exceptions import StarletteDeprecationWarning

    warnings.filterwarnings(
        "ignore", message="'HTTP_422_UNPROCESSABLE_ENTITY' is deprecated", category=StarletteDeprecationWarning
    )


def launch(demo: gr.Blocks, args: argparse.Namespace, *, block: bool = True, engine: Engine | None = None) -> None:
    """Serve `demo` as the flags say; `engine` (from create_app) names the model files to block from serving."""
    from ltx_demo import ui

    auth = parse_auth(args.auth or os.environ.get(AUTH_ENV))
    if args.share:
        logger.warning(
            "--share: this app is now reachable by anyone with the public link, and can run jobs on this "
            "machine's GPU%s; stop it when the demo is over",
            "" if auth else " (and there is no --auth: anyone with the link needs no password)",
        )
    if args.host not in LOOPBACK and not auth:
        logger.warning("--host %s without --auth: anyone who can reach this machine can use the app", args.host)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    quiet_library_warnings()
    allowed, blocked = file_access(args, engine)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        allowed_paths=allowed,
        blocked_paths=blocked,
        max_file_size=f"{args.max_upload_mb}mb",
        prevent_thread_lock=not block,
        quiet=not args.debug,
        footer_links=["api", "settings"],
        **ui.launch_options(),
    )


def main(argv: list[str] | None = None) -> int:
    from ltx_demo.devices import disable_nvlink_multicast

    disable_nvlink_multicast()  # in this process and so in every one it starts
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        for noisy in ("httpx", "urllib3", "ltx_core", "ltx_pipelines", "transformers"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from ltx_demo.checkpoints import BundleError
    from ltx_demo.types import InvalidRequest

    try:
        parse_auth(args.auth or os.environ.get(AUTH_ENV))
        engine, demo = create_app(args)
    except (BundleError, InvalidRequest, ValueError) as exc:
        logger.error("cannot start: %s", exc)
        return 2
    logger.info("serving on http://%s:%d", args.host, args.port)
    launch(demo, args, engine=engine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
