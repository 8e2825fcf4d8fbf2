"""evaluate.py --task jhmdb|vip|tapvid end to end on tiny generated sets (pixel encoder)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from corr.errors import OptionError
from datasets.jhmdb import JhmdbDataset
from datasets.palette import read_indexed_png
from datasets.synthetic_tasks import JHMDB_SPLIT, generate_jhmdb, generate_tapvid, generate_vip
from datasets.tapvid import TapVidDataset
from datasets.vip import VipDataset
from evaluate import evaluate
from propagate import video as video_pipeline
from propagate.eval_config import EvalConfig
from propagate.metrics import TAPVID_KEYS, jhmdb_pck, resize_nearest, tapvid_metrics, tapvid_summary, vip_miou
from propagate.tasks import configure
from propagate.tasks import vip as vip_task

REPO = Path(__file__).resolve().parents[2]
SIZE = (64, 64)  # input-size override: an 8 x 8 grid for the stride-8 pixel encoder


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic-tasks")
    return {
        "jhmdb": generate_jhmdb(base / "JHMDB", num_videos=2, num_frames=6, size=(48, 64), seed=1),
        "vip": generate_vip(base / "VIP", num_videos=2, num_frames=5, size=(48, 64), seed=1),
        "tapvid": generate_tapvid(base / "tapvid", num_videos=2, num_frames=8, size=(48, 64), num_points=12, seed=1),
    }


def config(task, root, out, **kw):
    return EvalConfig(task=task, data_root=str(root), encoder="pixel", context=3, input_size=SIZE, out=str(out), **kw)


def on_disk(out):
    return json.loads((Path(out) / "results.json").read_text())


def check_header(results, task):
    for key in ("metrics", "config", "checkpoint", "code_version", "dataset", "timings"):
        assert key in results, key
    assert results["task"] == task
    assert tuple(results["config"]["eval"]["input_size"]) == SIZE
    assert results["config"]["propagation"]["context"] == 3
    assert results["config"]["propagation"]["pad_with_first"] is True  # crw preset
    assert results["checkpoint"]["encoder"] == "pixel"


def positional_features(encoder, frames, device, statistics=None):
    """One-hot position codes: each cell matches only itself, so propagation keeps frame 0's labels."""
    h, w = (math.ceil(n / encoder.stride) for n in frames.shape[1:3])
    codes = torch.eye(h * w, device=device).reshape(h * w, h, w)
    return codes.expand(len(frames), -1, -1, -1).clone()


def test_task_defaults():
    for task, size in (("jhmdb", (320, 320)), ("vip", (560, 560)), ("tapvid", (256, 256)), ("davis", None)):
        cfg = configure(EvalConfig(task=task))
        assert cfg.input_size == size and cfg.out == f"results/{task}" and cfg.preset == "crw"
    assert configure(EvalConfig(task="jhmdb", input_size=(32, 48))).input_size == (32, 48)
    with pytest.raises(ValueError, match="input-size"):
        configure(EvalConfig(task="davis", input_size=(32, 32)))
    with pytest.raises(ValueError, match="unknown task"):
        configure(EvalConfig(task="kitti"))


