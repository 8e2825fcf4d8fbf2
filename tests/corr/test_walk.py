"""The space-time graph and the contrastive random walk loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr.encoders import build_encoder
from corr.graph import WalkModel, affinities, drop_edges, forward_backward_logits, transition_matrices
from corr.losses.walk import ContrastiveRandomWalk


def _unit(*shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def _softmax_rows(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_loss_equals_hand_computed_palindromes():
    # T = 3 frames of N = 2 nodes in 2-d: the default walks only k = 2, one-step adds k = 1.
    angles = np.array([[0.0, 1.2], [0.3, 1.0], [0.1, 1.7]])
    q = np.stack([np.cos(angles), np.sin(angles)], axis=-1)              # T, N, C
    tau = 0.3
    a = [_softmax_rows(q[t] @ q[t + 1].T / tau) for t in range(2)]      # frame t -> t+1
    b = [_softmax_rows(q[t + 1] @ q[t].T / tau) for t in range(2)]      # frame t+1 -> t
    p1 = a[0] @ b[0]
    p2 = a[0] @ a[1] @ b[1] @ b[0]
    loss1, loss2 = -np.log(np.diag(p1)).mean(), -np.log(np.diag(p2)).mean()

    nodes = torch.tensor(q, dtype=torch.float64)[None]                   # 1, T, N, C
    loss, diag = ContrastiveRandomWalk(temperature=tau)(nodes)
    assert loss.item() == pytest.approx(loss2, abs=1e-12)
    assert set(diag) == {"loss/k=2", "acc/k=2"}
    assert diag["acc/k=2"] == pytest.approx(np.mean(p2.argmax(axis=1) == np.arange(2)))

    loss, diag = ContrastiveRandomWalk(temperature=tau, include_one_step=True)(nodes)
    assert loss.item() == pytest.approx((loss1 + loss2) / 2, abs=1e-12)
    assert diag["loss/k=1"] == pytest.approx(loss1, abs=1e-12)


def test_walk_lengths_and_diagnostics_follow_clip_length():
    nodes = _unit(2, 5, 6, 8)
    loss, diag = ContrastiveRandomWalk()(nodes)
    assert sorted(diag) == sorted([f"{kind}/k={k}" for kind in ("loss", "acc") for k in (2, 3, 4)])
    assert all(isinstance(v, float) for v in diag.values())
    assert loss.item() == pytest.approx(np.mean([diag[f"loss/k={k}"] for k in (2, 3, 4)]), rel=1e-6)
    with pytest.raises(ValueError, match="palindrome"):
        ContrastiveRandomWalk()(_unit(1, 2, 4, 8))
    with pytest.raises(ValueError, match=r"\(B, T, N, C\)"):
        ContrastiveRandomWalk()(_unit(2, 4, 8))


def test_loss_is_about_ln_n_for_random_nodes():
    loss, diag = ContrastiveRandomWalk(temperature=0.1)(_unit(8, 4, 49, 128))
    assert loss.item() == pytest.approx(math.log(49), abs=0.1)
    assert diag["acc/k=3"] < 0.2


def test_identical_frames_with_small_temperature_give_zero_loss():
    frame = _unit(1, 1, 49, 128)
    nodes = frame.expand(2, 4, 49, 128)
    loss, diag = ContrastiveRandomWalk(temperature=0.01)(nodes)
    assert loss.item() < 1e-3
    assert diag["acc/k=2"] == 1.0 and diag["acc/k=3"] == 1.0


def test_affinities_and_transitions_are_row_stochastic():
    nodes = _unit(2, 4, 5, 8, dtype=torch.float64)
    s = affinities(nodes)
    assert s.shape == (2, 3, 5, 5)
    assert torch.allclose(s[1, 2], nodes[1, 2] @ nodes[1, 3].T)
    forward, backward = transition_matrices(nodes, temperature=0.1)
    assert torch.allclose(forward.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert torch.allclose(backward[0, 1], torch.softmax(s[0, 1].T / 0.1, dim=-1))


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_edge_dropout_rate_and_independent_masks(p):
    torch.manual_seed(0)
    nodes = _unit(4, 5, 64, 16)
    forward, backward = forward_backward_logits(nodes, temperature=0.05, edge_dropout=p)   # 4, 4, 64, 64 each
    dropped_forward = torch.isneginf(forward)
    dropped_backward = torch.isneginf(backward).transpose(-1, -2)                    # same edge, other direction
    assert dropped_forward.float().mean().item() == pytest.approx(p, abs=0.01)
    assert dropped_backward.float().mean().item() == pytest.approx(p, abs=0.01)
    # Independent masks: an edge is dropped in both directions with probability p^2, not p.
    assert (dropped_forward & dropped_backward).float().mean().item() == pytest.approx(p * p, abs=0.01)
    # ... and independently for each transition.
    both_t = (dropped_forward[:, 0] & dropped_forward[:, 1]).float().mean().item()
    assert both_t == pytest.approx(p * p, abs=0.01)
    assert not torch.isneginf(forward_backward_logits(nodes, 0.05, 0.0)[0]).any()


def test_edge_dropout_keeps_rows_defined_and_is_off_in_eval_mode():
    logits = torch.zeros(1000, 3)
    torch.manual_seed(0)
    dropped = drop_edges(logits, 0.9)
    assert not torch.isneginf(dropped).all(dim=-1).any()
    loss_fn = ContrastiveRandomWalk(temperature=0.05, edge_dropout=0.5)
    nodes = _unit(2, 4, 10, 8)
    torch.manual_seed(1)
    train_loss = loss_fn(nodes)[0]
    assert torch.isfinite(train_loss)
    loss_fn.eval()
    assert loss_fn(nodes)[0].item() == ContrastiveRandomWalk(temperature=0.05)(nodes)[0].item()


@pytest.mark.parametrize("mode", ["grid", "dense"])
def test_gradients_reach_the_encoder(mode):
    torch.manual_seed(0)
    model = WalkModel(build_encoder("resnet18-crw", out_layer="layer4"), head_dim=16, mode=mode)
    if mode == "grid":
        clip = torch.randn(1, 3, 2, 3, 16, 16)                   # B, T, N, 3, h, w
        expected_nodes = 2
    else:
        clip = torch.randn(1, 3, 3, 32, 24)                      # B, T, 3, H, W -> 4 x 3 cells
        expected_nodes = 12
    nodes = model(clip)
    assert nodes.shape == (1, 3, expected_nodes, 16)
    assert torch.allclose(nodes.norm(dim=-1), torch.ones(1, 3, expected_nodes), atol=1e-5)
    loss, _ = ContrastiveRandomWalk(temperature=0.1)(nodes)
    loss.backward()
    for name in ("encoder.conv1.weight", "encoder.layer3.0.conv1.weight", "encoder.layer4.1.conv2.weight",
                 "head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_walk_model_rejects_wrong_clip_shapes():
    model = WalkModel(build_encoder("pixel"), head_dim=4, mode="grid")
    with pytest.raises(ValueError, match="grid mode expects"):
        model(torch.zeros(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="mode must be"):
        WalkModel(build_encoder("pixel"), mode="patches")
