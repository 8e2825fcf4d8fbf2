"""Sweeps over propagation settings and evaluation in several processes (torchrun, gloo on CPU)."""
import json

import pytest
from torchrun import evaluate_two_processes

from corr.runtime import Runtime
from datasets.synthetic import generate_davis
from datasets.synthetic_tasks import generate_jhmdb
from evaluate import evaluate
from propagate import video as video_pipeline
from propagate.eval_config import EvalConfig
from propagate.sweep import parse_sweep, setting_name


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-davis") / "DAVIS"
    return generate_davis(root, num_sequences=3, num_frames=6, size=(48, 64), seed=7)


def test_parse_sweep_gives_the_cartesian_product():
    settings = parse_sweep("topk=5,10,20 radius=12,inf")
    assert len(settings) == 6
    assert settings[0] == {"topk": 5, "radius": 12.0} and settings[-1] == {"topk": 20, "radius": float("inf")}
    assert [setting_name(s) for s in settings[:2]] == ["topk-5_radius-12", "topk-5_radius-inf"]
    assert parse_sweep("preset=crw,dino label-norm=none,minmax normalize_features=false")[1] == \
        {"preset": "crw", "label_norm": "minmax", "normalize_features": False}
    for bad, message in [("topk", "name=v1"), ("encoder=pixel", "cannot be swept"), ("topk=a", "int"),
                         ("topk=1 topk=2", "twice"), ("", "no setting")]:
        with pytest.raises(ValueError, match=message):
            parse_sweep(bad)


def test_sweep_writes_one_result_per_setting_and_reuses_features(davis_root, tmp_path, monkeypatch):
    calls = []
    original = video_pipeline.extract_features
    monkeypatch.setattr(video_pipeline, "extract_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    cfg = EvalConfig(data_root=str(davis_root), encoder="pixel", context=2, out=str(tmp_path), batch_size=6,
                     sweep="topk=2,5 label_norm=none,minmax", normalize_features=False)
    summary = evaluate(cfg)
    assert len(calls) == 3  # one encoder pass per sequence, for four settings
    assert (tmp_path / "feature-cache").is_dir()  # implicit cache under --out
    names = ["topk-2_label_norm-none", "topk-2_label_norm-minmax", "topk-5_label_norm-none",
             "topk-5_label_norm-minmax"]
    assert [row["name"] for row in summary["settings"]] == names
    on_disk = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert on_disk["settings"] == json.loads(json.dumps(summary["settings"]))
    for row in summary["settings"]:
        results = json.loads((tmp_path / "sweep" / row["name"] / "results.json").read_text())
        prop, factors = results["config"]["propagation"], results["factors"]
        assert prop["topk"] == row["overrides"]["topk"] == factors["topk"]
        assert prop["label_norm"] == row["overrides"]["label_norm"] == factors["label_normalisation"]
        assert prop["normalize_features"] is False and factors["feature_normalisation"] == "none"
        assert prop["context"] == factors["context"] == 2
        assert factors["radius"] == 12.0 and factors["temperature"] == 0.05
        assert factors["input_resolution"] == "native (480p)"
        assert "bilinear" in factors["outputs_to_pixels"] and "bilinear" in factors["labels_to_grid"]
        assert row["metrics"]["J&F-Mean"] == results["metrics"]["J&F-Mean"]
    assert len({row["metrics"]["J&F-Mean"] for row in summary["settings"]}) > 1  # settings matter
    # One similarity search per sequence too: the first setting keeps top-5, the others read it.
    assert [row["timings"]["match_hits"] for row in summary["settings"]] == [0, 3, 3, 3]
    alone = evaluate(EvalConfig(data_root=str(davis_root), encoder="pixel", context=2, out=str(tmp_path / "alone"),
                                topk=2, label_norm="minmax", normalize_features=False))
    row = summary["settings"][1]["metrics"]
    assert {k: alone["metrics"][k] for k in row} == row  # top-2 of a kept top-5 is exact


def test_sweep_over_presets_on_another_task(tmp_path):
    root = generate_jhmdb(tmp_path / "JHMDB", num_videos=2, num_frames=4, size=(48, 64), seed=1)
    summary = evaluate(EvalConfig(task="jhmdb", data_root=str(root), encoder="pixel", input_size=(64, 64),
                                  out=str(tmp_path / "out"), sweep="preset=crw,dino",
                                  frames="common", output_norm="none"))  # DINO's frame protocol is DAVIS's
    rows = {row["name"]: row for row in summary["settings"]}
    assert set(rows) == {"preset-crw", "preset-dino"}
    assert rows["preset-dino"]["propagation"]["context"] == 7 and rows["preset-crw"]["propagation"]["context"] == 20
    assert rows["preset-crw"]["factors"]["input_resolution"] == [64, 64]
    assert set(rows["preset-crw"]["metrics"]) == {"PCK@0.1", "PCK@0.2"}


def test_ranks_shard_round_robin():
    names = [f"s{i}" for i in range(5)]
    shards = [Runtime(rank=r, world_size=2).shard(names) for r in range(2)]
    assert shards == [["s0", "s2", "s4"], ["s1", "s3"]]
    assert Runtime().shard(names) == names and Runtime(rank=1, world_size=2).owns(3)


def test_two_processes_equal_one(davis_root, tmp_path):
    common = ["--data-root", str(davis_root), "--encoder", "pixel", "--context", "2", "--batch-size", "4"]
    stdout, two, ranks = evaluate_two_processes(common, tmp_path / "two", timeout=120)
    assert stdout.count("J&F-Mean") == 1  # rank 0 alone prints the table
    assert ranks == {0, 1}  # both processes evaluated sequences
    one = evaluate(EvalConfig(data_root=str(davis_root), encoder="pixel", context=2, batch_size=4,
                              out=str(tmp_path / "one")))
    assert two["metrics"] == one["metrics"]
    assert two["per_sequence"] == one["per_sequence"] and two["per_object"] == one["per_object"]
    for seq in ("synth-000", "synth-001", "synth-002"):
        pngs = sorted((tmp_path / "two" / "predictions" / seq).glob("*.png"))
        assert [p.read_bytes() for p in pngs] == \
            [p.read_bytes() for p in sorted((tmp_path / "one" / "predictions" / seq).glob("*.png"))]
