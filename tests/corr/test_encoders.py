"""Encoders: shapes and strides, the CRW stride-8/reflect-padding surgery, the pixel
baseline, and the three checkpoint layouts load_checkpoint accepts."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torchvision

from corr.encoders import (
    CHECKPOINT_FORMAT,
    ENCODERS,
    build_encoder,
    encoder_features,
    load_checkpoint,
    load_encoder_weights,
)
from corr.io import file_sha256


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _images(h=40, w=48, b=2):
    return torch.randn(b, 3, h, w)


def _our_checkpoint(encoder, name="resnet18-crw", kwargs=None, step=7):
    return {
        "format": CHECKPOINT_FORMAT,
        "encoder": {"name": name, "kwargs": {"out_layer": "layer4"} if kwargs is None else kwargs,
                    "state_dict": encoder.state_dict()},
        "heads": {"selfsim_fc": {"weight": torch.zeros(128, 512)}},
        "optimizer": {"state": {}, "param_groups": []},
        "step": step,
        "config": {"lr": 1e-4, "clip_len": 4},
        "losses": {"crw": 1.0},
    }


def _randomise_batchnorm(encoder):
    """Non-trivial BN statistics so that a wrongly loaded state would change the output."""
    for m in encoder.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return encoder


@pytest.mark.parametrize(
    "name, size",
    [(n, s) for n in ("resnet18-crw", "pixel") for s in ((64, 64), (250, 300), (57, 41))] + [("resnet50", (57, 41))],
)
def test_output_shape_is_ceil_of_size_over_stride(name, size):
    encoder = build_encoder(name).eval()
    h, w = size
    with torch.no_grad():
        out = encoder(_images(h, w, b=1))
    assert encoder.stride == 8
    assert out.shape == (1, encoder.out_channels, math.ceil(h / 8), math.ceil(w / 8))


@pytest.mark.parametrize(
    "name, layer, channels",
    [("resnet18-crw", "layer3", 256), ("resnet18-crw", "layer4", 512), ("resnet50", "layer3", 1024),
     ("resnet50", "layer4", 2048)],
)
def test_channels_per_out_layer(name, layer, channels):
    encoder = build_encoder(name, out_layer=layer).eval()
    assert encoder.out_channels == channels
    with torch.no_grad():
        assert encoder(_images(33, 40, b=1)).shape == (1, channels, 5, 5)


def test_default_out_layer_is_layer3_and_all_layers_are_kept():
    encoder = build_encoder("resnet18-crw")
    assert encoder.out_layer == "layer3" and encoder.out_channels == 256
    keys = encoder.state_dict().keys()
    assert any(k.startswith("layer4.") for k in keys)
    assert not any(k.startswith(("fc.", "avgpool")) for k in keys)
    # exactly torchvision's key names minus the classifier
    tv_keys = {k for k in torchvision.models.resnet18(weights=None).state_dict() if not k.startswith("fc.")}
    assert set(keys) == tv_keys


@pytest.mark.parametrize("name", ["resnet18-crw", "resnet50"])
def test_every_padded_conv_reflects_and_late_stages_have_stride_one(name):
    encoder = build_encoder(name)
    convs = {n: m for n, m in encoder.named_modules() if isinstance(m, nn.Conv2d)}
    padded = {n: m for n, m in convs.items() if any(p > 0 for p in m.padding)}
    assert "conv1" in padded and padded["conv1"].kernel_size == (7, 7)
    assert sum(m.kernel_size == (3, 3) for m in padded.values()) == sum(m.kernel_size == (3, 3) for m in convs.values())
    assert all(m.padding_mode == "reflect" for m in padded.values())
    late = {n: m for n, m in convs.items() if n.startswith(("layer3", "layer4"))}
    assert "layer3.0.downsample.0" in late and "layer4.0.downsample.0" in late
    assert all(m.stride == (1, 1) and m.dilation == (1, 1) for m in late.values())
    assert convs["layer2.0.downsample.0"].stride == (2, 2)  # layer2 still halves


def test_reflect_padding_differs_from_zero_padding():
    reflect = build_encoder("resnet18-crw").eval()
    zeros = build_encoder("resnet18-crw", padding_mode="zeros").eval()
    zeros.load_state_dict(reflect.state_dict())
    x = _images(b=1)
    with torch.no_grad():
        assert not torch.allclose(reflect(x), zeros(x))


def test_layer3_evaluation_never_runs_layer4():
    encoder = build_encoder("resnet18-crw", out_layer="layer3").eval()
    calls = []
    encoder.layer4.register_forward_hook(lambda *_: calls.append("layer4"))
    encoder.layer3.register_forward_hook(lambda *_: calls.append("layer3"))
    with torch.no_grad():
        encoder(_images(b=1))
    assert calls == ["layer3"]


def test_layer4_features_continue_layer3_features():
    e3 = build_encoder("resnet18-crw", out_layer="layer3").eval()
    e4 = build_encoder("resnet18-crw", out_layer="layer4").eval()
    e4.load_state_dict(e3.state_dict())
    x = _images(b=1)
    with torch.no_grad():
        torch.testing.assert_close(e4.layer4(e3(x)), e4(x))


def test_stage_features_of_one_pass_equal_each_stage_as_output():
    encoder = build_encoder("resnet18-crw", out_layer="layer4").eval()
    x = _images(b=1)
    with torch.no_grad():
        stages = encoder.stage_features(x, ("layer1", "layer3"))
        assert sorted(stages) == ["layer1", "layer3"]
        for layer in ("layer1", "layer3"):
            alone = build_encoder("resnet18-crw", out_layer=layer).eval()
            alone.load_state_dict(encoder.state_dict())
            assert torch.equal(stages[layer], alone(x))
            assert torch.equal(encoder_features(encoder, x, layer), stages[layer])
        assert torch.equal(encoder_features(encoder, x), encoder(x))
    with pytest.raises(ValueError, match="subset"):
        encoder.stage_features(x, ("layer5",))


def test_pixel_encoder_matches_hand_computed_cell_means():
    encoder = build_encoder("pixel", stride=4)
    x = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 6, 7)
    out = encoder(x)
    assert out.shape == (2, 3, 2, 2)
    expected = torch.empty(2, 3, 2, 2)
    for i, (y0, y1) in enumerate([(0, 4), (4, 6)]):
        for j, (x0, x1) in enumerate([(0, 4), (4, 7)]):
            expected[:, :, i, j] = x[:, :, y0:y1, x0:x1].mean(dim=(-2, -1))
    torch.testing.assert_close(out, expected)
    # bottom-right partial cell: rows 4-5, cols 4-6 of channel 0 of image 0 (value = 7*row + col)
    assert out[0, 0, 1, 1].item() == pytest.approx(sum(7 * r + c for r in (4, 5) for c in (4, 5, 6)) / 6)
    assert list(encoder.parameters()) == []


def test_pixel_encoder_default_stride_and_constant_image():
    encoder = build_encoder("pixel")
    out = encoder(torch.full((1, 3, 250, 300), 0.25))
    assert encoder.stride == 8 and encoder.out_channels == 3
    assert out.shape == (1, 3, 32, 38)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))


def test_bad_input_shape_is_reported():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_encoder("resnet18-crw")(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("resnet9000")


def test_eval_mode_is_deterministic():
    encoder = build_encoder("resnet18-crw").eval()
    x = _images()
    with torch.no_grad():
        a, b = encoder(x), encoder(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a batch gives the same features as its items one by one (no batch statistics in eval)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x[:1]), a[:1], rtol=1e-4, atol=1e-4)


def test_our_checkpoint_round_trip_gives_layer3_features(tmp_path):
    trained = _randomise_batchnorm(build_encoder("resnet18-crw", out_layer="layer4"))
    path = tmp_path / "ckpt.pt"
    torch.save(_our_checkpoint(trained), path)

    encoder, info = load_checkpoint(path)
    assert not encoder.training
    assert encoder.out_layer == "layer3" and encoder.out_channels == 256
    assert info["encoder"] == "resnet18-crw" and info["format"] == CHECKPOINT_FORMAT
    assert info["step"] == 7 and info["losses"] == {"crw": 1.0} and info["config"]["clip_len"] == 4
    assert info["sha256"] == file_sha256(path) and info["layer4_loaded"] is True

    direct = build_encoder("resnet18-crw", out_layer="layer3").eval()
    direct.load_state_dict(trained.state_dict())
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), direct(x), rtol=0, atol=0)

    training_view, _ = load_checkpoint(path, out_layer="layer4")
    assert training_view.out_channels == 512
    with torch.no_grad():
        torch.testing.assert_close(training_view(x), trained.eval()(x), rtol=0, atol=0)


def test_reference_crw_layout_loads(tmp_path):
    source = _randomise_batchnorm(build_encoder("resnet18-crw", out_layer="layer4"))
    model = {f"module.encoder.model.{k}": v for k, v in source.state_dict().items()}
    # early reference checkpoints wrapped padded convs as Sequential(pad, conv)
    model["module.encoder.model.layer1.0.conv1.1.weight"] = model.pop("module.encoder.model.layer1.0.conv1.weight")
    model["module.selfsim_fc.weight"] = torch.randn(128, 512)
    model["module.selfsim_fc.bias"] = torch.randn(128)
    path = tmp_path / "crw.pth"
    torch.save({"model": model, "optimizer": {}, "epoch": 24}, path)

    encoder, info = load_checkpoint(path)
    assert info["encoder"] == "resnet18-crw" and info["format"] == "crw-reference"
    assert info["epoch"] == 24 and info["kwargs"]["padding_mode"] == "reflect"
    assert sorted(info["ignored_keys"]) == ["module.selfsim_fc.bias", "module.selfsim_fc.weight"]
    expected = build_encoder("resnet18-crw").eval()
    expected.load_state_dict(source.state_dict())
    x = _images(b=1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), expected(x), rtol=0, atol=0)


def test_reference_crw_layout_with_argparse_args_and_without_layer4(tmp_path):
    import argparse

    source = build_encoder("resnet18-crw")
    model = {f"encoder.model.{k}": v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "crw_eval.pth"
    torch.save({"model": model, "args": argparse.Namespace(model_type="scratch", lr=1e-4)}, path)

    encoder, info = load_checkpoint(path)
    assert info["layer4_loaded"] is False and info["reference_model_type"] == "scratch"
    assert encoder.out_channels == 256
    with pytest.raises(ValueError, match="missing keys: layer4"):
        load_checkpoint(path, out_layer="layer4")


def test_torchvision_state_dict_loads_via_weights(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    _randomise_batchnorm(reference)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)

    encoder = build_encoder("resnet18-crw", weights=path)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key])

    # old torchvision files have no num_batches_tracked counters
    old = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, path)
    build_encoder("resnet18-crw", weights=path)

    # the same file through load_checkpoint, name inferred or given
    encoder, info = load_checkpoint(path)
    assert info["format"] == "torchvision-state-dict" and info["encoder"] == "resnet18-crw"
    assert info["ignored_keys"] == ["fc.weight", "fc.bias"]

    r50 = tmp_path / "resnet50.pth"
    torch.save({f"module.{k}": v for k, v in torchvision.models.resnet50(weights=None).state_dict().items()}, r50)
    encoder, info = load_checkpoint(r50, name="resnet50")
    assert info["encoder"] == "resnet50" and encoder.out_channels == 1024


def test_mismatched_keys_are_listed_with_the_file_name(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state.pop("layer2.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken-weights.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        build_encoder("resnet18-crw", weights=path)
    message = str(error.value)
    assert "broken-weights.pth" in message
    assert "1 missing keys: layer2.0.conv1.weight" in message
    assert "1 unexpected keys: extra.weight" in message

    # a wrongly prefixed file: many of each, counted and truncated to the first 10
    reference = torchvision.models.resnet18().state_dict()
    state = {(f"backbone.{k}" if k.startswith("layer1.") else k): v for k, v in reference.items()}
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"(?s)20 missing keys: layer1\..*\(10 more\).*"
                                         r"24 unexpected keys: backbone\.layer1.*\(14 more\)"):
        build_encoder("resnet18-crw", weights=path)


def test_load_encoder_weights_reports_wrong_shapes():
    encoder = build_encoder("resnet18-crw")
    state = encoder.state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError, match=r"(?s)in-memory.*wrong shape keys: "
                                         r"conv1.weight \(file \(64, 3, 3, 3\), model \(64, 3, 7, 7\)\)"):
        load_encoder_weights(encoder, state, "in-memory")


def test_missing_file_and_unknown_layout(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(missing)
    odd = tmp_path / "odd.pth"
    torch.save({"net": {"w": torch.zeros(1)}, "iteration": 3}, odd)
    with pytest.raises(ValueError, match=r"(?s)odd.pth.*unrecognised.*'net': dict.*'iteration': int"):
        load_checkpoint(odd)
    wrong_version = tmp_path / "v0.pth"
    torch.save({"format": "corr-checkpoint-v0"}, wrong_version)
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        load_checkpoint(wrong_version)


def test_name_conflict_and_pixel_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(_our_checkpoint(build_encoder("resnet18-crw", out_layer="layer4")), path)
    with pytest.raises(ValueError, match="resnet50"):
        load_checkpoint(path, name="resnet50")

    pixel_path = tmp_path / "pixel.pt"
    torch.save(_our_checkpoint(build_encoder("pixel"), name="pixel", kwargs={"stride": 4}), pixel_path)
    encoder, info = load_checkpoint(pixel_path)
    assert encoder.stride == 4 and info["encoder"] == "pixel"


def test_registry_names():
    assert set(ENCODERS) == {"resnet18-crw", "resnet50", "resnet18-s4", "resnet18-s2", "resnet18-fgvc", "pixel"}


class _UnlistedConfig:
    """A class a weights-only load does not know."""

    def __init__(self):
        self.lr = 1e-4


def test_files_needing_full_unpickling_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "pickled.pt"
    checkpoint = _our_checkpoint(build_encoder("pixel"), name="pixel", kwargs={})
    checkpoint["config"] = _UnlistedConfig()
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"(?s)pickled.pt.*allow_pickle=True"):
        load_checkpoint(path)
    encoder, info = load_checkpoint(path, allow_pickle=True)
    assert info["config"].lr == 1e-4 and encoder.stride == 8
