"""evaluate.py with a ViT (--encoder dino-vits16 --weights FILE in DINO's layout) and with each
published checkpoint layout (--checkpoint), end to end on real DAVIS frames (davis-mini)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from corr.encoders import build_encoder
from corr.io import file_sha256
from evaluate import evaluate, parse_args
from propagate.encoder_loading import load_encoder


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


def _to_mmcv(key: str) -> str:
    """``backbone.<torchvision key>`` -> ``backbone.<mmaction2 / mmcv ConvModule key>``."""
    parts = key.split(".")[1:]
    if parts[0] in ("conv1", "bn1"):
        mm = f"conv1.{'conv' if parts[0] == 'conv1' else 'bn'}." + ".".join(parts[1:])
    elif parts[2] == "downsample":
        mm = ".".join(parts[:3] + ["conv" if parts[3] == "0" else "bn"] + parts[4:])
    elif parts[2].startswith("bn"):
        mm = ".".join(parts[:2] + [parts[2].replace("bn", "conv"), "bn"] + parts[3:])
    else:
        mm = ".".join(parts[:3] + ["conv"] + parts[3:])
    return f"backbone.{mm}"


def test_evaluate_a_converted_vfs_checkpoint(davis_mini, tmp_path):
    root = few_frames(davis_mini, tmp_path / "DAVIS")
    encoder = build_encoder("resnet18-crw")
    state = {_to_mmcv(f"backbone.{key}"): value for key, value in encoder.state_dict().items()}
    path = tmp_path / "vfs.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    out = tmp_path / "out"
    evaluate(parse_args(["--data-root", str(root), "--checkpoint", str(path), "--checkpoint-format", "vfs",
                         "--context", "1", "--device", "cpu", "--out", str(out)]))
    checkpoint = json.loads((out / "results.json").read_text())["checkpoint"]
    assert checkpoint["format"] == "vfs" and checkpoint["sha256"] == file_sha256(path)
    assert checkpoint["kwargs"]["padding_mode"] == "zeros"


def test_evaluate_a_mast_checkpoint_and_a_named_spa_then_temp_variant(davis_mini, tmp_path):
    root = few_frames(davis_mini, tmp_path / "DAVIS")
    for image in root.glob("*/480p/*/*"):  # a quarter of the pixels: MAST's layer3/4 run at stride 4
        picture = Image.open(image)  # annotations keep their palette and indices (nearest neighbour)
        picture.resize((picture.width // 2, picture.height // 2), Image.NEAREST).save(image)
    torch.manual_seed(0)
    path = tmp_path / "mast.pt"
    torch.save({"epoch": 1, "state_dict": build_encoder("mast").state_dict()}, path)  # the authors' key names
    out = tmp_path / "out"
    evaluate(parse_args(["--data-root", str(root), "--checkpoint", str(path), "--context", "1", "--device", "cpu",
                         "--out", str(out)]))
    results = json.loads((out / "results.json").read_text())
    assert (results["checkpoint"]["encoder"], results["checkpoint"]["format"], results["checkpoint"]["sha256"]) == \
        ("mast", "mast", file_sha256(path))
    assert 0.0 <= results["metrics"]["J&F-Mean"] <= 1.0
    # evaluate's loader with --checkpoint-format and a variant --encoder
    path = tmp_path / "res18_d4.pth"
    state = {f"backbone.{k}": v for k, v in build_encoder("resnet18-stt").state_dict().items()}
    torch.save({"meta": {}, "state_dict": {_to_mmcv(k): v for k, v in state.items()}}, path)
    cfg = parse_args(["--checkpoint", str(path), "--checkpoint-format", "spa-then-temp",
                      "--encoder", "resnet18-stt-s4", "--device", "cpu"])
    encoder, info = load_encoder(cfg, torch.device("cpu"))
    assert (info["encoder"], info["format"], encoder.stride) == ("resnet18-stt-s4", "spa-then-temp", 4)


def _inflated(key: str, value: torch.Tensor) -> torch.Tensor:
    return value[:, :, None] if value.ndim == 4 else value            # TimeCycle's (O, I, 1, k, k) kernels


#: One file per remaining family, in the authors' layout, built from our encoder's weights.
PUBLISHED_FILES = {
    "timecycle": ("resnet50", lambda state: {"epoch": 14, "state_dict": {
        f"module.encoderVideo.{k}": _inflated(k, v) for k, v in state.items()}}),
    "uvc": ("resnet18-uvc", lambda state: {"epoch": 30, "state_dict": {
        f"module.gray_encoder.{k}": v for k, v in state.items()}}),
    "fgvc": ("resnet18-fgvc", lambda state: {"meta": {}, "state_dict": {
        **{_to_mmcv(f"backbone.{k}"): v for k, v in state.items()},
        **{_to_mmcv(f"backbone.{k}").replace("backbone.", "teacher.", 1): v for k, v in state.items()}}}),
    "dinov2": ("dinov2-vits14", lambda state: dict(state)),
}


@pytest.mark.parametrize("layout", sorted(PUBLISHED_FILES))
def test_evaluate_each_remaining_published_layout_end_to_end(layout, davis_mini, tmp_path):
    root = few_frames(davis_mini, tmp_path / "DAVIS", frames=3)
    for image in root.glob("*/480p/*/*"):  # a quarter of the pixels keeps ResNet-50 and ViT runs short
        picture = Image.open(image)
        picture.resize((picture.width // 2, picture.height // 2), Image.NEAREST).save(image)
    name, to_file = PUBLISHED_FILES[layout]
    torch.manual_seed(0)
    state = {k: v for k, v in build_encoder(name).state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / f"{layout}.pth"
    torch.save(to_file(state), path)
    out = tmp_path / "out"
    evaluate(parse_args(["--data-root", str(root), "--checkpoint", str(path), "--context", "1", "--device", "cpu",
                         "--out", str(out)]))
    results = json.loads((out / "results.json").read_text())
    assert (results["checkpoint"]["encoder"], results["checkpoint"]["format"]) == (name, layout)
    assert results["checkpoint"]["sha256"] == file_sha256(path) and 0.0 <= results["metrics"]["J&F-Mean"] <= 1.0
    assert results["factors"]["context"] == 1 and len(list((out / "predictions" / "dog-agility").glob("*.png"))) == 3
