"""The output folder (ltx_demo.results) through its public functions: real results with their thumbnails, proxies,
exports and saved inputs, pruned by count and by size (every subfolder counted), staged leftovers, and pins."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ltx_demo import ab_pair, media, results, review
from ltx_demo.results import KeepPolicy, Pins
from ltx_demo.types import GenerationRequest

from .conftest import ASSETS


def make_results(folder: Path, sources: Path, count: int) -> list[Path]:
    """`count` real results, oldest first, each as the app leaves it: mp4 + sidecar published, its own portrait and a
    shared audio saved under inputs/, a thumbnail and an A/B proxy. Modification times are a minute apart."""
    sources.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    made = []
    for i in range(count):
        portrait = sources / f"portrait{i}.png"
        Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(portrait)
        request = GenerationRequest(str(portrait), str(ASSETS / "speech_hello.wav"), "speaks", 64, 64, 9, seed=i)
        record = review.provenance(request, folder, bundle={}, ran={})
        clip = sources / f"clip{i}.mp4"
        frames = rng.integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)
        media.write_mp4(frames, np.zeros((2, 9 * 2000), np.float32), 48_000, 24, clip, review.mp4_metadata(record))
        video = results.new_result_path(folder, i)
        results.publish(clip, video, {"request": {"seed": i}, "result": {}, "provenance": record})
        review.thumbnail(review.HistoryEntry.from_sidecar(results.sidecar_path(video)))
        ab_pair.video_only(video)
        made.append(video)
    stamp = time.time() - 3600
    for i, video in enumerate(made):  # oldest first, whatever second each was named in
        os.utime(video, (stamp + 60 * i,) * 2)
    return made


def export(folder: Path, a: Path, b: Path) -> Path:
    return ab_pair.render_side_by_side(a, b, results.export_path(folder, a, b))


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def files_of(video: Path, folder: Path) -> set[Path]:
    """Every file `video` has under `folder`: named after it (in any subfolder), and the saved inputs it names."""
    record = review.read_mp4_record(video)
    inputs = {folder / saved["stored"] for saved in record["inputs"].values()}
    return {p for p in files_under(folder) if video.stem in p.name} | inputs


def what_stays(kept: list[Path], pruned: list[Path], folder: Path) -> set[Path]:
    """The files of the kept results, less those named after a pruned one (an export of a kept and a pruned one)."""
    files = set().union(*(files_of(v, folder) for v in kept))
    return {p for p in files if not any(v.stem in p.name for v in pruned)}


def total_bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def test_pruning_by_count_removes_every_file_of_a_pruned_result_in_every_subfolder(tmp_path):
    folder = tmp_path / "out"
    made = make_results(folder, tmp_path / "src", 5)
    pairs = [export(folder, made[0], made[4]), export(folder, made[1], made[2]), export(folder, made[3], made[4])]
    for video in made:  # each has files in every subfolder
        kinds = {p.parent.name if p.parent != folder else p.suffix for p in files_of(video, folder)}
        assert kinds == {".mp4", ".json", *results.SUBFOLDERS}, (video.name, kinds)
    kept, pruned = [made[0], made[3], made[4]], [made[1], made[2]]
    stays = what_stays(kept, pruned, folder)
    gone = {video: files_of(video, folder) - stays for video in pruned}
    foreign = [folder / "holiday.mp4", folder / results.THUMBNAILS_DIR / "holiday.jpg"]
    for path in foreign:
        path.write_bytes(b"not ours")
    stale = results.staged_path(results.proxy_path(made[0]))  # a proxy write that was killed an hour ago
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * results.STALE_STAGED_S,) * 2)
    in_flight = results.staged_path(results.export_path(folder, made[3], made[0]))
    in_flight.write_bytes(b"being written")

    removed = results.prune(folder, KeepPolicy(count=2), protect={made[0]})

    assert sorted(removed) == pruned  # the oldest past the newest two, but not the protected one
    left = files_under(folder)
    assert left == stays | set(foreign) | {in_flight}, sorted(left ^ (stays | set(foreign) | {in_flight}))
    for video in pruned:  # nothing of it anywhere, its own portrait and its export included
        assert {p.parent.name for p in gone[video]} == {"out", *results.SUBFOLDERS} and not gone[video] & left
    assert not pairs[1].exists() and pairs[0].exists() and pairs[2].exists()
    assert (folder / results.INPUTS_DIR / f"{review.sha256_file(ASSETS / 'speech_hello.wav')}.wav").exists()
    assert not stale.exists()
    assert [r.video for r in results.stored_results(folder)] == [made[4], made[3], made[0]]
    assert [e.video for e in review.scan_history(folder)] == [made[4], made[3], made[0]]


def test_the_size_cap_counts_every_subfolder(tmp_path):
    folder = tmp_path / "out"
    made = make_results(folder, tmp_path / "src", 4)
    export(folder, made[0], made[1])
    export(folder, made[2], made[3])
    export(folder, made[1], made[3])
    stays = what_stays(made[2:], made[:2], folder)  # the newest two, with everything they keep
    cap = total_bytes(stays)
    own_top_level = [total_bytes([v, results.sidecar_path(v)]) for v in made]
    assert sum(own_top_level[1:]) < cap, "the mp4s and sidecars alone would let a third result stay"

    assert sorted(results.prune(folder, KeepPolicy(max_bytes=cap))) == made[:2]
    assert files_under(folder) == stays and total_bytes(stays) <= cap
    assert results.prune(folder, KeepPolicy(max_bytes=cap - 1)) == [made[2]]  # a byte less: the older one goes
    assert files_under(folder) == files_of(made[3], folder)


def test_staged_writes_are_hidden_unique_and_leave_nothing_when_they_fail(tmp_path):
    target = tmp_path / "thumbnails" / "x.jpg"
    first, second = results.staged_path(target), results.staged_path(target)
    assert first != second and first.parent == target.parent and first.name.startswith(".")
    assert first.suffix == ".jpg" and results.STAGED_NAME.match(first.name)
    try:
        with results.atomic_write(target) as staged:
            staged.write_bytes(b"half")
            raise OSError("disk went away")
    except OSError:
        pass
    assert list(target.parent.iterdir()) == []
    with results.atomic_write(target) as staged:
        staged.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(target.parent.iterdir()) == [target]


def test_pins_keep_what_is_shown_and_release_what_is_not(tmp_path):
    folder = tmp_path / "out"
    made = make_results(folder, tmp_path / "src", 4)
    now = [0.0]
    pins = Pins(ttl_s=60, clock=lambda: now[0])
    pins.pin("tab-1", "selected", made[0])
    pins.pin("tab-2", "compare", made[1], made[2])
    assert pins.pinned() == {made[0], made[1], made[2]}
    assert results.prune(folder, KeepPolicy(count=1), protect={made[3], *pins.pinned()}) == []

    pins.pin("tab-1", "selected", made[3])  # a new selection releases the previous one
    assert pins.pinned() == {made[1], made[2], made[3]}
    assert results.prune(folder, KeepPolicy(count=1), protect=pins.pinned()) == [made[0]]

    now[0] = 50.0
    pins.renew("tab-2")  # tab-2 is still open (its page polls); tab-1 went quiet at 0
    now[0] = 100.0
    assert pins.pinned() == {made[1], made[2]}  # tab-1's pin lapsed
    pins.release("tab-2")  # tab-2 closed
    assert pins.pinned() == frozenset()
    assert sorted(results.prune(folder, KeepPolicy(count=1), protect=pins.pinned())) == [made[1], made[2]]
    assert files_under(folder) == files_of(made[3], folder)
