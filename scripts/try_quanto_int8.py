"""Issue 13, point 6: does optimum-quanto's int8 run on the LTX-2 stage transformer, end to end? (CPU, tiny bundle)

    pip install optimum-quanto          # not a project dependency; uninstall afterwards
    python scripts/try_quanto_int8.py [--bundle DIR] [--quantization bf16|fp8-cast] [--residency persistent|cold-start]

Generations through Engine.generate, 64x64x9, 2 steps, seed 42, same inputs: the plain one (--quantization, float32
compute on CPU), two for scale (seed 43; fp8-cast), then the same request with the stage transformer quantized right
after each build, through ModelManager.on_built (nothing in the library is patched): `quantize(
transformer.velocity_model, weights=qint8)` then `freeze(...)`, once as the seed article did (fails: the preprocessors
keep the original Linears, whose weights quanto sets to None) and once with quanto's `exclude=` naming the submodules
the preprocessors alias (runs). Prints the versions, the outcome (the full traceback on failure; PSNR of the decoded
frames vs the plain run and the times on success), and one JSON line. docs/fidelity-int8.md records the result.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from importlib.metadata import version
from pathlib import Path

import torch

from ltx_demo.checkpoints import Bundle, embedded_bundle
from ltx_demo.engine import Engine
from ltx_demo.fidelity import psnr
from ltx_demo.types import GenerationRequest, Quantization, Residency

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TRANSFORMERS = ("transformer", "transformer_stage_2")


def decoded(path: str) -> torch.Tensor:
    import av

    with av.open(path) as container:
        return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)])


def aliased_modules(velocity: torch.nn.Module) -> list[str]:
    """Names of LTXModel's submodules that its args preprocessors (plain objects, not nn.Modules, built in
    LTXModel._init_preprocessors) also hold by reference: patchify_proj, adaln_single, caption_projection, ..."""
    names = {id(m): n for n, m in velocity.named_modules()}
    found: set[str] = set()

    def walk(holder) -> None:  # MultiModalTransformerArgsPreprocessor wraps a TransformerArgsPreprocessor
        for held in vars(holder).values():
            if isinstance(held, torch.nn.Module):
                if id(held) in names:
                    found.add(names[id(held)])
            elif type(held).__name__.endswith("Preprocessor"):
                walk(held)

    for attribute in ("video_args_preprocessor", "audio_args_preprocessor"):
        if (preprocessor := getattr(velocity, attribute, None)) is not None:
            walk(preprocessor)
    return sorted(found)


def first_linear(velocity: torch.nn.Module) -> torch.nn.Module:
    """The Linear the forward calls first (LTXModel.forward -> video_args_preprocessor.prepare -> patchify_proj)."""
    preprocessor = velocity.video_args_preprocessor
    return getattr(preprocessor, "simple_preprocessor", preprocessor).patchify_proj


def phases(result) -> dict[str, float]:
    return {p.name: round(p.seconds, 3) for p in result.phases}


def quantize_int8(name: str, model: torch.nn.Module, log: list, exclude_aliased: bool) -> None:
    """on_built listener: int8 weights for the stage transformer's LTXModel, as the seed article did (or, with
    exclude_aliased, everything but the submodules the preprocessors alias: quanto's own `exclude=` argument)."""
    if name not in TRANSFORMERS:
        return
    from optimum.quanto import freeze, qint8, quantize

    velocity = model.velocity_model
    linears = sum(isinstance(m, torch.nn.Linear) for m in velocity.modules())
    aliased = aliased_modules(velocity)
    exclude = [pattern for n in aliased for pattern in (n, n + ".*")] if exclude_aliased else None
    quantize(velocity, weights=qint8, exclude=exclude)
    freeze(velocity)
    qlinears = [m for m in velocity.modules() if type(m).__name__ == "QLinear"]
    held = first_linear(velocity)
    log.append({
        "model": name, "linears": linears, "qlinears": len(qlinears), "excluded": aliased if exclude_aliased else [],
        "weight_type": type(qlinears[0].weight).__name__ if qlinears else None,
        "preprocessor_patchify_proj": f"{type(held).__name__}, is velocity.patchify_proj: "
        f"{held is velocity.patchify_proj}, weight None: {held.weight is None}",
    })  # fmt: skip
    print(f"quantized {name}: {len(qlinears)}/{linears} Linear -> QLinear ({log[-1]['weight_type']}); "
          f"preprocessors alias {aliased}; video_args_preprocessor.patchify_proj: "
          f"{log[-1]['preprocessor_patchify_proj']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the embedded tiny bundle)")
    parser.add_argument("--quantization", default=Quantization.BF16.value, choices=[q.value for q in Quantization])
    parser.add_argument("--residency", default=Residency.PERSISTENT.value,
                        choices=[Residency.PERSISTENT.value, Residency.COLD_START.value])  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu (the brief: tiny bundle on CPU) or cuda")
    args = parser.parse_args()
    import optimum.quanto  # noqa: F401  (fail early if it is not installed)

    versions = {name: version(name) for name in ("torch", "optimum-quanto", "ltx-core", "ltx-pipelines")}
    versions["python"] = platform.python_version()
    print("versions:", versions)
    bundle = Bundle.from_dir(Path(args.bundle)) if args.bundle else embedded_bundle()
    out = Path(tempfile.mkdtemp(prefix="quanto-int8-"))

    def request(name: str, seed: int = 42, quantization: str = args.quantization) -> GenerationRequest:
        return GenerationRequest(
            image_path=str(ASSETS / "astronaut.png"), audio_path=str(ASSETS / "speech_hello.wav"),
            prompt="A woman speaks to the camera.", width=64, height=64, num_frames=9, steps=2, seed=seed,
            quantization=Quantization(quantization), residency=Residency(args.residency),
            output_path=str(out / f"{name}.mp4"),
        )  # fmt: skip

    report: dict = {"versions": versions, "device": args.device, "quantization": args.quantization}
    report["residency"] = args.residency
    plain_engine = Engine(bundle, out, device=args.device)
    started = time.perf_counter()
    plain = plain_engine.generate(request("plain"))
    report["plain_seconds"] = round(time.perf_counter() - started, 2)
    report["plain_phases"] = phases(plain)
    print(f"plain ({args.quantization}): {report['plain_seconds']} s -> {plain.output}")
    # For scale (random weights exaggerate or hide errors): what other changes do to the same frames.
    report["scale_psnr_vs_plain_db"] = {}
    for label, kwargs in (("seed 43", {"seed": 43}), ("fp8-cast", {"quantization": Quantization.FP8_CAST.value})):
        if kwargs.get("quantization") == args.quantization:
            continue
        other = plain_engine.generate(request(label.replace(" ", "-"), **kwargs))
        report["scale_psnr_vs_plain_db"][label] = round(psnr(decoded(other.output), decoded(plain.output)), 2)
    print("for scale, PSNR vs plain:", report["scale_psnr_vs_plain_db"])
    del plain_engine

    for variant, exclude_aliased in (("int8", False), ("int8_exclude_aliased", True)):
        print(f"--- {variant}: quantize(velocity_model, weights=qint8"
              f"{', exclude=<aliased modules>' if exclude_aliased else ''}) + freeze")  # fmt: skip
        log: list = []
        engine = Engine(bundle, out, device=args.device)
        engine.models.on_built(lambda name, model, log=log, ex=exclude_aliased: quantize_int8(name, model, log, ex))
        started = time.perf_counter()
        try:
            result = engine.generate(request(variant))
        except Exception as exc:
            report[variant] = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0], "quantized": log}
            print(f"{variant} FAILED:")
            traceback.print_exception(exc)  # the engine keeps the failed run's stack as a note (engine.drop_frames)
        else:
            a, b = decoded(plain.output), decoded(result.output)
            report[variant] = {
                "ok": True,
                "quantized": log,
                "seconds": round(time.perf_counter() - started, 2),
                "psnr_vs_plain_db": round(psnr(b, a), 2),
                "max_pixel_diff": int((a.int() - b.int()).abs().max()),
                "frames_identical": torch.equal(a, b),
                "frames_std": round(float(b.float().std()), 2),
                "stage_2_lora": result.stage_2_lora,
                "phases": phases(result),
            }
            print(f"{variant}: {report[variant]['seconds']} s -> {result.output}; "
                  f"PSNR vs plain {report[variant]['psnr_vs_plain_db']} dB")  # fmt: skip
        del engine
    print(json.dumps(report))


if __name__ == "__main__":
    main()
