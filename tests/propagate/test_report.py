"""The HTML report (propagate.report): what it is built from, and the page in headless Chromium.

Runs are tiny (pixel encoder, a few small frames) so that the whole module takes seconds;
the real DAVIS sample is cut to its first frames for the same reason.
"""
import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import browser_or_skip, check_report

from datasets.davis import DavisDataset
from datasets.palette import read_indexed_png
from datasets.synthetic import generate_davis
from datasets.synthetic_tasks import generate_jhmdb, generate_tapvid, generate_vip
from evaluate import evaluate
from propagate.eval_config import EvalConfig
from propagate.metrics import davis_sequence_scores
from propagate.report import write_report
from propagate.report.__main__ import main as report_command
from propagate.report.context import PANEL_HEIGHT, ReportContext, panel_frame, scale_centre_points, worst_videos
from propagate.report.davis import frame_scores
from propagate.report.html import Page
from propagate.report.run_report import run_config
from propagate.report.sweep import metric_grids
from propagate.tasks import get_task
from propagate.video_writer import H264_MIME, video_codec
from propagate.visualize import error_overlay, side_by_side

REPO = Path(__file__).resolve().parents[2]
SIZE = (64, 64)


def run(task, root, out, **kw):
    cfg = EvalConfig(task=task, data_root=str(root), encoder="pixel", context=3, out=str(out), report=True, **kw)
    return evaluate(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished runs with --report: three generated DAVIS sequences, JHMDB, VIP, TAP-Vid and a sweep."""
    base = tmp_path_factory.mktemp("report")
    davis = generate_davis(base / "DAVIS", num_sequences=4, num_frames=6, size=(72, 100), seed=3)
    run("davis", davis, base / "davis")
    run("jhmdb", generate_jhmdb(base / "JHMDB", num_videos=3, num_frames=6, size=(48, 64), seed=1), base / "jhmdb",
        input_size=SIZE)
    run("vip", generate_vip(base / "VIP", num_videos=3, num_frames=5, size=(48, 64), seed=1), base / "vip",
        input_size=SIZE)
    run("tapvid", generate_tapvid(base / "tapvid", num_videos=3, num_frames=8, size=(48, 64), num_points=12, seed=1),
        base / "tapvid", input_size=SIZE)
    run("davis", davis, base / "sweep", sweep="topk=1,2 context=1,2", sequences=("synth-000", "synth-001"))
    return {"base": base, "davis_root": davis, **{k: base / k for k in ("davis", "jhmdb", "vip", "tapvid", "sweep")}}


def test_a_run_report_holds_table_curves_and_worst_videos(runs):
    out = runs["davis"]
    results = json.loads((out / "results.json").read_text())
    page = (out / "report" / "index.html").read_text()
    for name in results["per_sequence"]:
        assert (out / "report" / "curves" / f"{name}.png").is_file()
        assert f"<td><a href=\"#{name}\">{name}</a></td>" in page or f"<td>{name}</td>" in page
    worst = worst_videos(results["per_sequence"], "J&F-Mean")
    assert len(worst) == 3 and len(results["per_sequence"]) == 4
    videos = sorted((out / "report" / "videos").iterdir())
    assert [v.stem for v in videos] == sorted(worst)
    assert all(video_codec(v) == "h264" for v in videos)
    assert page.count(f'type="{html.escape(H264_MIME)}"') == 3
    assert "J&amp;F-Mean" in page and "implementation factors" in page
    assert "labels_to_grid" in page  # the factors are on the page


def test_per_frame_scores_are_the_records_or_the_scorer_recomputed(runs, tmp_path):
    out = shutil.copytree(runs["davis"], tmp_path / "copy")
    results = json.loads((out / "results.json").read_text())
    task = get_task("davis")
    dataset = DavisDataset(runs["davis_root"], split="val")
    ctx = ReportContext(out, out / "report", results, run_config(results), task, dataset, None, Page("t"))
    for name in results["per_sequence"]:
        seq = dataset[name]
        preds = np.stack([read_indexed_png(out / "predictions" / name / f"{p.stem}.png") for p in seq.frame_paths])
        expected = davis_sequence_scores(seq.annotations(), preds)["objects"]
        from_record = frame_scores(ctx, name)
        (out / "sequences" / f"{name}.json").unlink()
        recomputed = frame_scores(ctx, name)
        assert set(from_record) == set(recomputed) == {str(k) for k in expected}
        for k, obj in expected.items():
            for score in ("J", "F"):
                np.testing.assert_allclose(from_record[str(k)][score], obj[score], atol=1e-12)
                np.testing.assert_allclose(recomputed[str(k)][score], obj[score], atol=1e-12)


def test_the_command_rebuilds_a_report_and_says_when_it_cannot(runs, tmp_path, capsys):
    out = shutil.copytree(runs["jhmdb"], tmp_path / "jhmdb")
    shutil.rmtree(out / "report")
    report_command([str(out)])
    assert f"report: {out / 'report' / 'index.html'}" in capsys.readouterr().out
    assert (out / "report" / "index.html").is_file() and len(list((out / "report" / "videos").iterdir())) == 3
    with pytest.raises(SystemExit) as stop:
        report_command([str(tmp_path / "nothing")])
    assert stop.value.code == 2 and "a report needs a finished run" in capsys.readouterr().err


def test_without_its_dataset_a_report_keeps_what_the_records_give(runs, tmp_path):
    out = shutil.copytree(runs["davis"], tmp_path / "davis")
    shutil.rmtree(out / "report")
    write_report(out, data_root=str(tmp_path / "moved-away"))
    page = (out / "report" / "index.html").read_text()
    assert "Videos left out" in page and "--data-root" in page
    assert not (out / "report" / "videos").exists()
    assert len(list((out / "report" / "curves").iterdir())) == 4  # per-frame scores come from the records


def test_sweep_report_maps_each_setting_to_its_cell(runs):
    summary = json.loads((runs["sweep"] / "sweep" / "summary.json").read_text())
    [(title, values, row_name, rows, column_name, columns)] = metric_grids(summary["settings"], "J&F-Mean")
    assert (row_name, rows, column_name, columns) == ("topk", [1, 2], "context", [1, 2])
    for setting in summary["settings"]:
        o = setting["overrides"]
        assert values[rows.index(o["topk"]), columns.index(o["context"])] == setting["metrics"]["J&F-Mean"]
        assert (runs["sweep"] / "sweep" / setting["name"] / "report" / "index.html").is_file()
    assert (runs["sweep"] / "report" / "heatmap-0.png").is_file()


def test_grids_of_three_settings_and_missing_cells():
    rows = [{"overrides": {"a": a, "b": b, "c": c}, "metrics": {"m": None if (a, b, c) == (2, 1, 1) else a + b + c}}
            for a in (1, 2) for b in (1,) for c in (0, 1)]
    grids = metric_grids(rows, "m")
    assert [g[0] for g in grids] == ["m, c=0", "m, c=1"]
    assert grids[1][1].shape == (2, 1) and np.isnan(grids[1][1][1, 0]) and grids[0][1][1, 0] == 3


def test_worst_videos_skip_missing_scores():
    per = {"a": {"m": 0.5}, "b": {"m": float("nan")}, "c": {"m": 0.1}, "d": {}, "e": {"m": 0.3}}
    assert worst_videos(per, "m", 2) == ["c", "e"]


def test_panels_and_error_colours():
    frame = np.full((10, 20, 3), 100, np.uint8)
    gt = np.zeros((10, 20), np.uint8)
    gt[:, :5] = 1
    gt[0, :] = 255
    pred = np.zeros_like(gt)
    pred[:, 3:8] = 1
    error = error_overlay(frame, gt, pred, void=255)
    assert tuple(error[5, 6]) == (230, 40, 40) and tuple(error[5, 1]) == (40, 90, 230)
    assert tuple(error[0, 6]) == (50, 50, 50) and tuple(error[5, 15]) == (50, 50, 50)  # void, right
    joined = side_by_side([frame, frame[:, :10]], ["a", "b"], height=20)
    assert joined.shape == (20, 40 + 4 + 20, 3) and (joined[:, 40:44] == 255).all()
    resized, scale = panel_frame(frame)
    assert resized.shape == (PANEL_HEIGHT, 2 * PANEL_HEIGHT, 3) and scale == PANEL_HEIGHT / 10
    # pixel 0's centre (0) covers [0, 1): twice as large, its centre is at 0.5; -1 = not predicted stays
    np.testing.assert_array_equal(scale_centre_points(np.array([[0.0, 3.0], [-1.0, 1.5]]), 2.0),
                                  [[0.5, 6.5], [-1.0, 3.5]])


def test_the_table_keeps_numbers_for_sorting_and_escapes_text():
    page = Page("<t>")
    page.table(["name", "n", "x"], [["<a>", 3, 0.25], ["b", 1, float("nan")]])
    text = page.render()
    assert 'data-value="0.25">25.0<' in text and 'data-value="NaN">n/a<' in text and 'data-value="3">3<' in text
    assert "&lt;a&gt;" in text and "<a>" not in text.replace("<a href", "")


@pytest.fixture
def davis_mini_run(davis_mini, tmp_path_factory):
    """``evaluate.py --task davis --data-root <davis-mini> --report`` on the real sample, each
    sequence cut to its first 5 frames (frames and annotations copied) to take seconds."""
    base = tmp_path_factory.mktemp("davis-mini")
    root = base / "DAVIS"
    names = ["dog-agility", "rollerblade"]
    for kind, suffix in (("JPEGImages", "*.jpg"), ("Annotations", "*.png")):
        for name in names:
            target = root / kind / "480p" / name
            target.mkdir(parents=True)
            for path in sorted((davis_mini / kind / "480p" / name).glob(suffix))[:5]:
                shutil.copy(path, target / path.name)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    done = subprocess.run([sys.executable, "evaluate.py", "--task", "davis", "--data-root", str(root), "--encoder",
                           "pixel", "--context", "2", "--out", str(base / "out"), "--report"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "report: " in done.stdout
    return base / "out"


REPORTS = [("davis", "report/index.html", "sequences"), ("jhmdb", "report/index.html", "sequences"),
           ("vip", "report/index.html", "sequences"), ("tapvid", "report/index.html", "sequences"),
           ("sweep", "report/index.html", "settings"),
           ("sweep", "sweep/topk-2_context-1/report/index.html", "sequences")]


def test_reports_in_headless_chromium(runs, tmp_path):
    """Every image loads, every video's type is playable and its first frame decodes, tables sort."""
    with browser_or_skip() as driver:
        for kind, page, table in REPORTS:
            seen = check_report(driver, runs[kind] / page, tmp_path / f"{kind}.png", table)
            assert seen["images"] >= (1 if kind in ("davis", "sweep") else 0), (kind, seen)  # curves, heat map
            assert seen["sorted"], (kind, seen)
            if kind != "sweep" or page != "report/index.html":
                assert seen["videos"] >= 1, (kind, seen)
    skip_without_h264(seen)


def skip_without_h264(seen: dict) -> None:
    """After every other check passed: a skip, not a pass, where the videos could not be played."""
    if not seen["h264"]:
        pytest.skip("this Chromium plays no H.264 (built without proprietary codecs): tables and images were "
                    "checked, the report videos were not")


def test_the_real_sample_report_in_headless_chromium(davis_mini_run, tmp_path):
    with browser_or_skip() as driver:
        seen = check_report(driver, davis_mini_run / "report" / "index.html", tmp_path / "davis-mini.png")
    assert {k: seen[k] for k in ("images", "videos", "rows", "sorted")} == {"images": 2, "videos": 2, "rows": 2,
                                                                           "sorted": True}
    skip_without_h264(seen)
