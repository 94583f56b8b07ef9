"""The output folder's one owner: the name of every file a result has (in every subfolder), its sidecar, the one
atomic write, pruning by --keep-outputs that removes a result from every subfolder, and pins for what is on screen."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ltx_demo.types import GIB, GenerationFailed

logger = logging.getLogger(__name__)

INPUTS_DIR = "inputs"  # content-addressed copies of the portrait and the audio, so a result can be made again
THUMBNAILS_DIR = "thumbnails"  # <stem>.jpg: the history gallery's middle frames
PROXIES_DIR = "proxies"  # <stem>.mp4: video-only copies the A/B player shows (the sound comes from one <audio>)
EXPORTS_DIR = "exports"  # ab_<A stem>__<B stem>.mp4: side-by-side renders; a subfolder, so history does not list them
SUBFOLDERS = (INPUTS_DIR, THUMBNAILS_DIR, PROXIES_DIR, EXPORTS_DIR)

# Only files named like these are ever pruned, so pointing --output-dir at a folder with other videos deletes none.
_STEM = r"\d{8}-\d{6}_seed\d+_[0-9a-f]{6}"
RESULT_NAME = re.compile(rf"^{_STEM}\.mp4$")
RESULT_STEM = re.compile(rf"^{_STEM}$")
EXPORT_NAME = re.compile(rf"^ab_({_STEM})__({_STEM})\.mp4$")
# Staged files: hidden, never named like a result; this also matches the schemes of earlier versions.
STAGED_NAME = re.compile(r"^\..+\.partial(\.[A-Za-z0-9]+)?$")
STALE_STAGED_S = 3600  # a staged file this old is left over from a killed write: pruning removes it
PIN_TTL_S = 15 * 60  # a pin nobody renewed for this long lapses (see Pins)
_UNITS = {"kb": 1024, "mb": 1024**2, "gb": GIB, "tb": 1024**4, "s": 1, "m": 60, "h": 3600, "d": 86400}


# -- names -----------------------------------------------------------------------------------------------------------
def new_result_path(output_dir: Path, seed: int) -> Path:
    """A fresh result name in the output folder: time, seed and a random tag (two runs in a second never collide)."""
    return Path(output_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_seed{seed}_{uuid.uuid4().hex[:6]}.mp4"


def sidecar_path(video: Path) -> Path:
    """The result's parameters JSON, beside its mp4."""
    return Path(video).with_suffix(".json")


def thumbnail_path(video: Path) -> Path:
    return Path(video).parent / THUMBNAILS_DIR / f"{Path(video).stem}.jpg"


def proxy_path(video: Path) -> Path:
    return Path(video).parent / PROXIES_DIR / Path(video).name


def export_path(output_dir: Path, a: Path, b: Path) -> Path:
    """Where the side-by-side render of results a and b goes (pruned with either of them)."""
    return Path(output_dir) / EXPORTS_DIR / f"ab_{Path(a).stem}__{Path(b).stem}.mp4"


def input_path(folder: Path, digest: str, suffix: str) -> Path:
    """The saved copy of an input file with this sha256 (one per content, whatever it was called)."""
    return Path(folder) / INPUTS_DIR / f"{digest}{suffix}"


# -- writes ----------------------------------------------------------------------------------------------------------
def staged_path(target: Path) -> Path:
    """Where `target` is written before its rename: the same folder (so the rename is atomic), hidden, not named like
    a result, unique per writer (two writers of one file never share one), and ending in the target's suffix (PyAV
    and Pillow pick the format from it)."""
    target = Path(target)
    return target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.partial{target.suffix}")


