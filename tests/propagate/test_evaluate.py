"""evaluate.py --task davis end to end on a generated DAVIS-format set."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corr.errors import OutputError
from datasets.davis import DavisDataset
from datasets.palette import read_indexed_png
from datasets.synthetic import generate_davis
from evaluate import evaluate
from propagate.eval_config import EvalConfig
from propagate.metrics import DAVIS_SUMMARY_KEYS, score_davis_folder
from propagate.tasks import davis as davis_task

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "DAVIS"
    return generate_davis(root, num_sequences=2, num_frames=8, size=(72, 100), seed=3, sizes=[(72, 100), (64, 120)])


def small_config(davis_root, out, **kw):
    return EvalConfig(data_root=str(davis_root), encoder="pixel", context=3, out=str(out), **kw)


def test_outputs_match_the_scorer_and_formats(davis_root, tmp_path):
    results = evaluate(small_config(davis_root, tmp_path, vis=True))
    metrics = results["metrics"]
    assert set(DAVIS_SUMMARY_KEYS) <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("J&F-Mean", "J-Mean", "F-Mean"))
    assert metrics["J&F-Mean"] > 0.3  # raw pixels track textured objects better than chance
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["metrics"] == metrics
    assert on_disk["config"]["propagation"]["context"] == 3
    assert on_disk["config"]["propagation"]["pad_with_first"] is True  # crw preset
    assert on_disk["dataset"]["listing_sha256"] == DavisDataset(davis_root).identity()["listing_sha256"]
    assert on_disk["timings"]["frames"] == 16
    # Predictions are what the official scorer reads; scoring the folder gives the same numbers.
    dataset = DavisDataset(davis_root)
    for seq in dataset:
        files = sorted((tmp_path / "predictions" / seq.name).glob("*.png"))
        assert [f.stem for f in files] == [p.stem for p in seq.frame_paths]
        ids = read_indexed_png(files[3])
        assert ids.shape == seq.size
        assert set(np.unique(ids)) <= {0, *seq.object_ids()}
        assert (tmp_path / "vis" / f"{seq.name}.mp4").stat().st_size > 0
        assert (tmp_path / "vis" / f"{seq.name}.png").stat().st_size > 0
    folder = score_davis_folder(davis_root, tmp_path / "predictions")
    for k in DAVIS_SUMMARY_KEYS:
        assert folder[k] == pytest.approx(metrics[k], abs=1e-12)


def test_rerun_resumes_and_overwrite_recomputes(davis_root, tmp_path, monkeypatch):
    first = evaluate(small_config(davis_root, tmp_path))
    calls = []
    original = davis_task.propagate_sequence
    monkeypatch.setattr(davis_task, "propagate_sequence", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = evaluate(small_config(davis_root, tmp_path))
    assert calls == [] and again["metrics"] == first["metrics"]
    # A lost sequence record (killed run) is recomputed, the other reused.
    (tmp_path / "sequences" / "synth-000.json").unlink()
    evaluate(small_config(davis_root, tmp_path))
    assert len(calls) == 1
    # Other settings never replace these results silently: an error naming the change, or --overwrite.
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(OutputError, match=r"other settings \(propagation.topk: 10 -> 3\).*--overwrite"):
        evaluate(small_config(davis_root, tmp_path, topk=3))
    assert len(calls) == 1 and (tmp_path / "results.json").read_bytes() == before
    evaluate(small_config(davis_root, tmp_path, topk=3, overwrite=True))
    assert len(calls) == 3
    evaluate(small_config(davis_root, tmp_path, topk=3, overwrite=True))   # same settings: --overwrite redoes
    assert len(calls) == 5


def test_cli_runs_and_reports_bad_input(davis_root, tmp_path):
    cmd = [sys.executable, "evaluate.py", "--data-root", str(davis_root), "--encoder", "pixel",
           "--context", "2", "--radius", "inf", "--no-pad-with-first", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "J&F-Mean" in done.stdout
    config = json.loads((tmp_path / "results.json").read_text())["config"]["propagation"]
    assert config["radius"] is None and config["pad_with_first"] is False and config["context"] == 2
    bad = subprocess.run([sys.executable, "evaluate.py", "--data-root", str(tmp_path / "missing")],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and str(tmp_path / "missing") in bad.stderr
