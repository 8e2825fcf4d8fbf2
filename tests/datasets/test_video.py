"""Video clip dataset: sources, index cache, bad videos, clip sampling, backends, real clips."""
from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import datasets.video_decode as video_decode
import datasets.video_index as video_index
from datasets.augment import ClipTransform
from datasets.video import (
    VideoClipDataset,
    collate_clips,
    frame_step,
    measure_decode_throughput,
)
from datasets.video_decode import VideoReadError, read_clip

HAS_DECORD = video_decode._decord_available()
BACKENDS = ["opencv"] + (["decord"] if HAS_DECORD else [])


def level(k: int) -> int:
    """Grey level of synthetic frame ``k`` (distinct for k < 30, survives lossy coding)."""
    return 20 + 7 * (k % 30)


def make_video(path: Path, num_frames: int, fps: float = 24.0, size=(64, 48), textured: bool = False) -> Path:
    """An mp4v (or MJPG for .avi) video whose frame ``k`` is grey level ``level(k)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    assert writer.isOpened(), f"cannot write {path}"
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), (0, 0), 2)
    for k in range(num_frames):
        frame = np.full((size[1], size[0], 3), level(k), np.uint8)
        if textured:
            frame = np.roll(texture, 2 * k, axis=1)
        writer.write(frame)
    writer.release()
    return path


def make_frame_folder(folder: Path, num_frames: int, ext: str = ".jpg", padded: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(num_frames):
        name = f"{k:05d}{ext}" if padded else f"{k}{ext}"
        cv2.imwrite(str(folder / name), np.full((24, 32, 3), level(k), np.uint8))
    return folder


def decoded_frame_ids(frames: np.ndarray) -> list[int]:
    """Recover each frame's index from its grey level (nearest level)."""
    levels = np.array([level(k) for k in range(30)])
    means = frames.reshape(len(frames), -1).mean(axis=1)
    # Lossy coding shifts levels by a few units; levels are 7 apart.
    return [int(np.argmin(np.abs(levels - m - 2.5))) for m in means]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "kinetics"
    make_video(root / "abseiling" / "a.mp4", 30)
    make_video(root / "bowling" / "deeper" / "b.avi", 25)
    (root / "notes.txt").write_text("not a video\n")
    return root


# ------------------------------------------------------------------------------ sources


def test_folder_tree_is_indexed_and_cache_written(tree: Path):
    ds = VideoClipDataset(tree, clip_len=4, frame_skip=2, clips_per_video=3, backend="opencv")
    assert sorted(Path(v.path).name for v in ds.videos) == ["a.mp4", "b.avi"]
    assert {Path(v.path).name: v.num_frames for v in ds.videos} == {"a.mp4": 30, "b.avi": 25}
    assert all(v.fps == pytest.approx(24.0) for v in ds.videos)
    assert len(ds) == 2 * 3 and ds.bad_videos == [] and ds.backend == "opencv"
    assert (tree / ".corr-index.json").is_file() and ds.index_cache_path == tree / ".corr-index.json"
    sample = ds[0]
    assert sample["clip"].dtype == torch.uint8 and tuple(sample["clip"].shape) == (4, 48, 64, 3)
    assert sample["skipped"] == [] and Path(sample["video"]).is_file()


def test_cache_is_reused_then_invalidated_by_a_change(tree: Path, monkeypatch):
    VideoClipDataset(tree, clip_len=4, frame_skip=1, backend="opencv")
    calls: list[str] = []
    real_probe = video_index.probe_video

    def counting_probe(path, backend):
        calls.append(path)
        return real_probe(path, backend)

    monkeypatch.setattr(video_index, "probe_video", counting_probe)
    again = VideoClipDataset(tree, clip_len=4, frame_skip=1, backend="opencv")
    assert calls == [] and again.num_probed == 0 and len(again.videos) == 2

    make_video(tree / "abseiling" / "a.mp4", 12)  # rewritten: new size/mtime
    os.utime(tree / "abseiling" / "a.mp4", ns=(1, 1))
    make_video(tree / "new" / "c.mp4", 10)
    changed = VideoClipDataset(tree, clip_len=4, frame_skip=1, backend="opencv")
    assert sorted(Path(p).name for p in calls) == ["a.mp4", "c.mp4"]
    assert {Path(v.path).name: v.num_frames for v in changed.videos} == {"a.mp4": 12, "b.avi": 25, "c.mp4": 10}


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
def test_cache_keeps_metadata_of_both_backends(tree: Path, monkeypatch):
    VideoClipDataset(tree, frame_skip=1, backend="opencv")
    assert VideoClipDataset(tree, frame_skip=1, backend="decord").num_probed == 2
    assert VideoClipDataset(tree, frame_skip=1, backend="opencv").num_probed == 0
    assert VideoClipDataset(tree, frame_skip=1, backend="decord").num_probed == 0


