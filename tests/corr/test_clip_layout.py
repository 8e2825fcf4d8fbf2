"""TimeCycle clip layout: frame offsets in the clip sampler, one crop and one flip per clip."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.augment import ClipTransform
from datasets.video import VideoClipDataset


def grey_folder(folder: Path, num_frames: int) -> Path:
    """Frame ``k`` is grey level ``10 + 5 k`` (so a decoded frame tells its index)."""
    folder.mkdir(parents=True)
    for k in range(num_frames):
        cv2.imwrite(str(folder / f"{k:05d}.png"), np.full((12, 16, 3), 10 + 5 * k, np.uint8))
    return folder


def test_frame_offsets_place_the_clip_frames_and_set_the_needed_length(tmp_path):
    grey_folder(tmp_path / "frames" / "long", 40)
    grey_folder(tmp_path / "frames" / "short", 20)
    offsets = (0, 2, 4, 6, 15, 17)
    # frame folders count as 24 fps: 12 fps -> a step of 2 source frames; a clip spans 17 * 2 + 1 = 35
    dataset = VideoClipDataset(tmp_path / "frames", clip_len=6, fps=12.0, clips_per_video=3, frame_offsets=offsets,
                               cache_dir=tmp_path / "cache", backend="opencv")
    assert [Path(v.path).name for v in dataset.videos] == ["long"]
    assert dataset.bad_videos and "a clip needs 35" in dataset.bad_videos[0][1]
    starts = set()
    for i in range(len(dataset)):
        sample = dataset[i]
        start = sample["frame_indices"][0]
        starts.add(start)
        assert sample["frame_indices"] == [start + 2 * o for o in offsets]
        assert 0 <= start <= 40 - 35
        levels = sample["clip"].numpy()[:, 0, 0, 0].astype(int).tolist()
        assert levels == [10 + 5 * k for k in sample["frame_indices"]]
    assert len(starts) > 1
    with pytest.raises(ValueError, match="strictly increasing"):
        VideoClipDataset(tmp_path / "frames", clip_len=3, frame_offsets=(0, 2, 2), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="clip_len = 4"):
        VideoClipDataset(tmp_path / "frames", clip_len=4, frame_offsets=(0, 1, 2), cache_dir=tmp_path / "cache")


def textured_clip(num_frames: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)   # square: crops vary (augment docstring)
    return np.stack([frame] * num_frames)


def test_same_crop_cuts_every_frame_alike_and_the_default_does_not():
    clip = textured_clip()
    shared = ClipTransform(mode="dense", size=24, same_crop=True)(clip, rng=np.random.default_rng(1))
    assert all(np.array_equal(shared[0].numpy(), shared[t].numpy()) for t in range(1, 3))
    own = ClipTransform(mode="dense", size=24)(clip, rng=np.random.default_rng(1))
    assert not np.array_equal(own[0].numpy(), own[1].numpy())


def test_flip_mirrors_the_whole_clip_about_half_the_time():
    clip = textured_clip()
    plain = ClipTransform(mode="dense", size=24, same_crop=True)
    flipping = ClipTransform(mode="dense", size=24, same_crop=True, flip=True)
    flipped = 0
    for seed in range(40):
        a = plain(clip, rng=np.random.default_rng(seed)).numpy()
        b = flipping(clip, rng=np.random.default_rng(seed)).numpy()     # same crop: the flip is drawn after it
        if np.array_equal(a, b[..., ::-1]) and not np.array_equal(a, b):
            flipped += 1
        else:
            assert np.array_equal(a, b)
    assert 10 <= flipped <= 30
