"""The ``dino`` preset computes what DINO's ``eval_video_segmentation.py`` computes.

``script_video`` below re-implements their per-video loop by hand from reading the script
(``read_frame``, ``read_seg``, ``label_propagation``, ``restrict_neighborhood``, ``norm_mask``
and the upsampling in ``eval_video_tracking_davis``), on a small video and a small strided
convolution standing in for the ViT; the DAVIS task's ``propagate_sequence`` must give the
same soft labels (to 1e-5) and the same id maps.
"""
import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from corr.errors import OptionError
from propagate import PropagationConfig, Propagator
from propagate.dino_frames import dino_frame, dino_frame_size
from propagate.eval_config import EvalConfig
from propagate.labels import normalize_output
from propagate.tasks import TASKS
from propagate.tasks import davis as davis_task
from propagate.tasks.davis import propagate_sequence


class PatchConv(nn.Module):
    """A stride-p convolution with p x p kernels (what a ViT's patch embedding sees); frames whose
    sides p does not divide are replicate-padded, as the ViT encoders here do."""

    def __init__(self, p: int, channels: int = 12, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stride = p
        self.conv = nn.Conv2d(3, channels, p, p)

    def forward(self, x):
        p, (H, W) = self.stride, x.shape[-2:]
        return self.conv(F.pad(x, (0, -W % p, 0, -H % p), mode="replicate"))


class Sequence:
    """The part of datasets.davis.DavisSequence that propagate_sequence reads."""

    name = "toy"

    def __init__(self, frames, annotation):
        self.frames, self.annotation = frames, annotation
        self.num_frames, self.size = len(frames), annotation.shape

    def read_frame(self, t):
        return self.frames[t]

    def read_annotation(self, t):
        return self.annotation

    def object_ids(self):
        return [1, 2]


def toy_video(T=6, H=480, W=854, seed=0):
    """Textured frames (a noise image sliding right) and two objects."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H, W + 4 * T, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(base[:, 4 * t: 4 * t + W]) for t in range(T)]
    ids = np.zeros((H, W), np.uint8)
    ids[100:300, 150:400] = 1
    ids[250:450, 500:800] = 2
    return frames, ids


# ------------------------------------------------------------------ the script, by hand

def script_read_frame(rgb, scale=480):
    ori_h, ori_w = rgb.shape[:2]
    if ori_h > ori_w:
        tw = scale
        th = int(((tw * ori_h) / ori_w // 64) * 64)
    else:
        th = scale
        tw = int(((th * ori_w) / ori_h // 64) * 64)
    img = cv2.resize(rgb[:, :, ::-1].copy(), (tw, th))[:, :, ::-1].astype(np.float32) / 255.0  # BGR read, flipped
    img = torch.from_numpy(np.transpose(img.copy(), (2, 0, 1)))
    for t, m, s in zip(img, (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)):
        t.sub_(m).div_(s)
    return img


def script_read_seg(ids, p, scale=480):
    h, w = ids.shape
    if w > h:
        th, tw = scale, int(((scale * w) / h // 64) * 64)
    else:
        tw, th = scale, int(((scale * h) / w // 64) * 64)
    small = torch.from_numpy(np.array(Image.fromarray(ids).resize((tw // p, th // p), 0)).astype(np.int64))
    return F.one_hot(small, int(small.max()) + 1).permute(2, 0, 1).float()[None]  # 1, C, h, w


def script_features(model, img):
    p = model.stride
    h, w = int(img.shape[1] / p), int(img.shape[2] / p)
    out = model.conv(img[None])[0]  # dim, h, w (a stride-p convolution drops what p does not divide)
    return out.reshape(out.shape[0], -1).T, h, w  # h*w, dim


def script_neighbourhood(h, w, size):
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None]).abs() <= size) & ((xs[:, None] - xs[None]).abs() <= size)
    return near.float()  # mask[query, key], as their loop fills mask[i, j, i + dy, j + dx]


def script_norm_mask(mask):
    for c in range(mask.shape[0]):
        m = mask[c]
        if m.max() > 0:
            m = m - m.min()
            mask[c] = m / m.max()
    return mask


def script_propagate(feats, first_seg, n_last=7, topk=5, size=12):
    """Their loop over frames 1.. of ``label_propagation``: feats [(h*w, dim)], first_seg (1, C, h, w)."""
    h, w = first_seg.shape[-2:]
    queue, soft = [], []
    mask = script_neighbourhood(h, w, size)
    for feat_tar in feats[1:]:
        context = [feats[0]] + [f for f, _ in queue]
        segs = [first_seg] + [s for _, s in queue]
        sources = F.normalize(torch.stack([f.T for f in context]), dim=1, p=2)  # n, dim, hw
        target = F.normalize(feat_tar, dim=1, p=2)
        aff = torch.exp(torch.bmm(target[None].repeat(len(context), 1, 1), sources) / 0.1)  # n, query, key
        aff = aff * mask[None]
        aff = aff.transpose(2, 1).reshape(-1, h * w)  # n*key, query
        tk_val, _ = torch.topk(aff, dim=0, k=topk)
        aff[aff < tk_val.min(dim=0).values] = 0
        aff = aff / aff.sum(dim=0, keepdim=True)
        seg = torch.cat(segs)
        C = seg.shape[1]
        seg = seg.reshape(len(segs), C, -1).transpose(2, 1).reshape(-1, C).T
        seg_tar = torch.mm(seg, aff).reshape(1, C, h, w)
        if len(queue) == n_last:
            queue.pop(0)
        queue.append((feat_tar, seg_tar.clone()))
        soft.append(seg_tar)
    return soft


def script_video(model, frames, ids):
    p = model.stride
    ori_h, ori_w = ids.shape
    feats = [script_features(model, script_read_frame(frame))[0] for frame in frames]
    soft = script_propagate(feats, script_read_seg(ids, p))
    out = [ids.copy()]
    for seg_tar in soft:
        up = F.interpolate(seg_tar, scale_factor=p, mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)[0]
        winner = torch.max(script_norm_mask(up), dim=0)[1].numpy().astype(np.uint8)
        out.append(np.array(Image.fromarray(winner).resize((ori_w, ori_h), 0)))
    return [s[0] for s in soft], np.stack(out)


# ------------------------------------------------------------------ tests

def test_dino_propagation_equals_the_script_by_hand():
    # A small grid and 12 frames: the 7-frame queue fills and rolls; +-3 cells is less than the grid.
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 16, 9, 11, generator=g)
    first = F.one_hot(torch.randint(0, 3, (9, 11), generator=g), 3).permute(2, 0, 1).float()
    want = script_propagate([f.reshape(16, -1).T for f in feats], first[None], size=3)
    got = Propagator(PropagationConfig.preset("dino", radius=3.0)).propagate(feats, first)
    for t in range(1, 12):
        torch.testing.assert_close(got[t], want[t - 1][0], atol=1e-5, rtol=0)
    disk = Propagator(PropagationConfig.preset("dino", radius=3.0, neighbourhood="disk", restrict_first=False))
    assert (disk.propagate(feats, first) - got).abs().max() > 1e-2  # the common rule differs


def test_dino_preset_equals_the_script_by_hand_on_a_davis_sized_video():
    frames, ids = toy_video(T=5)
    model = PatchConv(16).eval()
    want_soft, want_ids = script_video(model, frames, ids)
    got_soft = []
    original = davis_task.dino_masks

    def spy(labels, *args, **kwargs):
        got_soft.append(labels.clone())
        return original(labels, *args, **kwargs)

    davis_task.dino_masks = spy
    try:
        with torch.no_grad():
            got_ids, _ = propagate_sequence(Sequence(frames, ids), model, PropagationConfig.preset("dino"),
                                            torch.device("cpu"), batch_size=2, progress=False)
    finally:
        davis_task.dino_masks = original
    assert len(got_soft) == len(want_soft) == 4
    for got, want in zip(got_soft, want_soft):
        assert got.shape == want.shape == (3, 30, 52)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert got_ids.shape == want_ids.shape == (5, 480, 854)
    assert np.array_equal(got_ids, want_ids)
    common, _ = propagate_sequence(Sequence(frames, ids), model, PropagationConfig.preset("dino", frames="common"),
                                   torch.device("cpu"), progress=False)
    assert not np.array_equal(common, want_ids)  # native frames and bilinear labels differ


def test_frame_sizes_follow_the_script():
    assert dino_frame_size(480, 854, 16) == (480, 832)
    assert dino_frame_size(480, 854, 8) == (480, 832)
    assert dino_frame_size(480, 854, 14) == (476, 826)  # their ViT's int(H / p) patches
    assert dino_frame_size(1080, 1920, 16) == (480, 832)
    assert dino_frame_size(854, 480, 16) == (832, 480)  # portrait
    assert dino_frame_size(500, 500, 16) == (480, 448)  # a square frame takes the landscape branch
    frame = np.random.default_rng(1).integers(0, 256, (96, 170, 3), dtype=np.uint8)
    assert dino_frame(frame, 14).shape == (476, 826, 3)


def test_output_minmax_leaves_channels_without_positive_values():
    maps = torch.tensor([[[0.2, 0.6], [0.4, 0.2]], [[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    out = normalize_output(maps.clone())
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    assert torch.equal(out[1], maps[1]) and torch.equal(out[2], torch.zeros(2, 2))


def test_dino_frames_are_davis_only():
    cfg = EvalConfig(task="jhmdb", preset="dino")
    with pytest.raises(OptionError, match="--frames dino"):
        TASKS["jhmdb"].configure(cfg)
    TASKS["jhmdb"].configure(EvalConfig(task="jhmdb", preset="dino", frames="common", output_norm="none"))
    TASKS["davis"].configure(EvalConfig(task="davis", preset="dino"))
