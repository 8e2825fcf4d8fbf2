"""CRW's training options against the reference code's formulas (computed by hand here): the
step schedule, the shared edge-dropout mask, the head depth, feature dropout and colour jitter."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from corr.encoders import build_encoder
from corr.graph import WalkModel, forward_backward_logits, walk_head
from corr.runtime import start_runtime
from corr.train import TrainConfig
from corr.train.checkpoint import checkpoint_dict, load_training_state
from corr.train.config import resolve_config
from corr.train.module import Optimisation
from datasets.augment import adjust_colours, color_jitter


def _optimisation(cfg: TrainConfig, per_epoch: int) -> Optimisation:
    torch.manual_seed(0)
    return Optimisation.build(nn.Linear(2, 1), cfg, start_runtime("cpu", backend="auto", amp=False), per_epoch)


def _reference_lr(lr: float, milestones_epochs, gamma: float, per_epoch: int, iteration: int) -> float:
    """videowalk train.py: MultiStepLR(milestones=[len(loader) * m for m in epochs]) stepped once per
    iteration; iteration i (0-based) trains at lr * gamma ** #{milestones <= i}."""
    milestones = [per_epoch * m for m in milestones_epochs]
    return lr * gamma ** sum(1 for m in milestones if m <= iteration)


def test_crw_preset_has_the_reference_schedule_and_the_rate_at_every_epoch_boundary_is_theirs():
    cfg = resolve_config(TrainConfig(data="/videos"))
    assert cfg.lr_milestones == (20, 30, 40) and cfg.lr_gamma == 0.3 and cfg.lr == 1e-4
    per_epoch, epochs = 3, 42
    optimisation = _optimisation(cfg, per_epoch)
    used = []
    for _ in range(per_epoch * epochs):
        used.append(optimisation.lr)                              # the rate this iteration trains at
        optimisation.optimizer.step()
        optimisation.scheduler.step()
    for epoch in range(epochs):
        for iteration in (epoch * per_epoch, epoch * per_epoch + per_epoch - 1):   # first and last of the epoch
            expected = _reference_lr(1e-4, (20, 30, 40), 0.3, per_epoch, iteration)
            assert used[iteration] == pytest.approx(expected, rel=1e-5, abs=0)
    assert used[20 * per_epoch - 1] == pytest.approx(1e-4) and used[20 * per_epoch] == pytest.approx(3e-5)
    assert used[40 * per_epoch] == pytest.approx(1e-4 * 0.3 ** 3)


def test_schedule_options_and_a_constant_rate():
    cfg = resolve_config(TrainConfig(data="/videos", lr_milestones=(1,), lr_gamma=0.5))
    optimisation = _optimisation(cfg, 2)
    rates = []
    for _ in range(4):
        rates.append(optimisation.lr)
        optimisation.optimizer.step()
        optimisation.scheduler.step()
    assert rates == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5])
    constant = _optimisation(resolve_config(TrainConfig(data="/videos", lr_milestones=())), 1)
    for _ in range(3):
        constant.optimizer.step()
        constant.scheduler.step()
    assert constant.lr == 1e-4
    assert resolve_config(TrainConfig(data="/videos", loss="cycle")).lr_milestones == ()     # TimeCycle: constant
    with pytest.raises(ValueError, match="--lr-gamma"):
        resolve_config(TrainConfig(data="/videos", lr_gamma=0.0))


def test_fast_forward_puts_the_schedule_where_stepping_does():
    cfg = resolve_config(TrainConfig(data="/videos", lr_milestones=(1, 2), lr_gamma=0.3))
    stepped, jumped = _optimisation(cfg, 2), _optimisation(cfg, 2)
    for _ in range(5):
        stepped.optimizer.step()
        stepped.scheduler.step()
    jumped.fast_forward(5)
    assert jumped.lr == pytest.approx(stepped.lr) and jumped.scheduler.last_epoch == 5
    for _ in range(2):
        for o in (stepped, jumped):
            o.optimizer.step()
            o.scheduler.step()
        assert jumped.lr == pytest.approx(stepped.lr)


def test_shared_edge_mask_is_the_reference_in_place_dropout():
    """videowalk model.py stoch_mat drops edges in place in the similarity both directions read:
    A12 = softmax(drop_1(S) / tau), A21 = softmax(drop_2(drop_1(S)^T) / tau)."""
    torch.manual_seed(0)
    nodes = nn.functional.normalize(torch.randn(2, 3, 16, 8), dim=-1)
    p, tau = 0.3, 0.1
    torch.manual_seed(7)
    forward, backward = forward_backward_logits(nodes, tau, p, shared_mask=True)
    torch.manual_seed(7)
    independent_forward, independent_backward = forward_backward_logits(nodes, tau, p)
    torch.manual_seed(7)
    similarity = torch.einsum("btnc,btmc->btnm", nodes[:, :-1], nodes[:, 1:])
    drop_1 = torch.rand(similarity.shape) < p
    drop_2 = torch.rand(similarity.shape) < p
    in_place = similarity.clone()
    in_place[drop_1] = -1e20
    a12 = (in_place / tau).softmax(-1)
    reverse = in_place.transpose(-1, -2).clone()
    reverse[drop_2] = -1e20
    a21 = (reverse / tau).softmax(-1)
    assert torch.allclose(forward.softmax(-1), a12, atol=1e-5)
    assert torch.allclose(backward.softmax(-1), a21, atol=1e-5)
    assert torch.equal(forward, independent_forward)
    assert not torch.allclose(backward.softmax(-1), independent_backward.softmax(-1), atol=1e-3)
    assert resolve_config(TrainConfig(data="/videos")).shared_edge_mask


