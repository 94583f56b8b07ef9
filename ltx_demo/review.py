"""Lip-sync review without torch (the UI imports it): the provenance record written into every mp4 and its JSON sidecar,
the history read back from the output folder, and the request that reproduces a result from its saved inputs (the A/B
pair's media: ab_pair.py)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import av
from PIL import Image

from ltx_demo import results
from ltx_demo.requests import parse_request
from ltx_demo.types import GenerationRequest, InvalidRequest

logger = logging.getLogger(__name__)

METADATA_TAG = "comment"  # the mp4 tag (©cmt) that carries the provenance JSON; ffprobe and players show it
PROVENANCE_SCHEMA = "ltx-demo/provenance-1"
PACKAGES = ("torch", "ltx-core", "ltx-pipelines", "transformers", "gradio", "ltx-demo")
THUMBNAIL_WIDTH = 320
_HASH_CHUNK = 1 << 20


# -- provenance: what made a result, recorded so it can be made again --------------------------------------------------
def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the output (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _safe_suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def store_input(path: str | Path, folder: Path) -> dict:
    """Copy an input file to folder/inputs/<sha256><suffix> (once: same content, same name), so a result can be
    reproduced after Gradio's temporary uploads are gone. Returns its record (stored path relative to folder)."""
    source = Path(path)
    digest = sha256_file(source)
    target = results.input_path(folder, digest, _safe_suffix(source.name))
    if not target.is_file():
        with results.atomic_write(target) as staged:
            shutil.copyfile(source, staged)
    return {
        "sha256": digest,
        "name": source.name,
        "bytes": target.stat().st_size,
        "stored": f"{results.INPUTS_DIR}/{target.name}",
    }


def provenance(request: GenerationRequest, folder: Path, *, bundle: dict, ran: dict) -> dict:
    """The record written into the mp4 (METADATA_TAG) and the sidecar: the request as asked (seed, steps, size,
    frames, quantization, residency, guidance, prompt...), the inputs' sha256 and saved copies, package versions,
    the bundle (with its fingerprint) and what actually ran (device, dtype, resolved residency)."""
    return {
        "schema": PROVENANCE_SCHEMA,
        "created_at": round(time.time(), 3),
        "request": dataclasses.asdict(request),
        "inputs": {
            "image": store_input(request.image_path, folder),
            "audio": store_input(request.audio_path, folder),
        },
        "versions": package_versions(),
        "bundle": dict(bundle),
        "ran": dict(ran),
    }


def mp4_metadata(record: dict) -> dict[str, str]:
    """The container tags for write_mp4: the record as compact JSON."""
    return {METADATA_TAG: json.dumps(record, separators=(",", ":"), sort_keys=True)}


def read_mp4_record(path: str | Path) -> dict | None:
    """The JSON record in an mp4's METADATA_TAG, or None when there is none (or it is not ours)."""
    try:
        with av.open(str(path)) as container:
            text = container.metadata.get(METADATA_TAG)
    except (av.error.FFmpegError, OSError):
        return None
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


