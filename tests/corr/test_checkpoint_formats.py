"""Published checkpoint layouts (VFS, TimeCycle, DINO full checkpoints) convert to our encoders;
user encoders named package.module:function."""
from __future__ import annotations

import sys

import pytest
import torch
import torchvision

from corr.encoders import build_encoder, load_checkpoint
from corr.io import file_sha256


def _torchvision_resnet(depth: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(depth)
    state = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    return {k: v + torch.rand_like(v.float()).to(v.dtype) if v.is_floating_point() else v for k, v in state.items()}


def _mmaction_key(key: str) -> str:
    """torchvision ResNet key -> mmaction2 / mmcv ConvModule key, as VFS's files name them."""
    parts = key.split(".")
    if parts[0] in ("conv1", "bn1"):
        return f"conv1.{'conv' if parts[0] == 'conv1' else 'bn'}." + ".".join(parts[1:])
    if parts[2] == "downsample":
        return ".".join(parts[:3] + ["conv" if parts[3] == "0" else "bn"] + parts[4:])
    if parts[2].startswith("bn"):
        return ".".join(parts[:2] + [parts[2].replace("bn", "conv"), "bn"] + parts[3:])
    return ".".join(parts[:3] + ["conv"] + parts[3:])


@pytest.mark.parametrize("depth", [18, 50])
def test_vfs_mmaction_layout(depth, tmp_path):
    ref = _torchvision_resnet(depth)
    state = {f"backbone.{_mmaction_key(k)}": v for k, v in ref.items() if not k.startswith("fc.")}
    state["img_head.projection_convs.0.weight"] = torch.zeros(3)
    path = tmp_path / "r18_nc_sgd_cos_100e_r2_1xNx8_k400-db1a4c0d.pth"
    torch.save({"meta": {"epoch": 100}, "state_dict": state}, path)
    encoder, info = load_checkpoint(path)
    assert info["format"] == "vfs" and info["sha256"] == file_sha256(path)
    assert info["encoder"] == ("resnet50" if depth == 50 else "resnet18-crw")
    assert info["kwargs"]["padding_mode"] == "zeros" and encoder.out_layer == "layer3"
    got = encoder.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                "layer3.1.bn2.bias", "layer2.0.downsample.1.running_mean"):
        assert torch.equal(got[key], ref[key]), key
    assert info["ignored_keys"] == ["img_head.projection_convs.0.weight"]


def test_timecycle_inflated_layout(tmp_path):
    ref = _torchvision_resnet(50)
    state = {f"module.encoderVideo.{k}": (v[:, :, None] if v.ndim == 4 else v)
             for k, v in ref.items() if not k.startswith("fc.")}  # 3-D kernels (O, I, 1, k, k)
    state["module.afterconv1.weight"] = torch.zeros(512, 1024, 1, 1, 1)
    path = tmp_path / "checkpoint_14.pth.tar"
    torch.save({"epoch": 14, "state_dict": state}, path)
    encoder, info = load_checkpoint(path)
    assert info["format"] == "timecycle" and info["encoder"] == "resnet50"
    assert torch.equal(encoder.state_dict()["layer3.5.conv2.weight"], ref["layer3.5.conv2.weight"])
    assert "module.afterconv1.weight" in info["ignored_keys"]
    state["module.encoderVideo.conv1.weight"] = torch.zeros(64, 3, 3, 7, 7)
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="temporal kernel size 3"):
        load_checkpoint(path)


def test_dino_full_checkpoint_and_named_format(tmp_path):
    encoder = build_encoder("dino-vits16")
    state = encoder.state_dict()
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save({"student": {f"module.backbone.{k}": v for k, v in state.items()},
                "teacher": {f"backbone.{k}": v + 1 for k, v in state.items()}}, path)
    loaded, info = load_checkpoint(path)
    assert info["format"] == "dino" and info["encoder"] == "dino-vits16" and info["entry"] == "teacher"
    assert torch.equal(loaded.pos_embed, state["pos_embed"] + 1)
    with pytest.raises(ValueError, match="not in the 'vfs' layout"):
        load_checkpoint(path, format="vfs")


def test_user_encoder_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_encoders.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width=5):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, width, 4, stride=4, padding=0)\n"
        "        self.stride = 4\n"
        "    def forward(self, x):\n"
        "        return self.conv(nn.functional.pad(x, (0, -x.shape[-1] % 4, 0, -x.shape[-2] % 4)))\n"
        "def make(width=5):\n"
        "    return Net(width)\n"
        "def no_stride():\n"
        "    return nn.Conv2d(3, 3, 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    encoder = build_encoder("my_encoders:make", width=7)
    assert encoder(torch.randn(1, 3, 21, 30)).shape == (1, 7, 6, 8)
    torch.save(encoder.state_dict(), tmp_path / "mine.pt")
    again = build_encoder("my_encoders:make", weights=tmp_path / "mine.pt", width=7)
    assert torch.equal(again.conv.weight, encoder.conv.weight)
    with pytest.raises(ValueError, match="integer attribute stride"):
        build_encoder("my_encoders:no_stride")
    with pytest.raises(ValueError, match="has no attribute"):
        build_encoder("my_encoders:missing")
    sys.modules.pop("my_encoders", None)
