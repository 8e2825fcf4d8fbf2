"""TimeCycle loss: zero for a perfect tracker, larger for a wrong one; gradients; shapes."""
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
    perfect, diag = static_clip_terms(0.0)
    wrong, _ = static_clip_terms(0.3)
    assert all(float(v) < 1e-5 for v in perfect.values())
    assert all(float(wrong[k]) > 0.01 for k in ("long", "skip", "sim"))
    assert set(diag) >= {"long", "skip", "sim", "long/c=1", "long/c=4"}


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
    from corr.train import TrainConfig, build_losses, parse_loss_spec, resolve_config

    assert parse_loss_spec("crw=1,cycle=0.5,pixel=1") == {"crw": 1.0, "cycle": 0.5, "pixel": 1.0}
    cfg = resolve_config(TrainConfig(loss="crw=1,cycle=0.5,pixel=1", encoder="resnet18-s4"))
    mix = build_losses(cfg)
    assert isinstance(mix.losses["crw"], ContrastiveRandomWalk) and isinstance(mix.losses["pixel"], FinePixelLoss)
    cycle = mix.losses["cycle"]
    assert cycle.frame_size == (16, 16) and cycle.project.in_channels == 256      # 64 px crops, stride 4, layer3
    assert mix.needs_nodes and mix.weights == {"crw": 1.0, "cycle": 0.5, "pixel": 1.0}
    assert not build_losses(resolve_config(TrainConfig(loss="pixel"))).needs_nodes
    assert resolve_config(TrainConfig(data="/videos", loss="cycle")).mode == "dense"
    with pytest.raises(ValueError, match="--mode dense"):
        resolve_config(TrainConfig(data="/videos", loss="crw=1,pixel=1", mode="grid"))