@contextmanager
def atomic_write(target: str | Path) -> Iterator[Path]:
    """`with atomic_write(target) as staged:` write the file `staged`; leaving the block renames it over `target`, so
    a reader sees the old file or the whole new one, never half of it. On any error the staged file is removed and
    the error goes on. Makes the folder if needed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = staged_path(target)
    try:
        yield staged
        os.replace(staged, target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def write_sidecar(video: Path, params: dict) -> None:
    with atomic_write(sidecar_path(video)) as staged:
        staged.write_text(json.dumps(params, indent=2) + "\n")


def read_sidecar(sidecar: Path) -> dict | None:
    """A sidecar's content, or None when it is unreadable (logged) or not a JSON object."""
    try:
        params = json.loads(Path(sidecar).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("skipping unreadable sidecar %s", sidecar)
        return None
    return params if isinstance(params, dict) else None


def publish(video: Path, output: Path, params: dict) -> None:
    """Copy the finished mp4 to `output` and write its sidecar beside it, each staged then renamed: the sidecar first,
    the mp4 last, so whoever sees the mp4 sees its sidecar. On any failure nothing of this result is left; a full
    disk or an unwritable folder raises GenerationFailed."""
    output = Path(output)
    sidecar_written = False
    try:
        with atomic_write(output) as staged:
            shutil.copyfile(video, staged)
            write_sidecar(output, params)
            sidecar_written = True
    except OSError as exc:
        if sidecar_written:
            sidecar_path(output).unlink(missing_ok=True)
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


# -- what is stored --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoredResult:
    """One result in the output folder and every file that belongs to it."""

    video: Path
    files: tuple[Path, ...]  # its own: the mp4, its sidecar(s), thumbnail and proxy
    exports: tuple[Path, ...]  # side-by-side renders made from it (each shared with the pair's other result)
    inputs: tuple[Path, ...]  # the saved inputs its sidecar names (shared with results made from the same files)
    modified: float

    @property
    def size_bytes(self) -> int:
        """Its own files' bytes (exports and inputs are shared; prune counts each of those once)."""
        return _total_bytes(self.files)


def _total_bytes(paths: Iterable[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def _named_inputs(folder: Path, params: dict | None) -> tuple[Path, ...]:
    """The saved inputs a sidecar names (provenance.inputs.*.stored, relative to the result's folder)."""
    records = ((params or {}).get("provenance") or {}).get("inputs") or {}
    stored = [r.get("stored") for r in records.values() if isinstance(r, dict)] if isinstance(records, dict) else []
    return tuple(folder / s for s in stored if isinstance(s, str) and s.startswith(f"{INPUTS_DIR}/"))


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def stored_results(output_dir: Path) -> list[StoredResult]:
    """The results in the folder (mp4s named like ours) with every file that belongs to each, newest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    exports: dict[str, list[Path]] = {}
    for export in _files_in(folder / EXPORTS_DIR):
        if match := EXPORT_NAME.match(export.name):
            for stem in set(match.groups()):
                exports.setdefault(stem, []).append(export)
    found = []
    for video in _files_in(folder):
        if not RESULT_NAME.match(video.name):
            continue
        derived = [*folder.glob(f"{video.stem}.*"), *(folder / THUMBNAILS_DIR).glob(f"{video.stem}.*")]
        derived += (folder / PROXIES_DIR).glob(f"{video.stem}.*")
        files = (video, *sorted(p for p in derived if p != video and p.is_file()))
        inputs = _named_inputs(folder, read_sidecar(sidecar_path(video)) if sidecar_path(video).is_file() else None)
        try:
            modified = video.stat().st_mtime
        except OSError:  # removed while we looked
            continue
        found.append(StoredResult(video, files, tuple(sorted(exports.get(video.stem, ()))), inputs, modified))
    return sorted(found, key=lambda r: (r.modified, r.video.name), reverse=True)


# -- pruning ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """How many results the output folder keeps: the newest `count`, at most `max_bytes` (every file of every kept
    result, in every subfolder), none older than `max_age_s` (each None: no cap). The result just made is kept."""

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


def _partners(export: Path) -> set[str]:
    match = EXPORT_NAME.match(export.name)
    return set(match.groups()) if match else set()


def _select(
    results: list[StoredResult], policy: KeepPolicy, protected: set[Path], start_bytes: int, now: float
) -> tuple[list[StoredResult], list[StoredResult]]:
    """(kept, pruned), walking newest first. A result costs its own files, plus the exports whose other result is
    already kept and the inputs no kept result counted yet: summed over the kept ones, that is every byte they keep."""
    kept: list[StoredResult] = []
    pruned: list[StoredResult] = []
    kept_stems: set[str] = set()
    counted_inputs: set[Path] = set()
    kept_bytes = start_bytes
    for result in results:
        stem = result.video.stem
        exports = [e for e in result.exports if _partners(e) - {stem} <= kept_stems]
        inputs = set(result.inputs) - counted_inputs
        size = result.size_bytes + _total_bytes(exports) + _total_bytes(inputs)
        too_many = policy.count is not None and len(kept) >= policy.count
        too_big = policy.max_bytes is not None and kept_bytes + size > policy.max_bytes
        too_old = policy.max_age_s is not None and now - result.modified > policy.max_age_s
        if (too_many or too_big or too_old) and result.video.resolve() not in protected:
            pruned.append(result)
            continue
        kept.append(result)
        kept_stems.add(stem)
        counted_inputs |= inputs
        kept_bytes += size
    return kept, pruned


def _leftovers(folder: Path, now: float) -> tuple[list[Path], list[Path]]:
    """(stale, in flight): staged files in the folder and its subfolders; stale ones were left by a killed write,
    the others may be a write in progress (an export or thumbnail made while a result is published)."""
    stale, in_flight = [], []
    for path in [*_files_in(folder), *(p for sub in SUBFOLDERS for p in _files_in(folder / sub))]:
        if STAGED_NAME.match(path.name):
            try:
                (stale if now - path.stat().st_mtime > STALE_STAGED_S else in_flight).append(path)
            except OSError:
                pass
    return stale, in_flight


def _orphans(folder: Path, survivors: list[StoredResult]) -> list[Path]:
    """Files that belong to no surviving result (call it after the pruned mp4s are gone): files named like a result
    whose mp4 is gone (pruned now, deleted by hand, or made from a result while it was pruned), and inputs no
    remaining sidecar names."""
    videos = {p.stem for p in _files_in(folder) if p.suffix == ".mp4"}
    orphans = []
    for path in [*_files_in(folder), *_files_in(folder / THUMBNAILS_DIR), *_files_in(folder / PROXIES_DIR)]:
        if RESULT_STEM.match(path.stem) and path.stem not in videos:
            orphans.append(path)
    for path in _files_in(folder / EXPORTS_DIR):
        if (partners := _partners(path)) and not partners <= videos:
            orphans.append(path)
    # Results saved under a name of their own (never pruned) may name inputs too.
    own_names = [p for p in folder.glob("*.json") if not RESULT_STEM.match(p.stem) and p.stem in videos]
    named = {p.resolve() for r in survivors for p in r.inputs}
    named |= {p.resolve() for sidecar in own_names for p in _named_inputs(folder, read_sidecar(sidecar))}
    orphans += [p for p in _files_in(folder / INPUTS_DIR) if not STAGED_NAME.match(p.name) and p.resolve() not in named]
    return orphans


def prune(output_dir: Path, policy: KeepPolicy, protect: Iterable[Path] = ()) -> list[Path]:
    """Delete the oldest results past the policy's caps, never one in `protect` (the one just made, the pinned ones),
    each with every file that belongs to it: its mp4, sidecar, thumbnail, proxy, the exports made from it and the
    inputs no remaining result names. The size cap counts all of those, in every subfolder, plus staged files still
    being written. Also removes staged files left by killed writes and files of results that are gone.
    One app per output folder: its runs and its pruning take turns, so no input is being saved while this runs.
    Returns the removed mp4s; errors are logged, never raised."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    now = time.time()
    stale, in_flight = _leftovers(folder, now)
    protected = {Path(p).resolve() for p in protect}
    kept, pruned = _select(stored_results(folder), policy, protected, _total_bytes(in_flight), now)
    removed = []
    for result in pruned:
        try:
            result.video.unlink(missing_ok=True)  # first: then every other file of it is an orphan, removed below
            removed.append(result.video)
        except OSError as exc:
            logger.warning("could not prune %s: %s", result.video, exc)
    survivors = [*kept, *(r for r in pruned if r.video not in removed)]
    for path in [*_orphans(folder, survivors), *stale]:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove %s: %s", path, exc)
    if removed:
        logger.info("pruned %d old result(s) from %s (%s)", len(removed), output_dir, policy.describe())
    return removed


# -- pins ------------------------------------------------------------------------------------------------------------
class Pins:
    """The results on someone's screen, which pruning keeps. A holder (a browser tab: its session) pins what each of
    its views shows (a slot: the selected result, the A/B pair); pinning a slot again releases what it held, so a tab
    keeps at most what it shows. A tab's pins last while it is open: its page renews them (the readout timer), closing
    it releases them, and pins nobody renewed for `ttl_s` lapse (a tab gone without a goodbye, an API client)."""

    def __init__(self, ttl_s: float = PIN_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self._clock = ttl_s, clock
        self._lock = threading.Lock()
        self._slots: dict[str, dict[str, frozenset[Path]]] = {}  # holder -> slot -> pinned mp4s
        self._renewed: dict[str, float] = {}  # holder -> when it last pinned or renewed

    def pin(self, holder: str, slot: str, *videos: str | Path) -> None:
        """`holder`'s view `slot` now shows `videos` (none: it shows nothing); what it showed before is released."""
        with self._lock:
            self._slots.setdefault(holder, {})[slot] = frozenset(Path(v) for v in videos)
            self._renewed[holder] = self._clock()

    def renew(self, holder: str) -> None:
        """`holder` is still there: its pins last another `ttl_s`."""
        with self._lock:
            if holder in self._slots:
                self._renewed[holder] = self._clock()

    def release(self, holder: str, slot: str | None = None) -> None:
        """Drop one view's pins, or all of the holder's (its tab closed)."""
        with self._lock:
            if slot is None:
                self._slots.pop(holder, None)
                self._renewed.pop(holder, None)
            else:
                self._slots.get(holder, {}).pop(slot, None)

    def pinned(self) -> frozenset[Path]:
        """Every result some holder shows now (lapsed holders are forgotten here)."""
        with self._lock:
            now = self._clock()
            for holder in [h for h, when in self._renewed.items() if now - when > self.ttl_s]:
                self._slots.pop(holder, None)
                self._renewed.pop(holder, None)
            return frozenset(p for slots in self._slots.values() for videos in slots.values() for p in videos)
