"""evaluate.py with a ViT (--encoder dino-vits16 --weights FILE in DINO's layout) and with a
published checkpoint layout (--checkpoint), end to end on real DAVIS frames (davis-mini)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from corr.encoders import build_encoder
from corr.io import file_sha256
from evaluate import evaluate, parse_args


def few_frames(davis_mini: Path, root: Path, sequence: str = "dog-agility", frames: int = 3) -> Path:
    """A DAVIS-2017 folder with the first ``frames`` frames of one davis-mini sequence (keeps ViTs fast)."""
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        (root / kind / "480p" / sequence).mkdir(parents=True)
        for t in range(frames):
            name = f"{t:05d}.{ext}"
            shutil.copy(davis_mini / kind / "480p" / sequence / name, root / kind / "480p" / sequence / name)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(sequence + "\n")
    return root


def test_evaluate_dino_vits16_from_the_authors_layout(davis_mini, tmp_path):
    root = few_frames(davis_mini, tmp_path / "DAVIS")
    torch.manual_seed(0)
    weights = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(build_encoder("dino-vits16").state_dict(), weights)  # random, in the authors' key layout
    out = tmp_path / "out"
    evaluate(parse_args(["--task", "davis", "--data-root", str(root), "--encoder", "dino-vits16",
                         "--weights", str(weights), "--preset", "dino", "--device", "cpu", "--out", str(out)]))
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"] == {"encoder": "dino-vits16", "format": "dino", "path": str(weights),
                                     "sha256": file_sha256(weights)}
    factors = results["factors"]
    assert (factors["context"], factors["topk"], factors["temperature"]) == (7, 5, 0.1)
    assert (factors["neighbourhood"], factors["restrict_first"], factors["output_norm"], factors["frames"]) == \
        ("square", True, "minmax", "dino")
    assert factors["input_statistics"]["std"] == [0.228, 0.224, 0.225]
    assert set(factors) >= {"feature_normalisation", "label_normalisation", "labels_to_grid", "outputs_to_pixels",
                            "input_resolution", "frame_resize", "radius", "pad_with_first"}
    assert 0.0 <= results["metrics"]["J&F-Mean"] <= 1.0
    assert len(list((out / "predictions" / "dog-agility").glob("*.png"))) == 3


def test_evaluate_a_converted_vfs_checkpoint(davis_mini, tmp_path):
    root = few_frames(davis_mini, tmp_path / "DAVIS")
    encoder = build_encoder("resnet18-crw")
    state = {}
    for key, value in encoder.state_dict().items():  # torchvision keys -> mmaction2's
        parts = key.split(".")
        if parts[0] in ("conv1", "bn1"):
            mm = f"conv1.{'conv' if parts[0] == 'conv1' else 'bn'}." + ".".join(parts[1:])
        elif parts[2] == "downsample":
            mm = ".".join(parts[:3] + ["conv" if parts[3] == "0" else "bn"] + parts[4:])
        elif parts[2].startswith("bn"):
            mm = ".".join(parts[:2] + [parts[2].replace("bn", "conv"), "bn"] + parts[3:])
        else:
            mm = ".".join(parts[:3] + ["conv"] + parts[3:])
        state[f"backbone.{mm}"] = value
    path = tmp_path / "vfs.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    out = tmp_path / "out"
    evaluate(parse_args(["--data-root", str(root), "--checkpoint", str(path), "--checkpoint-format", "vfs",
                         "--context", "1", "--device", "cpu", "--out", str(out)]))
    checkpoint = json.loads((out / "results.json").read_text())["checkpoint"]
    assert checkpoint["format"] == "vfs" and checkpoint["sha256"] == file_sha256(path)
    assert checkpoint["kwargs"]["padding_mode"] == "zeros"
