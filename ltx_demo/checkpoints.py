"""The model bundle: resolve and check every path, read and write bundle.json, clear errors naming the flag to pass.

A bundle is the LTX checkpoint, the spatial upsampler, the distilled LoRA and a Gemma folder. A manifested bundle is
a folder with bundle.json (what `--bundle DIR` takes); the seed's four path flags describe an unmanifested real one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUNDLE_MANIFEST = "bundle.json"
PATH_FLAGS = {
    "checkpoint": "--checkpoint-path",
    "distilled_lora": "--distilled-lora-path",
    "spatial_upsampler": "--spatial-upsampler-path",
    "gemma_root": "--gemma-root",
}


class BundleError(ValueError):
    """A bundle path or file is missing or malformed; the message names the flag or file to fix."""


@dataclass(frozen=True, slots=True)
class Bundle:
    root: Path | None
    checkpoint: Path
    distilled_lora: Path
    spatial_upsampler: Path
    gemma_root: Path
    synthetic: bool = False
    generator_version: int | None = None
    scale: str | None = None
    fingerprint: str | None = None

    @classmethod
    def from_dir(cls, root: Path) -> Bundle:
        manifest_path = Path(root) / BUNDLE_MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"--bundle {root}: no {BUNDLE_MANIFEST} there (make one with `make-bundle`)")
        try:
            manifest = json.loads(manifest_path.read_text())
            components = manifest["components"]
            bundle = cls(
                root=Path(root),
                checkpoint=Path(root) / components["checkpoint"]["path"],
                distilled_lora=Path(root) / components["distilled_lora"]["path"],
                spatial_upsampler=Path(root) / components["spatial_upsampler"]["path"],
                gemma_root=Path(root) / components["gemma_root"]["path"],
                synthetic=bool(manifest["synthetic"]),
                generator_version=manifest.get("generator_version"),
                scale=manifest.get("scale"),
                fingerprint=manifest.get("fingerprint"),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise BundleError(f"--bundle {root}: {BUNDLE_MANIFEST} is malformed ({exc!r})") from exc
        bundle.check_paths(flag_prefix=f"--bundle {root}: ")
        return bundle

    @classmethod
    def from_paths(cls, checkpoint: str, distilled_lora: str, spatial_upsampler: str, gemma_root: str) -> Bundle:
        """The seed's four flags; all four are required together."""
        given = dict(
            checkpoint=checkpoint,
            distilled_lora=distilled_lora,
            spatial_upsampler=spatial_upsampler,
            gemma_root=gemma_root,
        )
        missing = [PATH_FLAGS[name] for name, value in given.items() if not value]
        if missing:
            raise BundleError(f"a real bundle needs all four path flags; missing: {' '.join(missing)}")
        bundle = cls(root=None, **{name: Path(value).expanduser() for name, value in given.items()})
        bundle.check_paths()
        return bundle

    def check_paths(self, flag_prefix: str = "") -> None:
        for name, flag in PATH_FLAGS.items():
            path: Path = getattr(self, name)
            label = flag_prefix or f"{flag} "
            if name == "gemma_root":
                if not path.is_dir():
                    raise BundleError(f"{label}{path}: not a folder (expected the Gemma-3 text encoder folder)")
                if not list(path.rglob("model*.safetensors")):
                    raise BundleError(f"{label}{path}: no model*.safetensors in the Gemma folder")
                for needed in ("tokenizer.model", "preprocessor_config.json"):
                    if not list(path.rglob(needed)):
                        raise BundleError(f"{label}{path}: no {needed} in the Gemma folder")
            elif not path.is_file():
                found = "a folder" if path.is_dir() else "nothing"
                raise BundleError(f"{label}{path}: expected a .safetensors file, found {found}")
            elif path.suffix != ".safetensors":
                raise BundleError(f"{label}{path}: expected a .safetensors file")

    def describe(self) -> dict:
        return {
            "root": str(self.root) if self.root else None,
            "synthetic": self.synthetic,
            "scale": self.scale,
            "generator_version": self.generator_version,
            "fingerprint": self.fingerprint,
        }


def _component_files(bundle: Bundle) -> dict[str, list[Path]]:
    return {
        "checkpoint": [bundle.checkpoint],
        "distilled_lora": [bundle.distilled_lora],
        "spatial_upsampler": [bundle.spatial_upsampler],
        "gemma_root": sorted(p for p in bundle.gemma_root.rglob("*") if p.is_file()),
    }


FULL_HASH_LIMIT = 64 * 1024**2
SAMPLED_BLOCKS, SAMPLED_BLOCK_BYTES = 16, 1024**2


