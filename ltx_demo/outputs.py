"""The output folder: each result (mp4 + parameters JSON) published atomically (staged, then renamed), write failures
turned into messages that say what to do, and old results pruned by a count, size or age cap (--keep-outputs)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ltx_demo.review import INPUTS_DIR, THUMBNAILS_DIR
from ltx_demo.types import GIB, GenerationFailed

logger = logging.getLogger(__name__)

# Only files named like this are ever pruned, so pointing --output-dir at a folder with other videos deletes none.
RESULT_NAME = re.compile(r"^\d{8}-\d{6}_seed\d+_[0-9a-f]{6}\.mp4$")
STAGED_SUFFIX = ".partial"
STALE_STAGED_S = 3600  # a staged file this old is left over from a killed run: pruning removes it
_UNITS = {"kb": 1024, "mb": 1024**2, "gb": GIB, "tb": 1024**4, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """How many results the output folder keeps: the newest `count`, at most `max_bytes`, none older than
    `max_age_s` (each None: no cap). The result just made is always kept."""

    count: int | None = None
    max_bytes: int | None = None
    max_age_s: float | None = None

    @classmethod
    def parse(cls, spec: str) -> KeepPolicy:
        """'all'; '200' (the newest 200); '20GB' or '500MB' (total size); '7d', '12h' or '30m' (age); combine with
        commas ('200,20GB'). Raises ValueError naming the accepted forms."""
        count = max_bytes = max_age = None
        for part in (p.strip().lower() for p in str(spec).split(",")):
            if part in ("all", "none", ""):
                continue
            match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", part)
            unit = match.group(2) if match else None
            if match is None or (unit and unit not in _UNITS):
                raise ValueError(
                    f"--keep-outputs {spec!r}: use 'all', a count (200), a size (20GB, 500MB) or an age (7d, 12h)"
                )
            value = float(match.group(1))
            if not unit:
                if not value.is_integer() or value < 1:
                    raise ValueError(f"--keep-outputs {spec!r}: keep a whole number of results, at least 1")
                count = int(value)
            elif unit.endswith("b"):
                max_bytes = int(value * _UNITS[unit])
            else:
                max_age = value * _UNITS[unit]
        return cls(count, max_bytes, max_age)

    @property
    def unlimited(self) -> bool:
        return self.count is None and self.max_bytes is None and self.max_age_s is None

    def describe(self) -> str:
        caps = []
        if self.count is not None:
            caps.append(f"the newest {self.count}")
        if self.max_bytes is not None:
            caps.append(f"at most {self.max_bytes / GIB:.2f} GiB")
        if self.max_age_s is not None:
            caps.append(f"none older than {self.max_age_s / 3600:g} h")
        return "keeps " + (", ".join(caps) if caps else "every result")


@dataclass(frozen=True, slots=True)
class StoredResult:
    video: Path
    files: tuple[Path, ...]  # the mp4, its sidecars (same stem) and its thumbnail
    size_bytes: int
    modified: float


def new_output_path(output_dir: Path, seed: int) -> Path:
    """A fresh result name in the output folder: time, seed and a random tag (two runs in a second never collide)."""
    return Path(output_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_seed{seed}_{uuid.uuid4().hex[:6]}.mp4"


def staged_path(path: Path) -> Path:
    """Where a file is written before its rename: hidden, and not named like a result."""
    return path.with_name(f".{path.name}{STAGED_SUFFIX}")


def publish(video: Path, output: Path, params: dict) -> None:
    """Copy the finished mp4 to `output` and write its parameters JSON beside it. Both are staged under hidden names
    in the output folder, then renamed: the JSON first, the mp4 last, so whoever sees the mp4 sees its JSON. On any
    failure nothing of this result is left; a full disk or an unwritable folder raises GenerationFailed."""
    sidecar = output.with_suffix(".json")
    staged = [staged_path(output), staged_path(sidecar)]
    renamed: list[Path] = []
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, staged[0])
        staged[1].write_text(json.dumps(params, indent=2) + "\n")
        os.replace(staged[1], sidecar)
        renamed.append(sidecar)
        os.replace(staged[0], output)
    except OSError as exc:
        for path in [*staged, *renamed]:
            path.unlink(missing_ok=True)
        raise write_failure(exc, output.parent) from None


def write_failure(exc: OSError, folder: Path) -> GenerationFailed:
    """A write error as a message naming what to do (the run's work is lost either way; say why plainly)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(folder).free / GIB:.2f} GiB free"
        except OSError:
            free = "free space unknown"
        return GenerationFailed(
            f"the disk holding {folder} is full ({free}): nothing was saved. Free some space, keep fewer results "
            "(--keep-outputs), or pass --output-dir on a bigger disk"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return GenerationFailed(
            f"cannot write to {folder} ({exc.strerror}): nothing was saved. Pass --output-dir with a writable folder"
        )
    return GenerationFailed(f"could not save the result in {folder} ({exc.strerror or exc}): nothing was saved")


def stored_results(output_dir: Path) -> list[StoredResult]:
    """The results in the folder (files named like ours), newest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for video in folder.iterdir():
        if not RESULT_NAME.match(video.name) or not video.is_file():
            continue
        sidecars = [*folder.glob(f"{video.stem}.*"), *(folder / THUMBNAILS_DIR).glob(f"{video.stem}.*")]
        files = (video, *sorted(p for p in sidecars if p != video and p.is_file()))
        stats = [p.stat() for p in files]
        found.append(StoredResult(video, files, sum(s.st_size for s in stats), stats[0].st_mtime))
    return sorted(found, key=lambda r: (r.modified, r.video.name), reverse=True)


def prune(output_dir: Path, policy: KeepPolicy, protect: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Delete the oldest results past the policy's caps, never one in `protect` (the one just made, the ones shown),
    and staged files left over by killed runs. Returns the removed mp4s; errors are logged, never raised."""
    protected = {Path(p).resolve() for p in protect}
    removed: list[Path] = []
    now = time.time()
    kept = kept_bytes = 0
    for result in stored_results(output_dir):
        too_many = policy.count is not None and kept >= policy.count
        too_big = policy.max_bytes is not None and kept_bytes + result.size_bytes > policy.max_bytes
        too_old = policy.max_age_s is not None and now - result.modified > policy.max_age_s
        if (too_many or too_big or too_old) and result.video.resolve() not in protected:
            try:
                for path in result.files:
                    path.unlink(missing_ok=True)
                removed.append(result.video)
            except OSError as exc:
                logger.warning("could not prune %s: %s", result.video, exc)
            continue
        kept += 1
        kept_bytes += result.size_bytes
    folder = Path(output_dir)
    leftovers = [*folder.glob(f".*{STAGED_SUFFIX}"), *folder.glob(f"*/.*{STAGED_SUFFIX}*")] if folder.is_dir() else []
    if removed:  # input copies (review.py) that no remaining result's sidecar names
        sidecars = [r.video.with_suffix(".json") for r in stored_results(folder)]
        named = "".join(p.read_text(errors="replace") for p in sidecars if p.is_file())
        leftovers += [p for p in (folder / INPUTS_DIR).glob("*") if p.is_file() and p.name not in named]
    for leftover in leftovers:
        try:
            if now - leftover.stat().st_mtime > STALE_STAGED_S:  # never what a run in progress just wrote
                leftover.unlink()
        except OSError as exc:
            logger.warning("could not remove %s: %s", leftover, exc)
    if removed:
        logger.info("pruned %d old result(s) from %s (%s)", len(removed), output_dir, policy.describe())
    return removed
