"""CRW per-frame augmentation: shapes, per-frame randomness, normalisation, crop boxes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from datasets.augment import ClipTransform, random_blur, random_resized_crop_boxes
from datasets.transforms import normalize_frames


def textured_clip(t: int = 4, h: int = 200, w: int = 300, seed: int = 0) -> np.ndarray:
    """``t`` copies of one smooth random RGB image, uint8 (T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)
    return np.repeat(image[None], t, axis=0)


def test_grid_mode_shape_and_dtype():
    out = ClipTransform("grid")(textured_clip(), rng=np.random.default_rng(0))
    assert tuple(out.shape) == (4, 49, 3, 64, 64) and out.dtype == torch.float32 and out.is_contiguous()


def test_dense_mode_shape_and_dtype():
    out = ClipTransform("dense")(textured_clip(t=3), rng=np.random.default_rng(0))
    assert tuple(out.shape) == (3, 3, 256, 256) and out.dtype == torch.float32


def test_grid_size_follows_size_patch_and_stride():
    transform = ClipTransform("grid", size=128, patch_size=32, patch_stride=16)
    assert transform.num_patches == 7 * 7
    assert tuple(transform(textured_clip(t=2)).shape) == (2, 49, 3, 32, 32)
    assert ClipTransform("grid", size=256, patch_size=64, patch_stride=64).num_patches == 16


def test_every_frame_gets_its_own_crop():
    # Identical frames: any difference comes from the crops. Kinetics-like 340x256 frames:
    # (a 16:9 frame admits no crop of area >= 0.8 with aspect <= 1.3, so torchvision's
    # RandomResizedCrop, and this one, fall back to the same centre crop for every frame.)
    clip = textured_clip(h=256, w=340)
    for mode in ("dense", "grid"):
        out = ClipTransform(mode)(clip, rng=np.random.default_rng(1))
        for t in range(1, len(clip)):
            assert (out[t] - out[0]).abs().mean() > 0.05, f"{mode}: frame {t} has the crop of frame 0"


def test_patches_get_their_own_jitter():
    clip = textured_clip(t=1)
    still = ClipTransform("grid", train=False)(clip)
    jittered = ClipTransform("grid", crop_scale=(1.0, 1.0), crop_ratio=(1.5, 1.5))(clip, rng=np.random.default_rng(0))
    # Same 256x256 frame (full-frame crop), but each window is re-cropped and rescaled.
    assert not torch.allclose(jittered, still, atol=1e-3)
    # A jittered patch still shows its own window: it is closer to it than to other windows.
    err = ((jittered[0][:, None] - still[0][None]) ** 2).mean(dim=(2, 3, 4))  # N, N
    assert (err.argmin(dim=1) == torch.arange(49)).float().mean() > 0.9


def test_eval_mode_is_deterministic_resize_and_normalize_frames():
    clip = textured_clip(h=256, w=256)
    dense = ClipTransform("dense", train=False)(clip)
    assert torch.allclose(dense, normalize_frames(clip), atol=1e-5)
    clip = textured_clip(h=180, w=320)
    a, b = ClipTransform("dense", train=False)(clip), ClipTransform("dense", train=False)(clip)
    assert torch.equal(a, b)
    resized = np.stack([cv2.resize(f, (256, 256), interpolation=cv2.INTER_LINEAR) for f in clip])
    assert torch.allclose(a, normalize_frames(resized), atol=1e-5)


def test_eval_grid_patches_are_the_windows_in_row_major_order():
    clip = textured_clip(t=2, h=256, w=256)
    grid = ClipTransform("grid", train=False)(clip)
    dense = normalize_frames(clip)
    for n in (0, 8, 13, 48):
        row, col = divmod(n, 7)
        window = dense[:, :, 32 * row:32 * row + 64, 32 * col:32 * col + 64]
        assert torch.allclose(grid[:, n], window, atol=1e-5)


