"""Training augmentation of clips (docs/objectives.md, CRW and TimeCycle).

CRW (reference ``code/utils/augs.py``, ``--frame-aug grid``): every frame of a clip gets its own
``RandomResizedCrop(256, scale=(0.8, 0.95), ratio=(0.7, 1.3))``; ``grid`` mode then cuts 64x64
windows at stride 32 (row-major, 7x7 = 49 patches), each jittered by its own
``RandomResizedCrop(64, scale=(0.7, 0.9))``; ``dense`` mode keeps the whole frame (every feature
cell a node). The reference's optional frame transforms ``cj`` and ``flip`` act on each frame on
its own, after its crop: ``color_jitter=0.1`` (``ColorJitter(0.1, 0.1, 0.1, 0)``, :func:`color_jitter`)
and ``frame_flip=True`` (``RandomHorizontalFlip``). TimeCycle (the authors' VLOG loader): every
frame resized so that its short side is 256 px (``short_side``; long side ``int(256 * long /
short)``, bilinear), one 240x240 crop at the same random corner for all frames
(``x ~ U{0 .. W - 241}``, likewise y) and a horizontal flip of the whole clip with probability
1/2 (``short_side=256, size=240, flip=True``).

FGVC (its released training pipeline): one ``RandomResizedCrop`` per clip with areas in
(0.6, 1) and aspect ratios in (1.5, 2) as mmaction draws them (20 tries, else the centred
square; ``crop_style="mmaction"``), resized to 256x256, a flip of the clip with probability
1/2, and with probability 0.8 a Gaussian blur of radius U(0.1, 0.2) px for the whole clip
(``blur=0.8``, :func:`random_blur`).

Crop boxes ``(top, left, h, w)`` follow ``torchvision.transforms.RandomResizedCrop.get_params``
(10 tries, else a centre crop clamped to the ratio range), drawn from a ``numpy.random.Generator``;
so frames wider than ``1.3 / 0.8`` always get the fallback centre crop. Resizing is OpenCV on
``uint8`` (bilinear, area averaging when a crop shrinks on both sides); normalisation is
:func:`datasets.transforms.normalize_frames`, once, on the final pixels.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageFilter

from datasets.transforms import normalize_frames

_DEFAULT_PATCH_RATIO = (3.0 / 4.0, 4.0 / 3.0)


#: ``crop_style`` of :class:`ClipTransform`: where random resized crops follow torchvision
#: (10 tries, then a centred crop with the aspect clamped to the range; CRW) or mmaction
#: (20 tries, then the centred square of the short side; FGVC).
CROP_STYLES = {"torchvision": (10, "clamp"), "mmaction": (20, "square")}


def random_resized_crop_boxes(
    rng: np.random.Generator, height: int, width: int, count: int,
    scale: tuple[float, float], ratio: tuple[float, float], attempts: int = 10, fallback: str = "clamp",
) -> np.ndarray:
    """``count`` crop boxes ``(top, left, h, w)`` (int64, shape ``(count, 4)``) in a ``height x width`` image.

    Same distribution as torchvision's ``RandomResizedCrop.get_params``: area fraction
    ``s ~ U(scale)``, aspect ``r = exp(U(log ratio))``, ``w = round(sqrt(s * H * W * r))``,
    ``h = round(sqrt(s * H * W / r))``; the first of ``attempts`` tries that fits wins, its
    corner uniform over the valid positions; if none fits, the largest centred crop whose
    aspect is clamped to ``ratio`` (``fallback="clamp"``) or the centred square of side
    ``min(H, W)`` (``fallback="square"``, mmaction's ``RandomResizedCrop``).
    """
    area = height * width
    target = area * rng.uniform(scale[0], scale[1], size=(count, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(count, attempts)))
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(count)
    h, w = h[rows, first], w[rows, first]
    u = rng.random(size=(count, 2))
    top = np.floor(u[:, 0] * (height - h + 1)).astype(np.int64)
    left = np.floor(u[:, 1] * (width - w + 1)).astype(np.int64)

    none_fit = ~fits.any(axis=1)
    if none_fit.any() and fallback == "square":
        side = min(height, width)
        h[none_fit], w[none_fit] = side, side
        top[none_fit], left[none_fit] = (height - side) // 2, (width - side) // 2
    elif none_fit.any():  # fallback: centre crop with the aspect clamped to the range
        in_ratio = width / height
        if in_ratio < min(ratio):
            cw, ch = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            ch, cw = height, int(round(height * max(ratio)))
        else:
            cw, ch = width, height
        h[none_fit], w[none_fit] = ch, cw
        top[none_fit], left[none_fit] = (height - ch) // 2, (width - cw) // 2
    return np.stack([top, left, h, w], axis=1)


#: FGVC's ``RandomGaussianBlur`` sigma range, in pixels.
BLUR_SIGMA = (0.1, 0.2)


def random_blur(frames: np.ndarray, probability: float, rng: np.random.Generator,
                sigma: tuple[float, float] = BLUR_SIGMA) -> np.ndarray:
    """FGVC's ``RandomGaussianBlur(same_on_clip=True)``: with ``probability``, every frame of
    ``uint8 (T, H, W, 3)`` blurred by PIL's ``GaussianBlur(radius=s)`` with one ``s ~ U(sigma)``."""
    apply = rng.random() < probability
    radius = rng.uniform(*sigma)
    if not apply:
        return frames
    return np.stack([np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(radius=radius)))
                     for frame in frames])


