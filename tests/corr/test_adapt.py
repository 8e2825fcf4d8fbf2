"""Test-time adaptation: changes the features, never the loaded weights, reproducible."""
import json

import numpy as np
import pytest
import torch

from corr.adapt import AdaptConfig, adapt_encoder, sample_clip_times
from corr.encoders import build_encoder
from datasets.synthetic import generate_davis, render_sequence
from datasets.transforms import normalize_frames
from evaluate import evaluate
from propagate.eval_config import EvalConfig


@pytest.fixture(scope="module")
def frames():
    rendered, _ = render_sequence(np.random.default_rng(0), num_frames=8, size=(48, 64), num_objects=2)
    return rendered


def test_adaptation_changes_features_not_the_original(frames):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18-crw").eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    x = normalize_frames(frames[:2])
    with torch.no_grad():
        feats_before = encoder(x)
    cfg = AdaptConfig(steps=3, window=3, lr=1e-3, crop_size=48, batch_size=2)
    adapted, info = adapt_encoder(encoder, frames, cfg)
    assert info["steps"] == 3 and len(info["losses"]) == 3 and all(np.isfinite(info["losses"]))
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k  # the loaded weights are untouched
    with torch.no_grad():
        assert (adapted(x) - feats_before).abs().max() > 1e-4
        # BatchNorm statistics are frozen: running means equal the original ones
        assert torch.equal(adapted.bn1.running_mean, encoder.bn1.running_mean)
    again, _ = adapt_encoder(encoder, frames, cfg)
    for (k, a), b in zip(adapted.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k  # same seed, same result


def test_zero_steps_is_the_identity(frames):
    encoder = build_encoder("pixel")
    same, info = adapt_encoder(encoder, frames, AdaptConfig(steps=0))
    assert same is encoder and info["steps"] == 0


def test_clip_times_stay_in_the_window():
    rng = np.random.default_rng(0)
    for _ in range(50):
        times = sample_clip_times(rng, num_frames=40, clip_len=4, window=3)
        assert times == sorted(times) and len(set(times)) == 4 and max(times) - min(times) <= 6


def test_evaluate_with_adaptation_records_cost_and_changes_predictions(tmp_path):
    root = generate_davis(tmp_path / "DAVIS", num_sequences=1, num_frames=6, size=(48, 64), seed=5)
    base = dict(data_root=str(root), encoder="resnet18-crw", context=2, batch_size=3)
    plain = evaluate(EvalConfig(out=str(tmp_path / "plain"), **base))
    adapted = evaluate(EvalConfig(out=str(tmp_path / "tta"), tta_steps=2, tta_window=2, tta_lr=1e-2, **base))
    assert plain["timings"]["adaptation_s"] == 0 and adapted["timings"]["adaptation_s"] > 0
    on_disk = json.loads((tmp_path / "tta" / "results.json").read_text())
    assert on_disk["config"]["eval"]["tta_steps"] == 2
    a = sorted((tmp_path / "plain" / "predictions").rglob("*.png"))
    b = sorted((tmp_path / "tta" / "predictions").rglob("*.png"))
    assert any(x.read_bytes() != y.read_bytes() for x, y in zip(a, b))