# -- history: every finished generation, read back from the sidecars ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One finished generation: its mp4, its sidecar and what the sidecar says."""

    video: Path
    sidecar: Path
    created_at: float
    request: dict
    result: dict
    provenance: dict

    @classmethod
    def from_sidecar(cls, sidecar: Path) -> HistoryEntry | None:
        """None for anything that is not a finished result (no mp4, partial or foreign JSON)."""
        video = sidecar.with_suffix(".mp4")
        if sidecar.name.startswith(".") or not video.is_file():
            return None
        params = results.read_sidecar(sidecar)
        if params is None or not isinstance(params.get("request"), dict):
            return None
        record = params.get("provenance") if isinstance(params.get("provenance"), dict) else {}
        created = record.get("created_at")
        return cls(
            video=video,
            sidecar=sidecar,
            created_at=float(created) if isinstance(created, int | float) else video.stat().st_mtime,
            request=params["request"],
            result=params.get("result") if isinstance(params.get("result"), dict) else {},
            provenance=record,
        )

    def params(self) -> dict:
        """The sidecar's content (what the UI shows as the parameters)."""
        return {"request": self.request, "result": self.result, "provenance": self.provenance}

    def value(self, name: str, default=None):
        """A result field (what ran), else the request's (what was asked)."""
        return self.result.get(name, self.request.get(name, default))

    @property
    def peak_vram_gib(self) -> float | None:
        return self.result.get("peak_vram_gib")

    @property
    def elapsed_seconds(self) -> float | None:
        return self.result.get("elapsed_seconds")

    def caption(self) -> str:
        """The gallery caption: the key parameters, elapsed seconds and peak VRAM."""
        vram = "no VRAM (CPU)" if self.peak_vram_gib is None else f"{self.peak_vram_gib:.2f} GiB peak"
        elapsed = "?" if self.elapsed_seconds is None else f"{self.elapsed_seconds:.1f} s"
        return (
            f"seed {self.value('seed')} · {self.value('quantization')} · {self.value('width')}×{self.value('height')}"
            f" · {self.value('num_frames')} fr @ {self.value('frame_rate')} · {self.value('steps')} steps · "
            f"{elapsed} · {vram}"
        )

    def label(self) -> str:
        """The A/B picker's label: when, then the key parameters."""
        return f"{time.strftime('%m-%d %H:%M:%S', time.localtime(self.created_at))} · {self.caption()}"

    def short_label(self) -> str:
        return (
            f"{self.value('quantization')} · seed {self.value('seed')} · {self.value('width')}×{self.value('height')}"
            f" · {self.value('steps')} steps"
        )

    def summary(self) -> dict:
        """What the `history` API returns per result."""
        return {
            "video": str(self.video),
            "parameters_file": str(self.sidecar),
            "created_at": self.created_at,
            "caption": self.caption(),
            "seed": self.value("seed"),
            "steps": self.request.get("steps"),
            "width": self.value("width"),
            "height": self.value("height"),
            "num_frames": self.value("num_frames"),
            "frame_rate": self.value("frame_rate"),
            "quantization": self.value("quantization"),
            "residency": self.value("residency"),
            "elapsed_seconds": self.elapsed_seconds,
            "peak_vram_gib": self.peak_vram_gib,
            "prompt": self.request.get("prompt"),
            "inputs": self.provenance.get("inputs", {}),
            "bundle_fingerprint": (self.provenance.get("bundle") or self.result.get("bundle") or {}).get("fingerprint"),
        }


def scan_history(folder: str | Path) -> tuple[HistoryEntry, ...]:
    """Every finished result in the output folder (mp4 + sidecar), newest first; survives restarts by construction."""
    folder = Path(folder)
    if not folder.is_dir():
        return ()
    entries = [entry for sidecar in folder.glob("*.json") if (entry := HistoryEntry.from_sidecar(sidecar))]
    return tuple(sorted(entries, key=lambda e: (e.created_at, e.video.name), reverse=True))


def find_entry(entries: tuple[HistoryEntry, ...], video: str | Path | None) -> HistoryEntry | None:
    if not video:
        return None
    wanted = Path(video).resolve()
    return next((e for e in entries if e.video.resolve() == wanted), None)


def thumbnail(entry: HistoryEntry, width: int = THUMBNAIL_WIDTH) -> Path:
    """The middle frame as a JPEG in folder/thumbnails (made once, remade if the mp4 is newer)."""
    target = results.thumbnail_path(entry.video)
    if target.is_file() and target.stat().st_mtime >= entry.video.stat().st_mtime:
        return target
    image = None
    with av.open(str(entry.video)) as container:
        stream = container.streams.video[0]
        middle = max(0, (stream.frames or 1) // 2)
        for index, frame in enumerate(container.decode(stream)):
            image = frame.to_image()
            if index >= middle:
                break
    if image is None:
        raise InvalidRequest(f"{entry.video.name} has no video frames")
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)
    with results.atomic_write(target) as staged:
        image.save(staged, quality=88)
    return target


# -- reproduce: the request that makes a result again -------------------------------------------------------------
def request_from_dict(fields: dict, **overrides) -> GenerationRequest:
    """The typed GenerationRequest from its asdict() form (a sidecar's "request": the modes as strings); fields this
    version does not know are refused rather than dropped, so a reproduction never silently differs from what was
    asked. The engine checks the values when it runs it."""
    return parse_request(dict(fields) | overrides)