def _luma(image: np.ndarray) -> np.ndarray:
    """``uint8 (..., 3)`` RGB -> ``uint8 (...)`` grey as PIL's ``convert("L")``:
    ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``."""
    rgb = image.astype(np.int64)
    return ((19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + (1 << 15)) >> 16).astype(np.uint8)


def _blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ``Image.blend(degenerate, image, factor)`` on uint8: ``d + f (i - d)`` in float32, clipped
    to [0, 255] and truncated."""
    out = degenerate.astype(np.float32) + np.float32(factor) * (image.astype(np.float32) - degenerate)
    return np.clip(out, 0, 255).astype(np.uint8)


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``torchvision.transforms.ColorJitter(s, s, s, 0)`` on a ``uint8 (H, W, 3)`` RGB frame.

    Brightness, contrast and saturation in a random order, each with its own factor
    ``f ~ U[max(0, 1 - s), 1 + s]``: brightness blends with black, contrast with the grey level
    ``int(mean(L) + 0.5)``, saturation with the frame's own grey ``L`` (PIL's ``ImageEnhance``).
    """
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    order = rng.permutation(3)
    return adjust_colours(image, order, rng.uniform(low, high, size=3))


def adjust_colours(image: np.ndarray, order, factors) -> np.ndarray:
    """Brightness (0), contrast (1) and saturation (2) of a ``uint8 (H, W, 3)`` RGB frame, applied in
    ``order`` with ``factors[k]`` for the k-th applied (PIL's ``ImageEnhance``, :func:`color_jitter`)."""
    for op, factor in zip(order, factors):
        if op == 0:
            degenerate = np.zeros_like(image)
        elif op == 1:
            degenerate = np.full_like(image, int(_luma(image).mean() + 0.5))
        else:
            degenerate = np.repeat(_luma(image)[..., None], 3, axis=-1)
        image = _blend(degenerate, image, factor)
    return image