def test_same_generator_same_output():
    clip = textured_clip()
    transform = ClipTransform("grid")
    a = transform(clip, rng=np.random.default_rng(7))
    b = transform(clip, rng=np.random.default_rng(7))
    c = transform(clip, rng=np.random.default_rng(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_resized_crop_boxes_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    h, w = 300, 400
    boxes = random_resized_crop_boxes(rng, h, w, 2000, scale=(0.8, 0.95), ratio=(0.7, 1.3))
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    area = bh * bw / (h * w)
    assert area.min() > 0.78 and area.max() < 0.98  # integer rounding of the sides
    aspect = bw / bh
    assert aspect.min() > 0.68 and aspect.max() < 1.33
    assert len({tuple(b) for b in boxes}) > 1500  # varied, not a constant crop
    # Patch jitter inside a 64x64 window.
    jitter = random_resized_crop_boxes(rng, 64, 64, 1000, scale=(0.7, 0.9), ratio=(3 / 4, 4 / 3))
    assert (jitter[:, 0] + jitter[:, 2] <= 64).all() and (jitter[:, 1] + jitter[:, 3] <= 64).all()
    assert 0.68 < (jitter[:, 2] * jitter[:, 3] / 64 ** 2).min() and (jitter[:, 2] * jitter[:, 3] / 64 ** 2).max() < 0.92


def test_random_resized_crop_falls_back_to_a_centre_crop():
    # A 10x1000 strip cannot hold 90% of its area at aspect <= 1.3: centre crop, aspect 1.3.
    boxes = random_resized_crop_boxes(np.random.default_rng(0), 10, 1000, 5, scale=(0.9, 0.9), ratio=(0.7, 1.3))
    assert (boxes == np.array([0, (1000 - 13) // 2, 10, 13])).all()


def test_mmaction_style_falls_back_to_the_centred_square_and_fgvc_crops_are_wide():
    boxes = random_resized_crop_boxes(np.random.default_rng(0), 10, 1000, 5, scale=(0.9, 0.9), ratio=(0.7, 1.3),
                                      attempts=20, fallback="square")
    assert (boxes == np.array([0, (1000 - 10) // 2, 10, 10])).all()
    boxes = random_resized_crop_boxes(np.random.default_rng(1), 256, 455, 2000, scale=(0.6, 1.0), ratio=(1.5, 2.0),
                                      attempts=20, fallback="square")
    top, left, bh, bw = boxes.T
    assert (top + bh <= 256).all() and (left + bw <= 455).all()
    fitted = bw != bh                                                    # not the fallback
    assert fitted.mean() > 0.9 and (bw[fitted] / bh[fitted]).min() > 1.48 and (bw[fitted] / bh[fitted]).max() < 2.02


def test_blur_is_pils_gaussian_blur_for_the_whole_clip_with_its_probability():
    clip = np.random.default_rng(0).integers(0, 256, (2, 24, 30, 3), dtype=np.uint8)  # sharp: a 0.1 px blur shows
    rng = np.random.default_rng(5)
    applied, radius = rng.random() < 1.0, rng.uniform(0.1, 0.2)
    blurred = random_blur(clip, 1.0, np.random.default_rng(5))
    assert applied and not np.array_equal(blurred, clip)
    for frame, out in zip(clip, blurred):                                # one radius for both frames
        assert np.array_equal(out, np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(radius))))
    assert random_blur(clip, 0.0, np.random.default_rng(5)) is clip
    transform = ClipTransform(mode="dense", size=16, same_crop=True, crop_style="mmaction", blur=0.8)
    assert transform(clip, rng=np.random.default_rng(0)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="crop_style"):
        ClipTransform(crop_style="pil")


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        ClipTransform()(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="mode"):
        ClipTransform("patches")


def test_timecycle_crop_resizes_the_short_side_and_cuts_one_corner_for_the_clip():
    """The authors' VLOG loader: short side to 256 (long side int(256 * long / short)), one
    240 crop at x ~ U{0 .. W - 241}, y likewise, for every frame (here 20 and 16)."""
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (3, 30, 45, 3), dtype=np.uint8)
    out = ClipTransform(mode="dense", size=16, short_side=20)(clip, rng=np.random.default_rng(5))
    draw = np.random.default_rng(5)
    left, top = int(draw.integers(0, 30 - 16)), int(draw.integers(0, 20 - 16))
    resized = np.stack([cv2.resize(f, (30, 20), interpolation=cv2.INTER_LINEAR) for f in clip])
    expected = normalize_frames(np.ascontiguousarray(resized[:, top:top + 16, left:left + 16]))
    assert out.shape == (3, 3, 16, 16) and torch.equal(out, expected)
    with pytest.raises(ValueError, match="short_side"):
        ClipTransform(mode="dense", size=16, short_side=12)


def test_frame_flip_mirrors_each_frame_on_its_own():
    clip = np.tile(np.arange(16, dtype=np.uint8)[None, None, :, None] * 10, (8, 16, 1, 3))
    plain = ClipTransform(mode="dense", size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    flipped = ClipTransform(mode="dense", size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), frame_flip=True)
    a = plain(clip, rng=np.random.default_rng(2))
    b = flipped(clip, rng=np.random.default_rng(2))
    mirrored = [bool(torch.equal(b[t], a[t].flip(-1))) for t in range(8)]
    kept = [bool(torch.equal(b[t], a[t])) for t in range(8)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