def test_head_depth_is_the_reference_mlp():
    """videowalk make_head: dims [C] + [C] * depth + [128], Linear + ReLU pairs, the last ReLU
    dropped; depth -1: no layer at all."""
    def layers(head):
        return [type(m).__name__ for m in (head if isinstance(head, nn.Sequential) else [head])]

    assert layers(walk_head(16, 4, 0)) == ["Linear"]
    assert layers(walk_head(16, 4, 2)) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    deep = walk_head(16, 4, 2)
    assert [(m.in_features, m.out_features) for m in deep if isinstance(m, nn.Linear)] == [(16, 16), (16, 16), (16, 4)]
    x = torch.randn(5, 16)
    assert torch.equal(walk_head(16, 4, -1)(x), x)
    expected = deep[4](torch.relu(deep[2](torch.relu(deep[0](x)))))
    assert torch.allclose(deep(x), expected)
    assert resolve_config(TrainConfig(data="/videos")).head_depth == 0


class _Maps(nn.Module):
    out_channels, stride = 4, 1

    def forward(self, x):
        return x[:, :1].expand(-1, 4, -1, -1) * torch.arange(1, 5.0)[None, :, None, None]


def test_feature_dropout_acts_on_the_maps_before_pooling_in_training_only():
    model = WalkModel(_Maps(), head_dim=3, mode="grid", head_depth=-1, featdrop=0.5)
    patches = torch.rand(1, 2, 3, 3, 4, 4)
    model.train()
    torch.manual_seed(3)
    nodes = model(patches)
    torch.manual_seed(3)
    maps = nn.functional.dropout(_Maps()(patches.flatten(0, 2)), 0.5, training=True)
    expected = nn.functional.normalize(maps.mean((-2, -1)), dim=-1).reshape(1, 2, 3, 4)
    assert torch.allclose(nodes, expected, atol=1e-6)
    model.eval()
    plain = nn.functional.normalize(_Maps()(patches.flatten(0, 2)).mean((-2, -1)), dim=-1).reshape(1, 2, 3, 4)
    assert torch.allclose(model(patches), plain, atol=1e-6)


def test_colour_jitter_is_torchvisions_colorjitter():
    from PIL import Image
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    functions = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    cases = (((0, 1, 2), (0.93, 1.07, 0.95)), ((2, 0, 1), (1.09, 0.91, 1.02)), ((1, 2, 0), (1.1, 0.9, 1.0)))
    for order, factors in cases:
        expected = Image.fromarray(frame)
        for op, factor in zip(order, factors):
            expected = functions[op](expected, factor)
        assert np.array_equal(adjust_colours(frame, order, factors), np.asarray(expected))
    jittered = color_jitter(frame, 0.1, np.random.default_rng(1))
    assert jittered.dtype == np.uint8 and not np.array_equal(jittered, frame)
    assert np.abs(jittered.astype(int) - frame).max() <= 0.35 * 255


def _walk_model():
    torch.manual_seed(0)
    return WalkModel(build_encoder("pixel"), head_dim=4, mode="dense")


def test_resume_restores_the_schedule_and_an_old_checkpoint_resumes_on_it(tmp_path):
    cfg = resolve_config(TrainConfig(data="/videos", encoder="pixel", head_dim=4, mode="dense", lr_milestones=(1, 2),
                                     lr_gamma=0.3))
    runtime = start_runtime("cpu", backend="auto", amp=False)
    model = _walk_model()
    optimisation = Optimisation.build(model, cfg, runtime, per_epoch=2)
    for _ in range(3):                                                            # one milestone passed
        optimisation.optimizer.step()
        optimisation.scheduler.step()
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint_dict(cfg, model, optimisation.optimizer, optimisation.scaler, optimisation.scheduler, 3),
               path)
    resumed = Optimisation.build(_walk_model(), cfg, runtime, per_epoch=2)
    assert load_training_state(path, cfg, _walk_model(), resumed) == 3
    for _ in range(3):
        assert resumed.lr == pytest.approx(optimisation.lr)
        for o in (optimisation, resumed):
            o.optimizer.step()
            o.scheduler.step()
    assert resumed.lr == pytest.approx(1e-4 * 0.09)
    # a checkpoint written with the constant schedule (a LambdaLR state) resumes at its step
    old = torch.load(path, weights_only=True)
    constant = torch.optim.lr_scheduler.LambdaLR(torch.optim.Adam(_walk_model().parameters(), lr=1e-4), lambda s: 1.0)
    old["scheduler"] = constant.state_dict()
    torch.save(old, path)
    fresh = Optimisation.build(_walk_model(), cfg, runtime, per_epoch=2)
    assert load_training_state(path, cfg, _walk_model(), fresh) == 3
    assert fresh.lr == pytest.approx(1e-4 * 0.3) and fresh.scheduler.last_epoch == 3
