"""A benchmark is one Task and one registry line: a toy task defined here runs through the runner."""
import ast
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluate import evaluate, parse_args
from propagate.eval_config import EvalConfig
from propagate.labels import grid_size
from propagate.task import Task, TaskDefaults, TaskRun
from propagate.tasks import TASKS
from propagate.video import propagate_frames

REPO = Path(__file__).resolve().parents[2]


class ToyDataset:
    """Three videos of 5 random 32 x 40 frames."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.videos = {f"toy-{i}": rng.integers(0, 256, (5, 32, 40, 3), dtype=np.uint8) for i in range(3)}

    def identity(self) -> dict:
        return {"name": "toy", "listing_sha256": "0" * 64}


class ToyTask(Task):
    """Frame 0's left/right halves propagated; the score is the share of cells that keep their half."""

    name = "toy"
    title = "Toy"
    defaults = TaskDefaults(None, None, REPO / "data" / "toy", REPO / "data" / "synthetic-toy")
    label_resampling = {"labels_to_grid": "halves on the grid", "outputs_to_pixels": "none"}
    headline_metrics = ("agreement",)
    predicted: list = []

    def open(self, cfg: EvalConfig) -> ToyDataset:
        return ToyDataset(seed=0)

    def describe(self, run: TaskRun) -> str:
        return f"toy: {len(run.dataset.videos)} videos; {run.describe()}"

    def videos(self, run: TaskRun):
        return [(name, lambda name=name: (name, run.dataset.videos[name])) for name in run.dataset.videos]

    def predict(self, run: TaskRun, video) -> dict:
        name, frames = video
        self.predicted.append(name)
        stride = run.encoder.stride
        grid = grid_size(*frames.shape[1:3], stride)
        halves = (torch.arange(grid[1]) >= grid[1] // 2).long().expand(grid)
        agreement = []

        def first_label(grid_hw):
            return torch.stack([halves == 0, halves == 1]).float()

        def decode(t, labels):
            agreement.append(float((labels.argmax(0).cpu() == halves).float().mean()))

        timings = propagate_frames(lambda t: frames[t], len(frames), run.encoder, run.prop_cfg, run.device,
                                   first_label, decode, batch_size=2)
        return {"num_frames": len(frames), "timings": timings, "scores": {"agreement": float(np.mean(agreement))}}

    def merge(self, run: TaskRun, records: dict) -> dict:
        scores = [r["scores"]["agreement"] for r in records.values()]
        return {"metrics": {"agreement": float(np.mean(scores))},
                "per_sequence": {name: r["scores"] for name, r in records.items()}}

    def print_table(self, results: dict) -> None:
        print(f"toy agreement {results['metrics']['agreement']:.3f}")


@pytest.fixture
def toy(monkeypatch):
    task = ToyTask()
    task.predicted = []
    monkeypatch.setitem(TASKS, "toy", task)
    return task


def test_a_registered_toy_task_runs_end_to_end_and_resumes(toy, tmp_path, capsys):
    cfg = EvalConfig(task="toy", encoder="pixel", context=2, out=str(tmp_path), device="cpu")
    results = evaluate(cfg)
    assert toy.predicted == ["toy-0", "toy-1", "toy-2"]
    assert "toy agreement" in capsys.readouterr().out
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["metrics"] == results["metrics"] and 0.0 <= results["metrics"]["agreement"] <= 1.0
    assert on_disk["task"] == "toy" and on_disk["config"]["eval"]["task"] == "toy"
    assert on_disk["config"]["propagation"]["context"] == 2 and on_disk["checkpoint"]["encoder"] == "pixel"
    assert on_disk["factors"]["labels_to_grid"] == "halves on the grid" and on_disk["factors"]["context"] == 2
    assert on_disk["timings"]["frames"] == 15 and set(on_disk["timings"]["per_sequence"]) == set(toy.predicted)
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "sequences").glob("*.json")}
    assert set(records) == {"toy-0", "toy-1", "toy-2"}
    assert len({r["run_key"] for r in records.values()}) == 1
    assert all(r["rank"] == 0 and r["num_frames"] == 5 for r in records.values())
    # A rerun skips every done video; a lost record is redone; other settings replace them (--overwrite).
    assert evaluate(cfg)["metrics"] == results["metrics"] and len(toy.predicted) == 3
    (tmp_path / "sequences" / "toy-1.json").unlink()
    assert evaluate(cfg)["metrics"] == results["metrics"] and toy.predicted[3:] == ["toy-1"]
    evaluate(EvalConfig(task="toy", encoder="pixel", context=1, out=str(tmp_path), device="cpu", overwrite=True))
    assert len(toy.predicted) == 7
    # A sweep runs the same task once per setting.
    summary = evaluate(EvalConfig(task="toy", encoder="pixel", out=str(tmp_path / "sweep"), device="cpu",
                                  sweep="context=1,2"))
    assert [row["name"] for row in summary["settings"]] == ["context-1", "context-2"]
    assert set(summary["settings"][0]["metrics"]) == {"agreement"}


def test_the_command_line_lists_the_registered_tasks(toy):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "benchmark: davis|jhmdb|vip|tapvid|video|toy" in " ".join(out.getvalue().split())


def test_the_runner_knows_no_task():
    tree = ast.parse((REPO / "propagate" / "run.py").read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name.startswith(("propagate.tasks", "tasks"))], imported
