"""Start the LTX-2 audio-to-video demo in a browser: flags -> bundle -> engine -> UI -> one GPU queue -> launch.

`python app.py` serves 127.0.0.1:7860 on the embedded tiny synthetic bundle; pass --bundle or the four path flags
for LTX-2.3. This is the only place where the engine (torch, ltx_*) and the UI (ltx_demo.ui) meet.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ltx_demo.cli import DEFAULT_PROMPT, add_bundle_flags, resolve_from_args

if TYPE_CHECKING:
    import gradio as gr

    from ltx_demo.engine import Engine

logger = logging.getLogger("ltx_demo.app")
ASSETS = Path(__file__).resolve().parent / "assets"
QUEUE_MAX_SIZE = 32  # people waiting for the one GPU; more are turned away with "queue full"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
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
    return parser


def create_app(args: argparse.Namespace) -> tuple[Engine, gr.Blocks]:
    """Build the engine from the bundle flags and the UI around it, with the queue configured."""
    from ltx_demo import ui
    from ltx_demo.engine import Engine
    from ltx_demo.pipeline import default_negative_prompt

    bundle = resolve_from_args(args)
    engine = Engine(bundle, Path(args.output_dir), args.device)
    logger.info("engine on %s, bundle %s", engine.device, bundle.describe())
    demo = ui.build_demo(
        engine,
        negative_prompt=default_negative_prompt(),
        presets_path=ASSETS / "presets.json",
        default_prompt=DEFAULT_PROMPT,
        preload=args.preload,
    )
    # The GPU event itself has concurrency_limit=1 (ui.py); the queue shows everyone else their position.
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    return engine, demo


def launch(demo: gr.Blocks, args: argparse.Namespace, *, block: bool = True) -> None:
    from ltx_demo import ui

    if args.share:
        logger.warning(
            "--share: this app is now reachable by anyone with the public link, and can run jobs on this "
            "machine's GPU; stop it when the demo is over"
        )
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[str(ASSETS), str(Path(args.output_dir).resolve())],
        prevent_thread_lock=not block,
        quiet=not args.debug,
        footer_links=["api", "settings"],
        **ui.launch_options(),
    )


def main(argv: list[str] | None = None) -> int:
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
        _, demo = create_app(args)
    except (BundleError, InvalidRequest) as exc:
        logger.error("cannot start: %s", exc)
        return 2
    logger.info("serving on http://%s:%d", args.host, args.port)
    launch(demo, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