def test_cache_dir_used_when_given(tree: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    ds = VideoClipDataset(tree, backend="opencv", cache_dir=cache, frame_skip=1)
    assert ds.index_cache_path.parent == cache and ds.index_cache_path.is_file()
    assert not (tree / ".corr-index.json").exists()


def test_unwritable_data_folder_falls_back_to_user_cache(tree: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_write = video_index.atomic_write_bytes

    def refuse_data_folder(path, data):
        if Path(path).parent == tree:
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(video_index, "atomic_write_bytes", refuse_data_folder)
    ds = VideoClipDataset(tree, backend="opencv", frame_skip=1)
    assert not (tree / ".corr-index.json").exists()
    assert ds.index_cache_path.parent == tmp_path / "xdg" / "corr" and ds.index_cache_path.is_file()
    again = VideoClipDataset(tree, backend="opencv", frame_skip=1)
    assert again.num_probed == 0


def test_list_file_with_comments_relative_and_absolute_paths(tmp_path: Path):
    data = tmp_path / "data"
    make_video(data / "x" / "one.mp4", 20)
    two = make_video(tmp_path / "elsewhere" / "two.mp4", 20)
    make_frame_folder(data / "frames" / "seq", 15)
    make_video(data / "x" / "unlisted.mp4", 20)
    listing = data / "train.txt"
    listing.write_text(f"# training videos\nx/one.mp4\n\n{two}  # absolute\nframes/seq\nmissing.mp4\n")
    ds = VideoClipDataset(listing, clip_len=4, frame_skip=1, backend="opencv")
    assert sorted(Path(v.path).name for v in ds.videos) == ["one.mp4", "seq", "two.mp4"]
    assert [Path(p).name for p, _ in ds.bad_videos] == ["missing.mp4"]
    assert (data / ".corr-index-train.json").is_file()


def test_frame_folders_any_depth_in_natural_order(tmp_path: Path):
    root = tmp_path / "JPEGImages" / "480p"
    make_frame_folder(root / "bear", 12, ".jpg")
    make_frame_folder(root / "group" / "camel", 14, ".png", padded=False)  # 0.png .. 13.png
    ds = VideoClipDataset(root, clip_len=4, frame_skip=3, backend="opencv")
    assert {Path(v.path).name: v.num_frames for v in ds.videos} == {"bear": 12, "camel": 14}
    frames = read_clip(root / "group" / "camel", [2, 9, 10, 13], "opencv")
    assert frames.shape == (4, 24, 32, 3) and frames.dtype == np.uint8
    assert np.abs(frames.reshape(4, -1).mean(1) - [level(k) for k in (2, 9, 10, 13)]).max() < 1.0


def test_single_video_file_source(tmp_path: Path):
    path = make_video(tmp_path / "one.mp4", 20)
    ds = VideoClipDataset(path, clip_len=4, frame_skip=1, backend="opencv")
    assert [v.path for v in ds.videos] == [str(path)]


# ---------------------------------------------------------------------------- bad input


def test_corrupt_and_short_videos_are_skipped_and_counted(tmp_path: Path):
    root = tmp_path / "videos"
    make_video(root / "good.mp4", 30)
    make_video(root / "short.mp4", 5)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for backend in BACKENDS:
        ds = VideoClipDataset(root, clip_len=4, frame_skip=2, clips_per_video=2, backend=backend,
                              cache_dir=tmp_path / backend)
        assert [Path(v.path).name for v in ds.videos] == ["good.mp4"]
        reasons = {Path(p).name: r for p, r in ds.bad_videos}
        assert set(reasons) == {"corrupt.mp4", "short.mp4"}
        assert "too short" in reasons["short.mp4"] and "corrupt.mp4" in reasons["corrupt.mp4"]
        assert len(ds) == 2


def test_video_failing_at_read_time_is_replaced_and_reported(tmp_path: Path):
    root = tmp_path / "videos"
    for name in "abcd":
        make_video(root / f"{name}.mp4", 20)
    ds = VideoClipDataset(root, clip_len=4, frame_skip=1, clips_per_video=1, backend="opencv")
    broken = root / "b.mp4"
    broken.write_bytes(b"\x00" * 1000)  # breaks after indexing
    sample = ds[1]
    assert [Path(p).name for p, _ in sample["skipped"]] == ["b.mp4"]
    assert "b.mp4" in sample["skipped"][0][1]
    assert Path(sample["video"]).name != "b.mp4" and sample["clip"].shape[0] == 4
    assert ds[1]["video"] == sample["video"]  # the replacement is deterministic
    batch = collate_clips([ds[i] for i in range(4)])
    assert batch["clip"].shape == (4, 4, 48, 64, 3) and len(batch["videos"]) == 4
    assert [Path(p).name for p, _ in batch["skipped"]] == ["b.mp4"]


def test_every_video_failing_gives_a_clear_error(tmp_path: Path):
    root = tmp_path / "videos"
    make_video(root / "a.mp4", 20)
    ds = VideoClipDataset(root, clip_len=4, frame_skip=1, backend="opencv")
    (root / "a.mp4").write_bytes(b"junk")
    with pytest.raises(VideoReadError, match="a.mp4"):
        ds[0]


def test_no_usable_video_is_a_clear_error(tmp_path: Path):
    make_video(tmp_path / "v" / "short.mp4", 2)
    with pytest.raises(ValueError, match="no usable video"):
        VideoClipDataset(tmp_path / "v", clip_len=4, frame_skip=1, backend="opencv")
    with pytest.raises(FileNotFoundError):
        VideoClipDataset(tmp_path / "nothing-here", backend="opencv")


def test_read_clip_errors_name_the_file(tmp_path: Path):
    path = make_video(tmp_path / "v.mp4", 10)
    with pytest.raises(VideoReadError, match="v.mp4"):
        read_clip(path, [3, 50], "opencv")
    with pytest.raises(VideoReadError, match="nope.mp4"):
        read_clip(tmp_path / "nope.mp4", [0], "opencv")


# ------------------------------------------------------------------------------ sampling


def test_frame_step_from_skip_or_fps():
    assert frame_step(24.0, 8.0, None) == 3
    assert frame_step(30.0, 8.0, None) == 4  # round(3.75)
    assert frame_step(25.0, 8.0, None) == 3
    assert frame_step(5.0, 8.0, None) == 1
    assert frame_step(24.0, 8.0, 5) == 5
    assert frame_step(0.0, 8.0, None) == 1 and frame_step(24.0, None, None) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_frames_follow_fps_and_frame_skip(tmp_path: Path, backend: str):
    make_video(tmp_path / "v" / "a.mp4", 30, fps=24.0)
    by_fps = VideoClipDataset(tmp_path / "v", clip_len=4, fps=8.0, clips_per_video=5, backend=backend,
                              cache_dir=tmp_path / "c")
    by_skip = VideoClipDataset(tmp_path / "v", clip_len=4, frame_skip=2, clips_per_video=5, backend=backend,
                               cache_dir=tmp_path / "c")
    for ds, skip in [(by_fps, 3), (by_skip, 2)]:
        for i in range(len(ds)):
            sample = ds[i]
            indices = sample["frame_indices"]
            assert np.all(np.diff(indices) == skip) and 0 <= indices[0] and indices[-1] < 30
            assert decoded_frame_ids(sample["clip"].numpy()) == indices


def test_clips_of_a_video_spread_over_it(tmp_path: Path):
    make_video(tmp_path / "v" / "a.mp4", 30)
    ds = VideoClipDataset(tmp_path / "v", clip_len=4, frame_skip=2, clips_per_video=3, backend="opencv")
    for epoch in range(3):
        ds.set_epoch(epoch)
        starts = [ds.clip_indices(ds.videos[0], slot, ds.item_rng(slot))[0] for slot in range(3)]
        # 24 valid starts (0..23) in three parts of 8.
        assert [s // 8 for s in starts] == [0, 1, 2]


def test_samples_are_deterministic_given_seed_epoch_index(tmp_path: Path):
    for name in "ab":
        make_video(tmp_path / "v" / f"{name}.mp4", 30)
    make_ds = lambda seed: VideoClipDataset(tmp_path / "v", clip_len=4, frame_skip=1, clips_per_video=2,  # noqa: E731
                                            backend="opencv", seed=seed,
                                            transform=ClipTransform("dense", size=32))
    first, second, other = make_ds(0), make_ds(0), make_ds(1)
    for i in range(len(first)):
        a, b = first[i], second[i]
        assert a["frame_indices"] == b["frame_indices"] and torch.equal(a["clip"], b["clip"])
    assert any(first[i]["frame_indices"] != other[i]["frame_indices"] for i in range(len(first)))
    before = [first[i]["frame_indices"] for i in range(len(first))]
    first.set_epoch(1)
    after = [first[i]["frame_indices"] for i in range(len(first))]
    assert before != after
    clone = pickle.loads(pickle.dumps(first))  # DataLoader workers get a copy
    assert [clone[i]["frame_indices"] for i in range(len(clone))] == after


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
def test_decord_and_opencv_decode_the_same_frames(tmp_path: Path):
    path = make_video(tmp_path / "t.mp4", 40, size=(96, 64), textured=True)
    indices = [0, 7, 8, 21, 39, 7]
    a = read_clip(path, indices, "decord").astype(np.float32)
    b = read_clip(path, indices, "opencv").astype(np.float32)
    assert a.shape == b.shape == (6, 64, 96, 3)
    assert np.abs(a - b).mean() < 2.0
    # Neighbouring frames differ clearly, so the agreement above is not trivially true.
    assert np.abs(a[1] - a[2]).mean() > 5 * np.abs(a - b).mean() + 1.0


def test_backend_argument_is_checked(tmp_path: Path):
    with pytest.raises(ValueError, match="backend"):
        VideoClipDataset(tmp_path, backend="ffmpeg")


def test_measure_decode_throughput(tmp_path: Path):
    make_video(tmp_path / "v" / "a.mp4", 20)
    ds = VideoClipDataset(tmp_path / "v", clip_len=4, frame_skip=1, backend="opencv")
    stats = measure_decode_throughput(ds, 3)
    assert stats["num_clips"] == 3 and stats["clips_per_s"] > 0
    assert stats["frames_per_s"] == pytest.approx(4 * stats["clips_per_s"])


def test_data_loader_with_workers(tmp_path: Path):
    for name in "ab":
        make_video(tmp_path / "v" / f"{name}.mp4", 20)
    ds = VideoClipDataset(tmp_path / "v", clip_len=4, frame_skip=1, clips_per_video=2, backend="opencv",
                          transform=ClipTransform("grid", size=128, patch_size=64, patch_stride=32))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_clips)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["clip"].shape == (2, 4, 9, 3, 64, 64)
    assert torch.equal(batches[1]["clip"][0], ds[2]["clip"])


# ----------------------------------------------------------------------------- real data


def test_real_clips(tmp_path: Path, shared_clips: Path):
    expected = {"bigbuckbunny.mp4": (132, 720, 1280), "bikes.mp4": (250, 272, 640),
                "carphone_pristine.mp4": (120, 144, 176)}
    for backend in BACKENDS:
        ds = VideoClipDataset(shared_clips, clip_len=4, fps=8.0, clips_per_video=1, backend=backend,
                              cache_dir=tmp_path / backend)
        assert ds.bad_videos == [] and len(ds.videos) == 3
        for i, info in enumerate(ds.videos):
            name = Path(info.path).name
            num_frames, height, width = expected[name]
            assert info.num_frames == num_frames
            sample = ds[i]
            assert tuple(sample["clip"].shape) == (4, height, width, 3)
            assert np.diff(sample["frame_indices"]).tolist() == [frame_step(info.fps, 8.0, None)] * 3
            assert sample["clip"].float().std() > 5  # real pixels, not a blank frame


# The index scan is safe: link loops, duplicate links, special files, files that hang.


@pytest.fixture
def two_videos(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    make_video(root / "a" / "one.mp4", 12)
    make_video(root / "b" / "two.mp4", 12)
    return root


def test_a_symlink_loop_and_duplicate_links_add_no_video(two_videos):
    os.symlink(two_videos, two_videos / "a" / "loop")                 # a loop back to the root
    os.symlink(two_videos / "b", two_videos / "b-again")               # the same folder twice
    os.symlink(two_videos / "a" / "one.mp4", two_videos / "one-link.mp4")  # the same file twice
    index = video_index.build_index(two_videos, "opencv", cache_dir=two_videos.parent / "cache")
    real = sorted(os.path.realpath(two_videos / r["path"]) for r in index.records)
    assert real == sorted(os.path.realpath(two_videos / name) for name in ("a/one.mp4", "b/two.mp4"))
    assert all(r["error"] is None for r in index.records)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_named_like_a_video_is_skipped_and_listed(two_videos):
    fifo = two_videos / "pipe.mp4"
    os.mkfifo(fifo)
    start = time.monotonic()
    dataset = VideoClipDataset(two_videos, clip_len=2, frame_skip=1, backend="opencv",
                               cache_dir=two_videos.parent / "cache")
    assert time.monotonic() - start < 30                                # never opened, so never hangs
    assert len(dataset.videos) == 2
    assert dataset.bad_videos == [(str(fifo), "a special file (FIFO, socket or device), not a video")]


def test_a_probe_that_hangs_times_out_and_the_rest_are_probed():
    release = threading.Event()

    def probe(k: int) -> list:
        if k == 1:
            release.wait()                                             # never answers within the limit
        return [k + 10, 25.0, None]

    start = time.monotonic()
    results = video_index.probe_all(probe, [0, 1, 2, 3], workers=1, timeout=0.5)
    elapsed = time.monotonic() - start
    release.set()
    assert results[0] == [10, 25.0, None] and results[2] == [12, 25.0, None] and results[3] == [13, 25.0, None]
    assert results[1][:2] == [0, 0.0] and results[1][2].startswith("timed out")
    assert elapsed < 5
