"""The encoders of Spa-then-Temp, FGVC, UVC and MAST against by-hand re-implementations of the
authors' pipelines (their OpenCV LAB call on the 8-bit frame, their normalisation, their
network written with functional ops), on random weights and an odd-sized frame."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr.encoders import build_encoder, normalised_lab, opencv_lab
from corr.encoders.lab import frames_to_bytes
from datasets.transforms import normalize_frames

H, W = 37, 53


@pytest.fixture
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, H, W, 3), dtype=np.uint8)


def _randomise(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Random weights and BN statistics (variances > 0), loaded into ``encoder``; returns them."""
    torch.manual_seed(0)
    state = {k: (v + torch.rand_like(v) - 0.25 * v.is_floating_point()) if v.is_floating_point() else v
             for k, v in encoder.state_dict().items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = torch.rand_like(state[k]) + 0.5
        elif k.endswith(".weight") and state[k].ndim == 4:
            state[k] = torch.randn_like(state[k]) / math.sqrt(state[k][0].numel())
    encoder.load_state_dict(state)
    return state


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def _basic_block(x, sd, p, stride):
    out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
    out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
    if f"{p}.downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
    return F.relu(out + x)


def _resnet18(x, sd, pool, strides, last):
    """The mmcv / torchvision ResNet-18 forward: stem, optional pool, stages 1..last."""
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    if pool == "max":
        x = F.max_pool2d(x, 3, 2, 1)
    elif pool == "avg":
        x = F.avg_pool2d(x, 3, 2, 1)
    for i in range(1, last + 1):
        x = _basic_block(_basic_block(x, sd, f"layer{i}.0", strides[i - 1]), sd, f"layer{i}.1", 1)
    return x


def _lab_input(frames):
    """Spa-then-Temp / FGVC: ``cv2.cvtColor(float32(img) / 255, RGB2Lab)``, then mmcv's
    ``imnormalize`` with mean (50, 0, 0), std (50, 127, 127): ``(x - mean) * (1 / std)``."""
    out = []
    for img in frames:
        lab = cv2.cvtColor(np.float32(img) / 255.0, cv2.COLOR_RGB2Lab)
        out.append((lab - np.array([50, 0, 0], np.float32)) * (1 / np.array([50.0, 127.0, 127.0])))
    return torch.from_numpy(np.stack(out).astype(np.float32)).permute(0, 3, 1, 2)


def _assert_close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_bytes_round_trip_and_opencv_lab(frames):
    every = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    assert np.array_equal(frames_to_bytes(normalize_frames(every)), every)
    lab = opencv_lab(normalize_frames(frames))
    assert lab.shape == (2, 3, H, W) and lab.dtype == torch.float32
    bgr = np.float32(frames[1][..., ::-1]) / 255.0  # MAST's and UVC's order: cv2.imread gives BGR
    assert np.array_equal(lab[1].permute(1, 2, 0).numpy(), cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab))
    # OpenCV's table interpolation stays within a few tenths of the closed-form CIE formula
    rgb = frames.astype(np.float64) / 255
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = rgb @ np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]]).T / np.array([0.950456, 1.0, 1.088754])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    cie = np.stack([np.where(xyz[..., 1] > 0.008856, 116 * f[..., 1] - 16, 903.3 * xyz[..., 1]),
                    500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=1)
    assert np.abs(lab.numpy() - cie).max() < 0.5
    assert np.array_equal(opencv_lab(normalize_frames(frames), "uint8")[0].permute(1, 2, 0).numpy(),
                          cv2.cvtColor(frames[0], cv2.COLOR_RGB2LAB).astype(np.float32))
    _assert_close(normalised_lab(normalize_frames(frames)), _lab_input(frames))


@pytest.mark.parametrize("name, pool, strides, stride", [
    ("resnet18-stt", "none", (1, 2, 2, 1), 8),
    ("resnet18-stt-s4", "avg", (1, 1, 1, 1), 4),
    ("resnet18-fgvc", "none", (1, 1, 1, 4), 2),
])
def test_lab_resnets_match_the_authors_pipeline(name, pool, strides, stride, frames):
    encoder = build_encoder(name).eval()
    sd = _randomise(encoder)
    with torch.no_grad():
        got = encoder(normalize_frames(frames))
        want = _resnet18(_lab_input(frames), sd, pool, strides, last=3)
    assert encoder.stride == stride and got.shape == (2, 256, math.ceil(H / stride), math.ceil(W / stride))
    _assert_close(got, want)


def test_uvc_matches_its_test_script(frames):
    encoder = build_encoder("resnet18-uvc").eval()
    sd = _randomise(encoder)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # read_frame: BGR uint8 -> COLOR_BGR2LAB; ToTensor without scaling; Normalize(128, 128);
    # the model: channel 0 repeated, (x + 1) / 2, ImageNet normalisation
    lab = np.stack([cv2.cvtColor(np.ascontiguousarray(img[..., ::-1]), cv2.COLOR_BGR2LAB) for img in frames])
    x = (torch.from_numpy(lab).permute(0, 3, 1, 2).float() - 128) / 128
    gray = (x[:, :1].repeat(1, 3, 1, 1) + 1) / 2
    with torch.no_grad():
        got = encoder(normalize_frames(frames))
        want = _resnet18((gray - mean) / std, sd, "max", (1, 2, 1, 1), last=4)
    assert encoder.stride == 8 and got.shape == (2, 512, math.ceil(H / 8), math.ceil(W / 8))
    _assert_close(got, want)


def test_mast_matches_its_model(frames):
    encoder = build_encoder("mast").eval()
    sd = _randomise(encoder)

    def bn(x, p):
        return _bn(x, sd, f"feature_extraction.{p}")

    def block(x, p, stride):  # ResidualBlock: relu(left(x) + shortcut(x))
        w = f"feature_extraction.{p}"
        out = F.relu(bn(F.conv2d(x, sd[f"{w}.left.0.weight"], stride=stride, padding=1), f"{p}.left.1"))
        out = bn(F.conv2d(out, sd[f"{w}.left.3.weight"], padding=1), f"{p}.left.4")
        if f"{w}.shortcut.0.weight" in sd:
            x = bn(F.conv2d(x, sd[f"{w}.shortcut.0.weight"], stride=stride), f"{p}.shortcut.1")
        return F.relu(out + x)

    bgr = [np.float32(img[..., ::-1]) / 255.0 for img in frames]  # DavisLoaderLab.l_loader
    lab = torch.from_numpy(np.stack([cv2.cvtColor(img, cv2.COLOR_BGR2Lab) for img in bgr])).permute(0, 3, 1, 2)
    x = (lab - torch.tensor([50.0, 0, 0]).view(1, 3, 1, 1)) / torch.tensor([50.0, 127, 127]).view(1, 3, 1, 1)
    x = F.relu(bn(F.conv2d(x, sd["feature_extraction.conv1.0.weight"], stride=2, padding=3), "conv1.1"))
    for i, stride in enumerate((1, 2, 1, 1), start=1):
        x = block(block(x, f"layer{i}.0", stride), f"layer{i}.1", 1)
    want = F.conv2d(x, sd["post_convolution.weight"], sd["post_convolution.bias"], padding=1)
    with torch.no_grad():
        got = encoder(normalize_frames(frames))
    assert got.shape == (2, 64, math.ceil(H / 4), math.ceil(W / 4))
    _assert_close(got, want)