def _short_side_resize(image: np.ndarray, short: int) -> np.ndarray:
    """``uint8 (h, w, 3)`` -> short side ``short``, long side ``int(short * long / short_side)`` (bilinear)."""
    h, w = image.shape[:2]
    size = (int(short * w / h), short) if h <= w else (short, int(short * h / w))   # (width, height)
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8 (h, w, 3)`` -> ``(size, size, 3)``: area averaging when shrinking both sides, else bilinear."""
    h, w = image.shape[:2]
    if h == size and w == size:
        return image
    interpolation = cv2.INTER_AREA if (h > size and w > size) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


class ClipTransform:
    """``uint8 (T, H, W, 3)`` RGB clip -> normalised float32 network input.

    - ``mode="grid"``: ``(T, N, 3, patch_size, patch_size)`` with ``N = n * n`` patches,
      ``n = (size - patch_size) // patch_stride + 1`` (7 for 256/64/32), row-major: patch
      ``r * n + c`` comes from the window at ``(top, left) = (r, c) * patch_stride``.
    - ``mode="dense"``: ``(T, 3, size, size)``.

    ``train=True``: each frame gets its own random resized crop (``crop_scale``,
    ``crop_ratio``) to ``size x size``; in grid mode each window its own random resized crop
    (``patch_scale``, ratio 3/4..4/3) resized back to ``patch_size``.
    ``same_crop=True``: one crop box (same distribution) for all frames of the clip.
    ``flip=True``: the whole clip is mirrored left-right with probability 1/2 (after the crop).
    ``crop_style``: the crop boxes' tries and fallback (:data:`CROP_STYLES`).
    ``blur > 0``: with that probability the clip is blurred after the flip (:func:`random_blur`, FGVC).
    ``color_jitter > 0`` / ``frame_flip=True``: each frame jittered (:func:`color_jitter`) / mirrored
    with probability 1/2 on its own, in that order, after its crop (training only).
    ``short_side > 0`` (training): TimeCycle's crop (module docstring) instead of random resized crops.
    ``train=False``: no randomness: the whole frame resized to ``size x size``, windows taken
    as they are.

    Call as ``transform(frames)`` or ``transform(frames, rng=numpy_generator)`` (the
    dataset passes its per-item generator, so results are reproducible).
    """

    accepts_rng = True

    def __init__(
        self,
        mode: str = "grid",
        size: int = 256,
        patch_size: int = 64,
        patch_stride: int = 32,
        crop_scale=(0.8, 0.95),
        crop_ratio=(0.7, 1.3),
        patch_scale=(0.7, 0.9),
        train: bool = True,
        same_crop: bool = False,
        flip: bool = False,
        color_jitter: float = 0.0,
        frame_flip: bool = False,
        short_side: int = 0,
        crop_style: str = "torchvision",
        blur: float = 0.0,
    ):
        if mode not in ("grid", "dense"):
            raise ValueError(f"mode must be 'grid' or 'dense', got {mode!r}")
        if mode == "grid" and not 0 < patch_size <= size:
            raise ValueError(f"patch_size {patch_size} must be in (0, size={size}]")
        if patch_stride < 1:
            raise ValueError(f"patch_stride must be >= 1, got {patch_stride}")
        self.mode = mode
        self.size = int(size)
        self.patch_size = int(patch_size)
        self.patch_stride = int(patch_stride)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.patch_scale = tuple(patch_scale)
        self.train = bool(train)
        self.same_crop = bool(same_crop)
        self.flip = bool(flip)
        self.color_jitter = float(color_jitter)
        self.frame_flip = bool(frame_flip)
        self.short_side = int(short_side)
        if crop_style not in CROP_STYLES:
            raise ValueError(f"crop_style must be one of {', '.join(CROP_STYLES)}, got {crop_style!r}")
        self.crop_style = crop_style
        self.blur = float(blur)
        if 0 < self.short_side < self.size:
            raise ValueError(f"short_side {short_side} must be >= size {size}")
        n = (self.size - self.patch_size) // self.patch_stride + 1
        self.grid_side = n
        offsets = np.arange(n) * self.patch_stride
        # Window corners (top, left), row-major: (N, 2).
        self.window_corners = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), axis=-1).reshape(-1, 2)

    @property
    def num_patches(self) -> int:
        return self.grid_side ** 2

    def __repr__(self) -> str:
        return (f"ClipTransform(mode={self.mode!r}, size={self.size}, patch_size={self.patch_size}, "
                f"patch_stride={self.patch_stride}, crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}, "
                f"patch_scale={self.patch_scale}, train={self.train}, same_crop={self.same_crop}, flip={self.flip}, "
                f"color_jitter={self.color_jitter}, frame_flip={self.frame_flip}, short_side={self.short_side}, "
                f"crop_style={self.crop_style!r}, blur={self.blur})")

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB frames shaped (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if rng is None:
            rng = np.random.default_rng()
        if self.train and self.short_side:
            resized = self._fixed_crops(frames, rng)
        elif self.train and self.same_crop:
            top, left, h, w = random_resized_crop_boxes(rng, frames.shape[1], frames.shape[2], 1, self.crop_scale,
                                                        self.crop_ratio, *CROP_STYLES[self.crop_style])[0]
            resized = np.stack([_resize(frame[top:top + h, left:left + w], self.size) for frame in frames])
        else:
            resized = np.stack([self._frame(frame, rng) for frame in frames])  # T, S, S, 3 uint8
        if self.train and (self.color_jitter > 0 or self.frame_flip):
            resized = np.stack([self._frame_transforms(frame, rng) for frame in resized])
        if self.train and self.flip and rng.random() < 0.5:
            resized = np.ascontiguousarray(resized[:, :, ::-1])
        if self.train and self.blur > 0:
            resized = random_blur(resized, self.blur, rng)
        if self.mode == "dense":
            return normalize_frames(resized)  # T, 3, S, S
        patches = self._patches(resized, rng)  # T * N, P, P, 3 uint8
        return rearrange(normalize_frames(patches), "(t n) c py px -> t n c py px", t=len(frames))

    def _frame(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``uint8 (H, W, 3)`` -> ``(S, S, 3)``: random resized crop, or plain resize when not training."""
        if not self.train:
            return _resize(frame, self.size)
        top, left, h, w = random_resized_crop_boxes(rng, frame.shape[0], frame.shape[1], 1, self.crop_scale,
                                                    self.crop_ratio, *CROP_STYLES[self.crop_style])[0]
        return _resize(frame[top:top + h, left:left + w], self.size)

    def _fixed_crops(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """TimeCycle: short side resized to ``short_side``, one ``size`` crop at one random corner for all frames."""
        resized = np.stack([_short_side_resize(frame, self.short_side) for frame in frames])
        height, width = resized.shape[1:3]
        left = int(rng.integers(0, max(1, width - self.size)))
        top = int(rng.integers(0, max(1, height - self.size)))
        return np.ascontiguousarray(resized[:, top:top + self.size, left:left + self.size])

    def _frame_transforms(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """CRW's per-frame ``cj`` then ``flip`` on a cropped ``uint8 (S, S, 3)`` frame."""
        if self.color_jitter > 0:
            frame = color_jitter(frame, self.color_jitter, rng)
        if self.frame_flip and rng.random() < 0.5:
            frame = frame[:, ::-1]
        return frame

    def _patches(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``uint8 (T, S, S, 3)`` -> ``(T * N, P, P, 3)`` windows (row-major), jittered when training."""
        t, n, p = len(frames), self.num_patches, self.patch_size
        out = np.empty((t * n, p, p, 3), dtype=np.uint8)
        if self.train:
            jitter = random_resized_crop_boxes(rng, p, p, t * n, self.patch_scale, _DEFAULT_PATCH_RATIO)
        for k in range(t * n):
            frame = frames[k // n]
            wy, wx = self.window_corners[k % n]
            if not self.train:
                out[k] = frame[wy:wy + p, wx:wx + p]
                continue
            top, left, h, w = jitter[k]
            crop = frame[wy + top:wy + top + h, wx + left:wx + left + w]
            cv2.resize(crop, (p, p), dst=out[k], interpolation=cv2.INTER_LINEAR)
        return out