def content_fingerprint(bundle: Bundle) -> str:
    """sha256 over every component file: whole files up to 64 MiB; for bigger ones (a 40 GiB checkpoint would take
    a minute to hash) the size, the safetensors header and 16 evenly spaced 1 MiB blocks."""
    digest = hashlib.sha256()
    for name, files in _component_files(bundle).items():
        for path in files:
            size = path.stat().st_size
            digest.update(f"{name}:{path.name}:{size}\0".encode())
            with path.open("rb") as handle:
                if size <= FULL_HASH_LIMIT:
                    digest.update(handle.read())
                    continue
                header_size = int.from_bytes(handle.read(8), "little")
                digest.update(handle.read(min(header_size, FULL_HASH_LIMIT)))
                for index in range(SAMPLED_BLOCKS):
                    handle.seek(index * (size - SAMPLED_BLOCK_BYTES) // (SAMPLED_BLOCKS - 1))
                    digest.update(handle.read(SAMPLED_BLOCK_BYTES))
    return digest.hexdigest()


def write_manifest(bundle: Bundle) -> Bundle:
    assert bundle.root is not None
    fingerprint = content_fingerprint(bundle)
    components = {}
    for name, files in _component_files(bundle).items():
        path = getattr(bundle, name)
        components[name] = {
            "path": str(path.relative_to(bundle.root)),
            "bytes": sum(f.stat().st_size for f in files),
        }
    manifest = {
        "format": "ltx-demo-bundle/1",
        "synthetic": bundle.synthetic,
        "scale": bundle.scale,
        "generator_version": bundle.generator_version,
        "fingerprint": fingerprint,
        "components": components,
    }
    (bundle.root / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return dataclasses.replace(bundle, fingerprint=fingerprint)


def cache_dir() -> Path:
    return Path(os.environ.get("LTX_DEMO_CACHE", Path.home() / ".cache" / "ltx-demo")).expanduser()


def embedded_bundle() -> Bundle:
    """The tiny synthetic bundle, generated once into the cache per generator version, then reused."""
    from ltx_demo import synthetic

    root = cache_dir() / f"tiny-bundle-v{synthetic.GENERATOR_VERSION}"
    if not (root / BUNDLE_MANIFEST).is_file():
        staging = root.with_name(root.name + f".tmp{os.getpid()}")
        synthetic.make_bundle(staging, scale="tiny")
        with contextlib.suppress(OSError):
            staging.rename(root)  # atomic: a concurrent process may have won the race, which is fine
    return Bundle.from_dir(root)


def resolve_bundle(
    bundle_dir: str | None = None,
    checkpoint: str | None = None,
    distilled_lora: str | None = None,
    spatial_upsampler: str | None = None,
    gemma_root: str | None = None,
) -> Bundle:
    """--bundle DIR, or the four path flags, or the embedded tiny bundle when none is given."""
    path_flags = (checkpoint, distilled_lora, spatial_upsampler, gemma_root)
    if bundle_dir and any(path_flags):
        raise BundleError("pass either --bundle or the four path flags, not both")
    if bundle_dir:
        return Bundle.from_dir(Path(bundle_dir).expanduser())
    if any(path_flags):
        return Bundle.from_paths(*path_flags)
    return embedded_bundle()


@contextlib.contextmanager
def gemma_architecture(bundle: Bundle) -> Iterator[None]:
    """Build a synthetic bundle's text encoder and embeddings processor at its own (tiny) Gemma size.

    ltx-core 1.0.0 builds the text encoder (GemmaTextEncoderConfigurator) and sizes the embeddings processor
    (_create_feature_extractor) from the module-level GEMMA3_CONFIG_FOR_LTX, ignoring the folder's config.json.
    Real bundles are left alone: they must be Gemma-3-12B anyway.
    """
    if not bundle.synthetic:
        yield
        return
    with gemma_config_override(json.loads((bundle.gemma_root / "config.json").read_text())):
        yield


@contextlib.contextmanager
def gemma_config_override(file_config: dict) -> Iterator[None]:
    """Swap the fields of ltx-core's GEMMA3_CONFIG_FOR_LTX for a config.json's, and put the originals back after.

    The one place that touches ltx-core's hard-coded Gemma architecture (see gemma_architecture).
    """
    from ltx_core.text_encoders.gemma import config as gemma_config_module

    target = gemma_config_module.GEMMA3_CONFIG_FOR_LTX
    saved = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
    try:
        for name, value in file_config.items():
            if name == "text_config":
                value = gemma_config_module.Gemma3TextConfig(
                    **{**value, "rope_scaling": gemma_config_module.Gemma3RopeScaling(**value["rope_scaling"])}
                )
            elif name == "vision_config":
                value = gemma_config_module.Gemma3VisionConfig(**value)
            if name in saved:
                setattr(target, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(target, name, value)


@dataclass(frozen=True, slots=True)
class ComponentCheck:
    name: str
    tensors: int
    problems: tuple[str, ...]


def _header_shapes(paths: list[str]) -> dict[str, tuple[list[int], str]]:
    """Each tensor's shape and dtype from the safetensors headers (no weights are read)."""
    import safetensors

    shapes = {}
    for path in paths:
        with safetensors.safe_open(path, framework="pt") as f:
            for key in f.keys():
                tensor_slice = f.get_slice(key)
                shapes[key] = (tensor_slice.get_shape(), tensor_slice.get_dtype())
    return shapes


def _mapped(shapes: dict, sd_ops) -> dict[str, tuple[int, ...]]:
    """The shapes under the names a builder's sd_ops give them (keys it drops are left out)."""
    import torch

    out = {}
    for key, (shape, _dtype) in shapes.items():
        name = key if sd_ops is None else sd_ops.apply_to_key(key)
        if name is None:
            continue
        results = (
            [(name, None)] if sd_ops is None else sd_ops.apply_to_key_value(name, torch.empty(shape, device="meta"))
        )
        for new_name, _ in results:
            out[new_name] = tuple(shape)
    return out


def _check_lora(bundle: Bundle, transformer_shapes: dict[str, tuple[int, ...]]) -> ComponentCheck:
    """Every lora_A/lora_B pair of the distilled LoRA fits a transformer weight."""
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP

    lora_problems: list[str] = []
    lora = _mapped(_header_shapes([str(bundle.distilled_lora)]), LTXV_LORA_COMFY_RENAMING_MAP)
    pairs = {k.removesuffix(".lora_A.weight") for k in lora if k.endswith(".lora_A.weight")}
    if not pairs:
        lora_problems.append(f"{bundle.distilled_lora}: no lora_A/lora_B pairs")
    for stem in sorted(pairs):
        a, b, target = lora.get(f"{stem}.lora_A.weight"), lora.get(f"{stem}.lora_B.weight"), f"{stem}.weight"
        if b is None:
            lora_problems.append(f"{stem}: lora_A without lora_B")
        elif target not in transformer_shapes:
            lora_problems.append(f"{stem}: no such transformer weight")
        elif (b[0], a[1]) != transformer_shapes[target] or a[0] != b[1]:
            lora_problems.append(f"{stem}: B{b} @ A{a} does not fit {transformer_shapes[target]}")
    return ComponentCheck("distilled_lora", 2 * len(pairs), tuple(lora_problems[:5]))


def check_bundle(bundle: Bundle) -> list[ComponentCheck]:
    """Keys, shapes and config metadata of every component, against ltx-core's own model definitions on meta.

    Reads only headers (no weights), so a person with the real 40+ GiB files can check them in seconds.
    """
    import torch

    from ltx_demo.residency.specs import MODEL_SPECS, make_ledger

    results: list[ComponentCheck] = []
    try:
        ledger = make_ledger(bundle, torch.bfloat16, torch.device("cpu"))
    except Exception as exc:
        return [ComponentCheck("bundle", 0, (f"cannot read the bundle: {exc}",))]
    builders = {spec.name: getattr(ledger, spec.builder) for spec in MODEL_SPECS if not spec.fused_copy}
    # the parts of the checkpoint the A2V flow never builds are checked too: the file should be whole
    builders |= {"audio_decoder": ledger.audio_decoder_builder, "vocoder": ledger.vocoder_builder}
    transformer_shapes: dict[str, tuple[int, ...]] = {}
    for name, builder in builders.items():
        problems: list[str] = []
        paths = list(builder.model_path) if isinstance(builder.model_path, tuple) else [builder.model_path]
        try:
            config = builder.model_config()
            if name != "text_encoder" and not config:
                problems.append(f"{paths[0]}: no `config` metadata in the safetensors header")
            with gemma_architecture(bundle):
                meta = builder.meta_model(config, builder.module_ops)
            expected = {
                n: tuple(t.shape)
                for n, t in [*meta.named_parameters(), *meta.named_buffers()]
                if t.device.type == "meta"
            }
            found = _mapped(_header_shapes(paths), builder.model_sd_ops)
        except Exception as exc:
            results.append(ComponentCheck(name, 0, (f"{type(exc).__name__}: {exc}",)))
            continue
        missing = sorted(set(expected) - set(found))
        if missing:
            problems.append(f"missing {len(missing)} tensors, e.g. {', '.join(missing[:3])}")
        wrong = [f"{k} {found[k]} != {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
        if wrong:
            problems.append(f"{len(wrong)} tensors have the wrong shape, e.g. {'; '.join(wrong[:3])}")
        if name == "transformer":
            transformer_shapes = found
        results.append(ComponentCheck(name, len(expected), tuple(problems)))

    results.append(_check_lora(bundle, transformer_shapes))
    return results