def test_jhmdb_outputs_and_format(roots, tmp_path):
    results = evaluate(config("jhmdb", roots["jhmdb"], tmp_path, vis=True))
    check_header(results, "jhmdb")
    metrics = results["metrics"]
    keys = [f"PCK@{a}" for a in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert all(0.0 <= metrics[k] <= 1.0 for k in keys)
    assert [metrics[k] for k in keys] == sorted(metrics[k] for k in keys)
    assert on_disk(tmp_path)["metrics"] == metrics
    # Predictions: one .npy [T, 15, 2] per video in original pixels; rescoring them gives the metrics.
    dataset = JhmdbDataset(roots["jhmdb"] / JHMDB_SPLIT, root=roots["jhmdb"])
    preds = []
    for video in dataset:
        pred = np.load(tmp_path / "predictions" / f"{video.name}.npy")
        assert pred.shape == (video.num_frames, 15, 2) and pred.dtype == np.float64
        np.testing.assert_array_equal(pred[0], video.keypoints[0])
        preds.append(pred)
        assert (tmp_path / "vis" / f"{video.name}.mp4").stat().st_size > 0
        assert (tmp_path / "vis" / f"{video.name}.png").stat().st_size > 0
    rescored = jhmdb_pck(preds, [video.keypoints for video in dataset])
    assert all(rescored[a] == pytest.approx(metrics[f"PCK@{a}"]) for a in rescored)


def test_jhmdb_geometry_with_positional_features(roots, tmp_path, monkeypatch):
    """Labels that stay put must decode to frame 0's joints, within a grid cell, in original pixels."""
    monkeypatch.setattr(video_pipeline, "extract_features", positional_features)
    evaluate(config("jhmdb", roots["jhmdb"], tmp_path))
    video = JhmdbDataset(roots["jhmdb"] / JHMDB_SPLIT, root=roots["jhmdb"])[0]
    pred = np.load(tmp_path / "predictions" / f"{video.name}.npy")
    H, W = video.size
    cell = 8 * max(W / SIZE[1], H / SIZE[0])  # one grid cell in original pixels
    first = video.keypoints[0]
    inside = (first >= 0).all(1) & (first[:, 0] < W) & (first[:, 1] < H)
    assert inside.sum() >= 5
    assert np.abs(pred[1:, inside] - first[inside]).max() < cell
    assert (pred[1:, ~inside] == -1).all()


def test_jhmdb_reference_keypoint_encoding_is_recorded_and_decodes_frame_zero(roots, tmp_path, monkeypatch):
    """--keypoint-encoding reference: the results say which encoding produced them; labels that
    stay put decode to frame 0's joints within the encoding's own round trip (a cell and a half)."""
    monkeypatch.setattr(video_pipeline, "extract_features", positional_features)
    cfg = config("jhmdb", roots["jhmdb"], tmp_path)
    cfg.keypoint_encoding = "reference"
    results = evaluate(cfg)
    assert results["factors"]["keypoint_encoding"] == "reference"
    video = JhmdbDataset(roots["jhmdb"] / JHMDB_SPLIT, root=roots["jhmdb"])[0]
    pred = np.load(tmp_path / "predictions" / f"{video.name}.npy")
    H, W = video.size
    cell = 8 * max(W / SIZE[1], H / SIZE[0])
    first = video.keypoints[0]
    inside = (first >= 1.5 * cell).all(1) & (first[:, 0] < W - 1.5 * cell) & (first[:, 1] < H - 1.5 * cell)
    assert inside.sum() >= 3
    assert np.abs(pred[1:, inside] - first[inside]).max() < 1.5 * cell
    default = evaluate(config("jhmdb", roots["jhmdb"], tmp_path / "default"))
    assert default["factors"]["keypoint_encoding"] == "sub-cell"
    with pytest.raises(ValueError, match="--keypoint-encoding"):
        EvalConfig(task="davis", keypoint_encoding="reference").validate()
    with pytest.raises(ValueError, match="--keypoint-encoding"):
        EvalConfig(task="jhmdb", keypoint_encoding="integer").validate()


def test_vip_outputs_format_and_resume(roots, tmp_path, monkeypatch):
    results = evaluate(config("vip", roots["vip"], tmp_path, vis=True))
    check_header(results, "vip")
    metrics = results["metrics"]
    assert 0.0 <= metrics["mIoU"] <= 1.0 and len(metrics["IoU"]) == 20
    assert on_disk(tmp_path)["metrics"]["mIoU"] == metrics["mIoU"]
    # Indexed PNGs at the annotation's size; scoring them (frames >= 1) gives the metrics.
    preds, gts = [], []
    for video in VipDataset(roots["vip"]):
        files = sorted((tmp_path / "predictions" / video.name).glob("*.png"))
        assert [f.stem for f in files] == [p.stem for p in video.frame_paths]
        for t in video.annotated_frames[1:]:
            pred, gt = read_indexed_png(files[t]), video.read_annotation(t)
            assert pred.shape == gt.shape and pred.max() < 20
            preds.append(pred)
            gts.append(gt)
        assert (tmp_path / "vis" / f"{video.name}.mp4").stat().st_size > 0
    assert vip_miou(preds, gts)["mIoU"] == pytest.approx(metrics["mIoU"])
    # A rerun reuses the records; a lost record is recomputed; other settings replace them (--overwrite).
    calls = []
    original = vip_task.predict_vip_video
    monkeypatch.setattr(vip_task, "predict_vip_video", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert evaluate(config("vip", roots["vip"], tmp_path))["metrics"]["mIoU"] == metrics["mIoU"]
    assert calls == []
    (tmp_path / "sequences" / "synth-000.json").unlink()
    evaluate(config("vip", roots["vip"], tmp_path))
    assert len(calls) == 1
    evaluate(config("vip", roots["vip"], tmp_path, topk=3, overwrite=True))
    assert len(calls) == 3


def test_vip_geometry_with_positional_features(roots, tmp_path, monkeypatch):
    monkeypatch.setattr(video_pipeline, "extract_features", positional_features)
    evaluate(config("vip", roots["vip"], tmp_path))
    video = VipDataset(roots["vip"])[0]
    first = video.read_annotation(0)
    last = read_indexed_png(tmp_path / "predictions" / video.name / f"{video.frame_paths[-1].stem}.png")
    # Frame 0's map through the 8 x 8 grid and back: equal away from part boundaries.
    assert (last == resize_nearest(first, last.shape)).mean() > 0.7


@pytest.mark.parametrize("query_mode", ["strided", "first"])
def test_tapvid_outputs_and_format(roots, tmp_path, query_mode):
    results = evaluate(config("tapvid", roots["tapvid"], tmp_path, query_mode=query_mode, vis=query_mode == "first"))
    check_header(results, "tapvid")
    metrics = results["metrics"]
    assert set(TAPVID_KEYS) <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in TAPVID_KEYS)
    assert results["category"] == "64x64" and results["config"]["tracking"]["backward"] == (query_mode == "strided")
    assert on_disk(tmp_path)["metrics"] == metrics
    # One .npz per video in evaluation pixels; rescoring the files gives the metrics.
    per_video = []
    for sample in TapVidDataset(roots["tapvid"], query_mode=query_mode, resolution=SIZE):
        saved = np.load(tmp_path / "predictions" / f"{sample.name}.npz")
        Q, T = sample.occluded.shape
        assert saved["tracks"].shape == (Q, T, 2) and saved["occluded"].shape == (Q, T)
        assert saved["occluded"].dtype == bool
        np.testing.assert_array_equal(saved["query_points"], sample.query_points)
        per_video.append(tapvid_metrics(sample.query_points[None], sample.occluded[None],
                                        sample.target_points[None], saved["occluded"][None],
                                        saved["tracks"][None], query_mode))
    rescored = tapvid_summary(per_video)
    assert all(rescored[k] == pytest.approx(metrics[k], abs=1e-6) for k in TAPVID_KEYS)
    if query_mode == "first":
        assert (tmp_path / "vis" / f"{sample.name}.png").stat().st_size > 0


def test_tapvid_geometry_with_positional_features(roots, tmp_path, monkeypatch):
    """Labels that stay put: every track stays at its query point (corner convention), visible."""
    monkeypatch.setattr(video_pipeline, "extract_features", positional_features)
    evaluate(config("tapvid", roots["tapvid"], tmp_path))
    sample = next(iter(TapVidDataset(roots["tapvid"], query_mode="strided", resolution=SIZE)))
    saved = np.load(tmp_path / "predictions" / f"{sample.name}.npz")
    query_xy = sample.query_points[:, None, [2, 1]]
    error = np.abs(saved["tracks"] - query_xy)  # pixels of the 64 x 64 evaluation frames (8 per cell)
    assert np.median(error) < 0.5 and error.max() < 2.0  # heatmaps cut by the frame's edge decode a bit off
    assert not saved["occluded"].any()


def test_tapvid_fgvc_decoding_is_recorded_and_offsets_points_as_fgvc_does(roots, tmp_path, monkeypatch):
    """Positional features with FGVC's decoding: points come back (s - 1) / 2 px down-right."""
    monkeypatch.setattr(video_pipeline, "extract_features", positional_features)
    results = evaluate(config("tapvid", roots["tapvid"], tmp_path, point_decoding="fgvc"))
    assert results["config"]["tracking"]["decoding"] == "fgvc"
    assert "FGVC" in results["factors"]["outputs_to_pixels"]
    sample = next(iter(TapVidDataset(roots["tapvid"], query_mode="strided", resolution=SIZE)))
    saved = np.load(tmp_path / "predictions" / f"{sample.name}.npz")
    later = np.arange(sample.occluded.shape[1])[None, :] != np.round(sample.query_points[:, :1])
    error = (saved["tracks"] - sample.query_points[:, None, [2, 1]])[later]
    assert np.median(error, axis=0) == pytest.approx([3.5, 3.5], abs=1.0)
    with pytest.raises(ValueError, match="--point-decoding"):
        EvalConfig(task="davis", point_decoding="fgvc").validate()


def test_cli_jhmdb(roots, tmp_path):
    cmd = [sys.executable, "evaluate.py", "--task", "jhmdb", "--data-root", str(roots["jhmdb"]), "--encoder",
           "pixel", "--input-size", "64,64", "--context", "2", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "PCK@0.1" in done.stdout
    assert 0.0 <= on_disk(tmp_path)["metrics"]["PCK@0.2"] <= 1.0
    bad = subprocess.run([*cmd[:5], str(tmp_path / "missing"), *cmd[6:]], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "missing" in bad.stderr


def test_tapvid_kinetics_shards_and_subset(tmp_path):
    path = generate_tapvid(tmp_path / "kinetics", kind="kinetics", num_videos=3, num_frames=6, size=(40, 48),
                           num_points=6, seed=2, num_shards=2)
    names = [video.name for video in TapVidDataset(path).videos()]
    results = evaluate(config("tapvid", path, tmp_path / "out", query_mode="first", sequences=(names[1],)))
    assert list(results["per_sequence"]) == [names[1]] and results["dataset"]["name"] == "TAP-Vid-kinetics"
    assert sorted(p.name for p in (tmp_path / "out" / "predictions").iterdir()) == [f"{names[1]}.npz"]
    with pytest.raises(OptionError, match="nope"):
        evaluate(config("tapvid", path, tmp_path / "out", query_mode="first", sequences=("nope",)))