def _input_path(entry: HistoryEntry, kind: str, original: str) -> tuple[str, str]:
    """The file to feed again for `kind` (image/audio), verified against the recorded sha256, and a note."""
    record = (entry.provenance.get("inputs") or {}).get(kind)
    if not record:
        if original and Path(original).is_file():
            return original, f"{kind}: no hash was recorded (an older result), used {original} unverified"
        raise InvalidRequest(f"the {kind} of this result was not saved and {original or 'its path'} is gone")
    candidates = [entry.video.parent / record["stored"], Path(original)] if original else []
    for path in candidates:
        if path.is_file() and sha256_file(path) == record["sha256"]:
            return str(path), ""
    raise InvalidRequest(
        f"the {kind} of this result ({record.get('name')}, sha256 {record['sha256'][:12]}…) is gone or changed: "
        f"neither {record['stored']} nor the original path holds it"
    )


def reproduce_request(entry: HistoryEntry, **overrides) -> tuple[GenerationRequest, list[str]]:
    """The request that makes `entry` again from its saved inputs, into a new file (output_path=None); `overrides`
    change fields on purpose (the other quantization for an A/B take). Returns it with notes for the reviewer."""
    image, image_note = _input_path(entry, "image", entry.request.get("image_path") or "")
    audio, audio_note = _input_path(entry, "audio", entry.request.get("audio_path") or "")
    request = request_from_dict(entry.request, image_path=image, audio_path=audio, output_path=None, **overrides)
    return request, [note for note in (image_note, audio_note) if note]


def bundle_mismatch(entry: HistoryEntry, bundle: dict) -> str | None:
    """Why a re-run with `bundle` (Bundle.describe()) would not reproduce `entry`, if the fingerprints say so."""
    recorded = (entry.provenance.get("bundle") or entry.result.get("bundle") or {}).get("fingerprint")
    current = bundle.get("fingerprint")
    if recorded and current and recorded != current:
        return (
            f"this result was made with bundle {recorded[:12]}…, the app runs {current[:12]}…: start it with the "
            "same bundle to reproduce it"
        )
    return None


def take_key(entry: HistoryEntry, **overrides) -> str:
    """What makes two takes the same: the request (minus file paths) with `overrides`, the inputs' hashes and the
    bundle fingerprint. Used to find a take that was already made instead of running it again."""
    request = {k: v for k, v in entry.request.items() if k not in ("image_path", "audio_path", "output_path")}
    request.update(overrides)
    inputs = {kind: record.get("sha256") for kind, record in (entry.provenance.get("inputs") or {}).items()}
    fingerprint = (entry.provenance.get("bundle") or {}).get("fingerprint")
    return json.dumps([request, inputs, fingerprint], sort_keys=True, default=str)


def find_take(entries: tuple[HistoryEntry, ...], base: HistoryEntry, **overrides) -> HistoryEntry | None:
    """The newest result that is `base` with `overrides` applied, if one was made already (and recorded hashes)."""
    if not base.provenance.get("inputs"):
        return None
    wanted = take_key(base, **overrides)
    return next((e for e in entries if e.video != base.video and e.provenance and take_key(e) == wanted), None)


def flow_take_overrides(entry: HistoryEntry) -> dict[str, str]:
    """What the reference compare changes: the other flow. The reference runs A2VidPipelineTwoStage's own policies,
    so a fast take's fp8-scaled-mm becomes fp8-cast there (the same fp8 weights, multiplied the way ltx-core does)."""
    flow = other_flow(entry.value("flow"))
    if flow == "reference" and entry.value("quantization") == "fp8-scaled-mm":
        return {"flow": flow, "quantization": "fp8-cast"}
    return {"flow": flow}


def other_flow(flow: str | None) -> str:
    """The flow the reference compare runs: the reference for a fast-flow result (or an older one), else fast."""
    return "fast" if flow == "reference" else "reference"


def other_quantization(quantization: str) -> str:
    """The take the one-click A/B runs: bf16 for any quantized result, fp8-cast for a bf16 one."""
    return "fp8-cast" if quantization == "bf16" else "bf16"
