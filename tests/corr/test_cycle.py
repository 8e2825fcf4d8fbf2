"""TimeCycle loss: zero for a perfect tracker, larger for a wrong one; gradients; shapes;
patch placement; the published clip layout."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from corr.encoders import build_encoder
from corr.losses.cycle import (
    WEIGHTS,
    CycleConsistencyLoss,
    affine_from_params,
    crop,
    feature_crop_grid,
    grid_mse,
    image_crop,
    patch_affinity,
)

h = w = 12


class OracleTracker(nn.Module):
    """Answers ``params`` (tx, ty, angle) whatever the affinity, plus ``bias`` on tx."""

    def __init__(self, params: torch.Tensor, bias: float = 0.0):
        super().__init__()
        self.params, self.bias = params, bias

    def forward(self, affinity):                                               # B, h*w, p, q
        return (self.params + torch.tensor([self.bias, 0.0, 0.0])).expand(affinity.shape[0], 3)


PARAMS = torch.tensor([[-1 / 3, 1 / 6, 0.0]])


def static_clip_terms(bias: float):
    loss_fn = CycleConsistencyLoss(in_channels=8, frame_size=(h, w), max_cycle=4)
    loss_fn.tracker = OracleTracker(PARAMS, bias)
    codes = torch.eye(h * w).reshape(1, h * w, h, w)                         # one-hot position features
    theta0 = affine_from_params(PARAMS, loss_fn.scale)
    patch = F.normalize(crop(codes, theta0, loss_fn.patch_size), dim=1)
    base = codes[:, None].expand(1, 4, -1, -1, -1)
    return loss_fn.cycle_terms(base, base, codes, codes, patch, theta0)


def test_perfect_tracker_gives_zero_cycles_and_a_wrong_one_more():
    perfect, diag, transforms = static_clip_terms(0.0)
    wrong, _, wrong_transforms = static_clip_terms(0.3)
    assert float(perfect["long"]) < 1e-10 and float(perfect["skip"]) < 1e-10
    assert float(perfect["sim"]) == pytest.approx(-diag["inlier"]) and diag["inlier"] > 0
    assert all(float(wrong[k]) > 0.01 for k in ("long", "skip"))
    assert float(wrong["sim"]) > float(perfect["sim"]) + 0.01                       # fewer inliers off the patch
    assert set(diag) >= {"long", "skip", "sim", "long/c=1", "long/c=4"}
    theta0 = affine_from_params(PARAMS, (1 / 3, 1 / 3))
    assert transforms["skip"].shape == (1, 4, 2, 3) and transforms["long"].shape == (1, 4, 2, 3)
    assert torch.allclose(transforms["skip"], theta0[:, None].expand(1, 4, 2, 3), atol=1e-6)
    assert torch.allclose(transforms["long"][:, -1], theta0, atol=1e-6)
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


# ---------------------------------------------------------------- the authors' formulas, by hand
# (geotnf/transformation.py AffineGridGenV2 + offset_factor, geotnf/loss.py WeakInlierCountPool with
# dilation_filter=0, use_conv_filter=False, normalize_inlier_count=True; the PyTorch of their code
# sampled with align_corners=True)

def authors_grid(theta, n, offset=227 / 210):
    """``linspace(-1, 1, n) / offset`` mapped by theta, then multiplied by ``offset``: (B, n, n, 2)."""
    lin = torch.linspace(-1, 1, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(lin, lin, indexing="xy")
    gx, gy = gx / offset, gy / offset
    t = theta.double()
    xp = gx * t[:, 0, 0, None, None] + gy * t[:, 0, 1, None, None] + t[:, 0, 2, None, None]
    yp = gx * t[:, 1, 0, None, None] + gy * t[:, 1, 1, None, None] + t[:, 1, 2, None, None]
    return torch.stack([xp, yp], dim=-1) * offset


def authors_inlier(matches_xmajor, theta, side, out):
    """Their score: identity mask (channel c = x * side + y holds a 1 at row y, column x), warped by
    grid_sample on their grid, divided by sum(mask + 1e-5), times the matches, summed."""
    mask_id = torch.zeros(side * side, side, side, dtype=torch.float64)
    for x in range(side):
        for y in range(side):
            mask_id[x * side + y, y, x] = 1.0
    b = theta.shape[0]
    mask = F.grid_sample(mask_id.expand(b, -1, -1, -1), authors_grid(theta, out), mode="bilinear",
                         padding_mode="zeros", align_corners=True)
    mask = mask / (mask + 1e-5).sum(dim=(1, 2, 3), keepdim=True)
    return (mask * matches_xmajor).sum(dim=(1, 2, 3))


def row_major_to_x_major(affinity, side):
    """Our frame cells (i * w + j) -> theirs (j * h + i): the frame map transposed before flattening."""
    b, _, p, q = affinity.shape
    return affinity.reshape(b, side, side, p, q).transpose(1, 2).reshape(b, side * side, p, q)


THETAS = torch.tensor([[0.1, -0.2, 0.3], [-0.55, 0.4, -0.7], [0.6, 0.62, 0.0]])


def test_inlier_score_and_its_gradient_are_the_authors():
    loss_fn = CycleConsistencyLoss(in_channels=8, frame_size=(12, 12))
    side, (p, q) = 12, loss_fn.patch_size
    assert (p, q) == (4, 4)
    params = THETAS.clone().double().requires_grad_(True)
    theta = affine_from_params(params, loss_fn.scale)
    torch.manual_seed(0)
    affinity = torch.randn(3, side * side, p, q, dtype=torch.float64).softmax(1).requires_grad_(True)
    ours = loss_fn.inlier_mask(theta)
    ours = (ours * affinity).flatten(1).sum(1) / (ours + 1e-5).flatten(1).sum(1)
    assert torch.allclose(loss_fn.inlier(affinity, theta).double(), ours.detach(), atol=1e-6)
    theirs = authors_inlier(row_major_to_x_major(affinity, side), theta, side, p)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    grad_ours = torch.autograd.grad((-ours).sum(), (affinity, params), retain_graph=True)
    grad_theirs = torch.autograd.grad((-theirs).sum(), (affinity, params))
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(grad_ours, grad_theirs))
    assert grad_ours[1].abs().max() > 1e-3                                         # the mask moves with theta
    # the mask: at most 4 cells per patch cell (bilinear weights, no dilation), normalisation with the 1e-5 per entry
    mask = loss_fn.inlier_mask(theta.detach())
    assert ((mask > 0).sum(1) <= 4).all() and torch.allclose(mask.sum(1)[0], torch.ones(p, q).double())
    peaked = (mask / mask.sum(1, keepdim=True).clamp_min(1e-12)).detach()
    expected = (mask * peaked).flatten(1).sum(1) / (mask.flatten(1).sum(1) + 1e-5 * side * side * p * q)
    assert torch.allclose(loss_fn.inlier(peaked, theta.detach()).double(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="similarity"):
        CycleConsistencyLoss(in_channels=8, frame_size=(9, 12), similarity="dot")


def test_crop_grids_are_the_authors():
    theta = affine_from_params(THETAS, (1 / 3, 1 / 3))
    assert torch.allclose(feature_crop_grid(theta, (10, 10)).double(), authors_grid(theta, 10), atol=1e-6)
    torch.manual_seed(0)
    features = torch.randn(3, 5, 30, 30)
    expected = F.grid_sample(features.double(), authors_grid(theta, 10), mode="bilinear", padding_mode="zeros",
                             align_corners=True)
    assert torch.allclose(crop(features, theta, (10, 10)).double(), expected, atol=1e-5)
    # the image patch: the plain affine grid (no offset factor), align_corners=True
    images = torch.randn(3, 3, 48, 48)
    plain = authors_grid(theta, 16, offset=1.0)
    expected = F.grid_sample(images.double(), plain, mode="bilinear", padding_mode="zeros", align_corners=True)
    assert torch.allclose(image_crop(images, theta, (16, 16)).double(), expected, atol=1e-5)
    assert not torch.allclose(feature_crop_grid(theta, (16, 16)).double(), plain, atol=1e-3)


def test_the_loss_weights_and_sim_term_are_the_authors():
    lamda = 0.1                                                                    # train_video_cycle_simple.py
    assert WEIGHTS == pytest.approx({"long": lamda * 0.2, "sim": 1.0, "skip": lamda}, abs=1e-12)
