"""evaluate.py --task tapvid --tracker walk: the shared per-video loop (records, resume, --overwrite,
--vis, --sweep, torchrun sharding) with a global-match network, on a tiny generated set."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from torchrun import evaluate_two_processes

import corr.flow_track as flow_track
from corr.global_match import TRAIN_LOSS_PREFIX, GlobalMatchConfig, GlobalMatchNet
from corr.io import file_sha256
from datasets.synthetic_tasks import generate_tapvid
from datasets.tapvid import TapVidDataset
from evaluate import evaluate
from propagate.eval_config import EvalConfig
from propagate.metrics import TAPVID_KEYS, tapvid_metrics, tapvid_summary
from propagate.sweep import parse_sweep
from propagate.tasks import configure

TINY = GlobalMatchConfig(feature_dim=16, num_layers=1, cnn_widths=(8, 12, 16))
SIZE = (32, 32)  # 8 x 8 cells at stride 4


@pytest.fixture(scope="module")
def tapvid(tmp_path_factory):
    base = tmp_path_factory.mktemp("walk-task")
    path = generate_tapvid(base / "tapvid", num_videos=2, num_frames=5, size=(40, 48), num_points=6, seed=3)
    torch.manual_seed(1)
    model = GlobalMatchNet(TINY)
    checkpoint = base / "gw.pt"
    losses = {TRAIN_LOSS_PREFIX + name: value for name, value in model.state_dict().items()}
    torch.save({"format": "corr-checkpoint-v1", "heads": {"losses": losses}, "global_match": dataclasses.asdict(TINY),
                "step": 0, "losses": []}, checkpoint)
    return {"path": path, "checkpoint": checkpoint}


def walk_config(tapvid, out, **kw):
    return EvalConfig(task="tapvid", tracker="walk", data_root=str(tapvid["path"]),
                      checkpoint=str(tapvid["checkpoint"]),
                      input_size=SIZE, out=str(out), device="cpu", **kw)


def counting(monkeypatch):
    calls = []
    original = flow_track.track_video
    monkeypatch.setattr(flow_track, "track_video", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_walk_results_record_settings_checkpoint_and_rescore(tapvid, tmp_path):
    results = evaluate(walk_config(tapvid, tmp_path, flow_method="weighted_argmax", occlusion_threshold=4.0,
                                   vis=True))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"] == results["metrics"] and results["tracker"] == "walk"
    assert results["config"]["tracking"] == {"tracker": "walk", "walk_setting": "chained",
                                             "flow_method": "weighted_argmax", "window_threshold": 20.0,
                                             "upsample_factor": 1, "occlusion_threshold": 4.0,
                                             "query_mode": "strided", "input_size": [32, 32], "category": "32x32"}
    assert results["config"]["propagation"] is None
    assert results["checkpoint"]["sha256"] == file_sha256(tapvid["checkpoint"])
    assert results["checkpoint"]["config"] == dataclasses.asdict(TINY)
    assert results["code_version"] and results["factors"]["flow_method"] == "weighted_argmax"
    assert results["timings"]["frames"] == 10 and results["timings"]["features_s"] > 0
    # one .npz per video; rescoring them gives the metrics; --vis draws the tracks
    per_video = []
    for sample in TapVidDataset(tapvid["path"], query_mode="strided", resolution=SIZE):
        saved = np.load(tmp_path / "predictions" / f"{sample.name}.npz")
        assert saved["tracks"].shape == (*sample.occluded.shape, 2)
        np.testing.assert_allclose(saved["tracks"][np.arange(len(sample.query_points)),
                                                   sample.query_points[:, 0].astype(int)],
                                   sample.query_points[:, [2, 1]], atol=1e-5)   # queries stay put
        per_video.append(tapvid_metrics(sample.query_points[None], sample.occluded[None], sample.target_points[None],
                                        saved["occluded"][None], saved["tracks"][None], "strided"))
        assert (tmp_path / "vis" / f"{sample.name}.mp4").stat().st_size > 0
        assert (tmp_path / "vis" / f"{sample.name}.png").stat().st_size > 0
        record = json.loads((tmp_path / "sequences" / f"{sample.name}.json").read_text())
        assert record["scores"]["average_jaccard"] == pytest.approx(
            results["per_sequence"][sample.name]["average_jaccard"])
    rescored = tapvid_summary(per_video)
    assert all(rescored[k] == pytest.approx(results["metrics"][k], abs=1e-6) for k in TAPVID_KEYS)


def test_walk_resumes_and_overwrites_per_video(tapvid, tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    first = evaluate(walk_config(tapvid, tmp_path))
    assert len(calls) == 2
    assert evaluate(walk_config(tapvid, tmp_path))["metrics"] == first["metrics"]
    assert len(calls) == 2                                   # both records reused
    (tmp_path / "sequences" / "synth-001.json").unlink()     # an interrupted run
    assert evaluate(walk_config(tapvid, tmp_path))["metrics"] == first["metrics"]
    assert len(calls) == 3
    evaluate(walk_config(tapvid, tmp_path, overwrite=True))
    assert len(calls) == 5
    evaluate(walk_config(tapvid, tmp_path, walk_setting="direct", overwrite=True))  # other settings: replaced
    assert len(calls) == 7


def test_walk_random_init_is_seeded(tapvid, tmp_path):
    cfg = dataclasses.replace(walk_config(tapvid, tmp_path / "a"), checkpoint=None, sequences=("synth-000",))
    a = evaluate(cfg)
    b = evaluate(dataclasses.replace(cfg, out=str(tmp_path / "b")))
    assert a["checkpoint"] == {"encoder": "global-match", "format": "random-init", "seed": 0,
                               "config": dataclasses.asdict(GlobalMatchConfig())}
    assert a["metrics"] == b["metrics"] and list(a["per_sequence"]) == ["synth-000"]


def test_walk_sweeps_its_own_settings(tapvid, tmp_path):
    summary = evaluate(walk_config(tapvid, tmp_path, sweep="upsample_factor=1,2 occlusion_threshold=2,8"))
    assert summary["tracker"] == "walk" and summary["feature_cache"] is None
    names = ["upsample_factor-1_occlusion_threshold-2", "upsample_factor-1_occlusion_threshold-8",
             "upsample_factor-2_occlusion_threshold-2", "upsample_factor-2_occlusion_threshold-8"]
    assert [row["name"] for row in summary["settings"]] == names
    for row in summary["settings"]:
        results = json.loads((tmp_path / "sweep" / row["name"] / "results.json").read_text())
        assert results["config"]["tracking"]["upsample_factor"] == row["overrides"]["upsample_factor"]
        assert results["config"]["tracking"]["occlusion_threshold"] == row["overrides"]["occlusion_threshold"]
        assert row["tracking"] == results["config"]["tracking"] and row["propagation"] is None
    occlusion = {row["name"]: row["metrics"]["occlusion_accuracy"] for row in summary["settings"]}
    assert len(set(occlusion.values())) > 1  # the threshold matters
    assert not (tmp_path / "feature-cache").exists()


def test_walk_rejects_propagation_options_and_sweeps():
    with pytest.raises(ValueError, match="propagation settings"):
        parse_sweep("topk=5,10", tracker="walk")
    with pytest.raises(ValueError, match="setting of --tracker walk"):
        parse_sweep("upsample_factor=1,2")
    assert parse_sweep("upsample-factor=1,2 occlusion_threshold=4", tracker="walk") == \
        [{"upsample_factor": 1, "occlusion_threshold": 4.0}, {"upsample_factor": 2, "occlusion_threshold": 4.0}]
    base = dict(task="tapvid", tracker="walk")
    for kwargs, message in [({"topk": 5}, "label-propagation settings"), ({"preset": "dino"}, "preset"),
                            ({"tta_steps": 2}, "tta-steps"), ({"cache": "c"}, "cache"),
                            ({"encoder": "pixel"}, "encoder pixel"), ({"upsample_factor": 0}, "upsample_factor"),
                            ({"task": "davis"}, "tapvid only")]:
        with pytest.raises(ValueError, match=message):
            configure(EvalConfig(**{**base, **kwargs}))
    with pytest.raises(ValueError, match="--tracker walk"):
        configure(EvalConfig(task="tapvid", upsample_factor=2))


def test_propagation_with_the_global_match_backbone(tapvid, tmp_path):
    results = evaluate(EvalConfig(task="tapvid", encoder="global-match", checkpoint=str(tapvid["checkpoint"]),
                                  data_root=str(tapvid["path"]), input_size=SIZE, context=2, out=str(tmp_path)))
    assert results["tracker"] == "propagation" and results["checkpoint"]["encoder"] == "global-match"
    assert results["checkpoint"]["sha256"] == file_sha256(tapvid["checkpoint"])
    assert results["config"]["propagation"]["context"] == 2
    assert all(0.0 <= results["metrics"][k] <= 1.0 for k in ("average_jaccard", "average_pts_within_thresh"))


def test_walk_two_processes_equal_one(tapvid, tmp_path):
    args = ["--task", "tapvid", "--tracker", "walk", "--data-root", str(tapvid["path"]), "--checkpoint",
            str(tapvid["checkpoint"]), "--input-size", "32,32", "--device", "cpu"]
    stdout, two, ranks = evaluate_two_processes(args, tmp_path / "two", timeout=180)
    assert stdout.count("all (mean of videos)") == 1  # rank 0 alone merges and prints
    assert ranks == {0, 1}
    one = evaluate(walk_config(tapvid, tmp_path / "one"))
    assert two["metrics"] == pytest.approx(one["metrics"]) and set(two["per_sequence"]) == set(one["per_sequence"])
    for name, scores in one["per_sequence"].items():
        assert two["per_sequence"][name] == pytest.approx(scores)
