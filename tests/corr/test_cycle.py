"""TimeCycle loss: zero for a perfect tracker, larger for a wrong one; gradients; shapes;
patch placement; the published clip layout."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from corr.encoders import build_encoder
from corr.losses.cycle import CycleConsistencyLoss, affine_from_params, crop, grid_mse, patch_affinity

h = w = 12


class OracleTracker(nn.Module):
    """Reads the patch position off the affinity (soft-argmax, mean over patch cells); ``bias`` errs."""

    def __init__(self, bias: float = 0.0):
        super().__init__()
        self.bias = bias

    def forward(self, affinity):                                               # B, h*w, p, q
        centres = (2 * torch.arange(h, dtype=torch.float32) + 1) / h - 1
        gy, gx = torch.meshgrid(centres, centres, indexing="ij")
        x = torch.einsum("bkuv,k->b", affinity, gx.ravel()) / affinity[0, 0].numel()
        y = torch.einsum("bkuv,k->b", affinity, gy.ravel()) / affinity[0, 0].numel()
        return torch.stack([x + self.bias, y, torch.zeros_like(x)], dim=-1)


def static_clip_terms(bias: float):
    loss_fn = CycleConsistencyLoss(in_channels=8, frame_size=(h, w), max_cycle=4)
    loss_fn.tracker = OracleTracker(bias)
    codes = torch.eye(h * w).reshape(1, h * w, h, w)                         # one-hot position features
    theta0 = affine_from_params(torch.tensor([[-1 / 3, 1 / 6, 0.0]]), loss_fn.scale)  # cell-aligned patch
    patch = crop(codes, theta0, loss_fn.patch_size)
    base = codes[:, None].expand(1, 4, -1, -1, -1)
    return loss_fn.cycle_terms(base, base, codes, codes, patch, theta0)


def test_perfect_tracker_gives_zero_and_a_wrong_one_more():
    perfect, diag, transforms = static_clip_terms(0.0)
    wrong, _, wrong_transforms = static_clip_terms(0.3)
    assert all(float(v) < 1e-5 for v in perfect.values())
    assert all(float(wrong[k]) > 0.01 for k in ("long", "skip", "sim"))
    assert set(diag) >= {"long", "skip", "sim", "long/c=1", "long/c=4"}
    theta0 = affine_from_params(torch.tensor([[-1 / 3, 1 / 6, 0.0]]), (1 / 3, 1 / 3))
    assert transforms["skip"].shape == (1, 4, 2, 3) and transforms["long"].shape == (1, 4, 2, 3)
    assert torch.allclose(transforms["skip"], theta0[:, None].expand(1, 4, 2, 3), atol=1e-5)   # static clip
    assert torch.allclose(transforms["long"][:, -1], theta0, atol=1e-5)
    assert not torch.allclose(wrong_transforms["long"][:, -1], theta0, atol=0.1)


def test_patch_is_placed_among_the_moving_positions_with_jitter_and_rotation():
    loss_fn = CycleConsistencyLoss(in_channels=8, frame_size=(12, 12), top_k=1, max_rotation=0.0)
    target = torch.zeros(6, 3, 96, 96)
    reference = target.clone()
    # lattice position (row 5, col 1) of 7x7: centre (-4/9, 4/9) normalised, window x 11..43, y 53..85 px
    target[:, :, 53:85, 11:43] = 1.0
    theta = loss_fn.patch_transform(target, reference, torch.Generator().manual_seed(0))
    half_step = (1 / 6) / 2 * 2 * (1 - 1 / 3)                                  # jitter bound, normalised units
    assert torch.all((theta[:, 0, 2] + 4 / 9).abs() <= half_step + 1e-6)
    assert torch.all((theta[:, 1, 2] - 4 / 9).abs() <= half_step + 1e-6)
    assert theta[:, 0, 2].unique().numel() > 1                                  # jittered
    assert torch.allclose(theta[:, 0, 1], torch.zeros(6)) and torch.allclose(theta[:, 0, 0], torch.full((6,), 1 / 3))

    rotating = CycleConsistencyLoss(in_channels=8, frame_size=(12, 12), motion_patch=False)
    theta = rotating.patch_transform(target, reference, torch.Generator().manual_seed(0))
    angle = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    assert torch.all(angle.abs() <= math.pi / 4 + 1e-6) and angle.abs().max() > 0.05
    assert torch.allclose(theta[:, 0, 0] ** 2 + theta[:, 1, 0] ** 2, torch.full((6,), 1 / 9))   # fixed scale
    assert theta[:, :, 2].unique(dim=0).shape[0] > 2                             # spread over the frame


def test_published_layout_encodes_base_and_target_and_uses_the_last_frame_for_motion():
    torch.manual_seed(0)
    encoder = build_encoder("resnet18-crw", out_layer="layer4")
    loss_fn = CycleConsistencyLoss(in_channels=256, frame_size=(6, 6), motion_frame=True)
    frames = torch.randn(2, 4, 3, 48, 48)                     # base 0, 1; target 2; motion reference 3
    batches, references = [], []
    encoder.conv1.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    original = loss_fn.patch_transform
    loss_fn.patch_transform = lambda target, reference, gen: references.append((target, reference)) or original(
        target, reference, gen)
    loss, diagnostics, visuals = loss_fn(frames, encoder, generator=torch.Generator().manual_seed(0), visuals=True)
    assert batches == [2 * 3, 2]                               # base + target frames, then the patches
    assert torch.equal(references[0][0], frames[:, 2]) and torch.equal(references[0][1], frames[:, 3])
    assert {"long/c=1", "long/c=2"} <= set(diagnostics) and "long/c=3" not in diagnostics
    assert visuals["theta0"].shape == (2, 2, 3) and visuals["skip"].shape == (2, 2, 2, 3)
    assert visuals["long"].shape == (2, 2, 2, 3) and not visuals["skip"].requires_grad
    with pytest.raises(ValueError, match="T >= 3"):
        loss_fn(frames[:, :2], encoder)


def test_helpers_shapes_and_values():
    theta = affine_from_params(torch.tensor([[0.1, -0.2, 0.3]]), (1 / 3, 1 / 3))
    assert theta.shape == (1, 2, 3) and torch.allclose(theta[0, :, 2], torch.tensor([0.1, -0.2]))
    assert grid_mse(theta, theta) == 0
    shifted = theta.clone()
    shifted[0, 0, 2] += 0.5
    assert torch.isclose(grid_mse(shifted, theta), torch.tensor(0.25))
    affinity = patch_affinity(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 5, 6), 8 ** -0.5)
    assert affinity.shape == (2, 30, 3, 3) and torch.allclose(affinity.sum(1), torch.ones(2, 3, 3))


def test_gradients_reach_the_encoder_and_the_head():
    torch.manual_seed(0)
    encoder = build_encoder("resnet18-crw", out_layer="layer4")
    loss_fn = CycleConsistencyLoss(in_channels=256, frame_size=(6, 6))
    frames = torch.randn(1, 3, 3, 48, 48)
    loss, diagnostics = loss_fn(frames, encoder, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"long", "skip", "sim", "long/c=1", "long/c=2"} <= set(diagnostics) and "long/c=3" not in diagnostics
    grads = [p.grad for name, p in encoder.named_parameters() if name.startswith("layer3")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in loss_fn.parameters())


def test_wrong_frame_size_and_bad_input_are_named():
    encoder = build_encoder("resnet18-crw")
    loss_fn = CycleConsistencyLoss(in_channels=256, frame_size=(9, 9))
    with pytest.raises(ValueError, match="built for"):
        loss_fn(torch.randn(1, 3, 3, 64, 64), encoder)
    with pytest.raises(ValueError, match="frames must be"):
        loss_fn(torch.randn(1, 3, 64, 64), encoder)


def test_training_config_mixes_the_losses_over_one_encoder():
    from corr.losses.pixel import FinePixelLoss
    from corr.losses.walk import ContrastiveRandomWalk
    from corr.train import TrainConfig
    from corr.train.config import resolve_config
    from corr.train.module import build_losses
    from corr.train.objectives import parse_loss_spec

    assert parse_loss_spec("crw=1,cycle=0.5,pixel=1") == {"crw": 1.0, "cycle": 0.5, "pixel": 1.0}
    cfg = resolve_config(TrainConfig(loss="crw=1,cycle=0.5,pixel=1", encoder="resnet18-fgvc"))
    mix = build_losses(cfg)
    assert isinstance(mix.losses["crw"], ContrastiveRandomWalk) and isinstance(mix.losses["pixel"], FinePixelLoss)
    cycle = mix.losses["cycle"]
    assert cycle.frame_size == (32, 32) and cycle.project.in_channels == 256      # 64 px crops, stride 2, layer3
    assert mix.needs_nodes and mix.weights == {"crw": 1.0, "cycle": 0.5, "pixel": 1.0}
    pixel = build_losses(resolve_config(TrainConfig(loss="pixel", data="/videos"))).losses["pixel"]
    assert pixel.radius == 24 and pixel.domain_classifier is not None            # the released window and terms
    pixel = build_losses(resolve_config(TrainConfig(loss="pixel", pixel_radius=3, pixel_domain_weight=0.1)))
    assert not pixel.needs_nodes
    assert pixel.losses["pixel"].radius == 3 and pixel.losses["pixel"].domain_weight == 0.1
    assert pixel.losses["pixel"].domain_classifier.layers[0].in_features == 49     # one input per displacement
    with pytest.raises(ValueError, match="--pixel-\\*-weight"):
        resolve_config(TrainConfig(loss="pixel", pixel_domain_weight=-1.0))
    assert resolve_config(TrainConfig(data="/videos", loss="cycle")).mode == "dense"
    with pytest.raises(ValueError, match="--mode dense"):
        resolve_config(TrainConfig(data="/videos", loss="crw=1,pixel=1", mode="grid", encoder="resnet18-fgvc"))


def test_inlier_mask_is_the_warped_dilated_identity_and_scores_peaked_affinities():
    loss_fn = CycleConsistencyLoss(in_channels=8, frame_size=(9, 12), top_k=1)
    (h, w), (p, q) = loss_fn.frame_size, loss_fn.patch_size
    # reference construction: channel k holds the 3x3-dilated one-hot map of frame cell k, sampled bilinearly
    # (zeros outside) where theta sends each patch cell
    identity = torch.eye(h * w).reshape(h * w, 1, h, w)
    dilated = (F.max_pool2d(identity, 3, stride=1, padding=1)).reshape(1, h * w, h, w)
    theta = affine_from_params(torch.tensor([[0.1, -0.2, 0.3], [-0.55, 0.4, -0.7], [0.9, 0.9, 0.0]]), loss_fn.scale)
    grid = F.affine_grid(theta, [3, h * w, p, q], align_corners=False)
    expected = F.grid_sample(dilated.expand(3, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)
    assert torch.allclose(loss_fn.inlier_mask(theta), expected, atol=1e-5)

    # cell-aligned patch: every patch cell lands on a frame cell centre
    aligned = affine_from_params(torch.tensor([[-1 / 3, 0.0, 0.0]]), loss_fn.scale)   # cell (u, v) -> (3 + u, 2 + v)
    mask = loss_fn.inlier_mask(aligned)
    assert torch.allclose(mask.sum(1), torch.full((1, p, q), 9.0))
    peaked = torch.zeros(1, h * w, p, q)
    for u in range(p):
        for v in range(q):
            peaked[0, (3 + u) * w + 2 + v, u, v] = 1.0
            assert mask[0, (3 + u) * w + 2 + v, u, v] == 1 and mask[0, (5 + u) * w + 2 + v, u, v] == 0
    assert torch.allclose(loss_fn.inlier(peaked, aligned), torch.ones(1))
    shifted = torch.roll(peaked.reshape(1, h, w, p, q), 2, dims=2).reshape(1, h * w, p, q)   # 2 cells off: outside
    assert torch.allclose(loss_fn.inlier(shifted, aligned), torch.zeros(1))
    uniform = torch.full((1, h * w, p, q), 1 / (h * w))
    assert torch.allclose(loss_fn.inlier(uniform, aligned), torch.tensor([9 / (h * w)]))
    with pytest.raises(ValueError, match="similarity"):
        CycleConsistencyLoss(in_channels=8, frame_size=(9, 12), similarity="dot")
