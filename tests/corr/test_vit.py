"""DINO / DINOv2 ViT encoders: the authors' key layout loads, the grid is ceil(H/p) x ceil(W/p),
the forward and the position-embedding resampling equal the authors' formulas computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr.encoders import VIT_ENCODERS, build_encoder, interpolate_pos_embed

# name -> (width, patch, family) as the authors' files hold them
MODELS = {"dino-vits16": (384, 16, "dino"), "dino-vits8": (384, 8, "dino"), "dino-vitb16": (768, 16, "dino"),
          "dino-vitb8": (768, 8, "dino"), "dinov2-vits14": (384, 14, "dinov2"), "dinov2-vitb14": (768, 14, "dinov2"),
          "dinov2-vits14-reg": (384, 14, "dinov2-reg"), "dinov2-vitb14-reg": (768, 14, "dinov2-reg")}


def authors_state_dict(width: int, patch: int, family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the key names and shapes of the released files (written from their
    vision_transformer.py: DINO 224 px training grid, DINOv2 518 px, LayerScale, 4 registers)."""
    g = torch.Generator().manual_seed(seed)
    grid = (224 if family == "dino" else 518) // patch
    shapes = {"cls_token": (1, 1, width), "pos_embed": (1, 1 + grid * grid, width),
              "patch_embed.proj.weight": (width, 3, patch, patch), "patch_embed.proj.bias": (width,),
              "norm.weight": (width,), "norm.bias": (width,)}
    if family != "dino":
        shapes["mask_token"] = (1, width)
    if family == "dinov2-reg":
        shapes["register_tokens"] = (1, 4, width)
    for i in range(12):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (width,), b + "norm1.bias": (width,),
                       b + "attn.qkv.weight": (3 * width, width), b + "attn.qkv.bias": (3 * width,),
                       b + "attn.proj.weight": (width, width), b + "attn.proj.bias": (width,),
                       b + "norm2.weight": (width,), b + "norm2.bias": (width,),
                       b + "mlp.fc1.weight": (4 * width, width), b + "mlp.fc1.bias": (4 * width,),
                       b + "mlp.fc2.weight": (width, 4 * width), b + "mlp.fc2.bias": (width,)})
        if family != "dino":
            shapes.update({b + "ls1.gamma": (width,), b + "ls2.gamma": (width,)})
    return {k: torch.randn(s, generator=g) * (0.05 if len(s) > 1 else 0.5) + (1.0 if k.endswith("gamma") else 0.0)
            for k, s in shapes.items()}


def test_every_registered_vit_has_a_layout():
    assert set(VIT_ENCODERS) == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_vit_loads_the_authors_layout_and_gives_the_ceil_grid(name, tmp_path):
    width, patch, family = MODELS[name]
    state = authors_state_dict(width, patch, family)
    path = tmp_path / "weights.pth"
    if family == "dino":  # a full training checkpoint: teacher entry with backbone. prefixes and a head
        torch.save({"teacher": {**{f"backbone.{k}": v for k, v in state.items()},
                                "head.mlp.0.weight": torch.zeros(2, width)},
                    "student": {f"module.backbone.{k}": -v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save(state, path)
    encoder = build_encoder(name, weights=path).eval()
    assert encoder.stride == patch and encoder.out_channels == width
    assert torch.equal(encoder.state_dict()["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"])
    encoder.blocks = encoder.blocks[:1]  # the grid does not depend on the depth; keeps the test fast
    with torch.no_grad():
        for H, W in ((2 * patch + 3, 3 * patch - 1), (patch, patch)):
            out = encoder(torch.randn(1, 3, H, W))
            assert out.shape == (1, width, math.ceil(H / patch), math.ceil(W / patch))


@pytest.mark.parametrize("patch", [8, 14])
def test_grid_at_480x854(patch):
    encoder = build_encoder("dino-vits8" if patch == 8 else "dinov2-vits14-reg").eval()
    encoder.blocks = encoder.blocks[:1]
    with torch.no_grad():
        out = encoder(torch.randn(1, 3, 480, 854))
    assert out.shape == (1, 384, math.ceil(480 / patch), math.ceil(854 / patch))  # 60x107 / 35x61


def test_wrong_layout_gives_missing_and_unexpected_keys(tmp_path):
    state = authors_state_dict(384, 16, "dino")
    del state["blocks.3.attn.qkv.bias"]
    state["blocks.3.attn.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"(?s)1 missing keys: blocks.3.attn.qkv.bias.*1 unexpected keys"):
        build_encoder("dino-vits16", weights=tmp_path / "w.pth")
    torch.save(authors_state_dict(768, 16, "dino"), tmp_path / "b.pth")
    with pytest.raises(ValueError, match="wrong shape"):
        build_encoder("dino-vits16", weights=tmp_path / "b.pth")


# ----------------------------------------------------------------------------- by hand


def cubic(t: float, a: float = -0.75) -> float:
    """The bicubic convolution kernel PyTorch uses (Keys, a = -0.75)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def bicubic_by_hand(grid: np.ndarray, out_size: tuple[int, int], scales: tuple[float, float]) -> np.ndarray:
    """(M, M, C) -> (h, w, C): x_in = (x_out + 0.5) / scale - 0.5, 4 taps, borders clamped."""
    M = grid.shape[0]
    out = np.zeros((*out_size, grid.shape[2]))
    for i in range(out_size[0]):
        y = (i + 0.5) / scales[0] - 0.5
        for j in range(out_size[1]):
            x = (j + 0.5) / scales[1] - 0.5
            y0, x0 = math.floor(y), math.floor(x)
            for dy in range(-1, 3):
                for dx in range(-1, 3):
                    wgt = cubic(y - (y0 + dy)) * cubic(x - (x0 + dx))
                    out[i, j] += wgt * grid[min(max(y0 + dy, 0), M - 1), min(max(x0 + dx, 0), M - 1)]
    return out


def test_position_embedding_resampling_is_the_authors_formula():
    M, C, (h, w) = 4, 3, (5, 7)
    pos = torch.randn(1, 1 + M * M, C, dtype=torch.float64)
    patches = pos[0, 1:].reshape(M, M, C).numpy()
    # DINO / DINOv2: scale factors (h + 0.1) / M, (w + 0.1) / M drive the coordinates.
    got = interpolate_pos_embed(pos, (h, w), (h * 16, w * 16), offset=0.1)
    want = bicubic_by_hand(patches, (h, w), ((h + 0.1) / M, (w + 0.1) / M))
    torch.testing.assert_close(got[0, 0], pos[0, 0], atol=1e-6, rtol=0)  # computed in float32, as theirs
    np.testing.assert_allclose(got[0, 1:].reshape(h, w, C).numpy(), want, atol=1e-5)
    # DINOv2 with registers: resampled to the size (scale = out / in); differs from the offset version.
    sized = interpolate_pos_embed(pos, (h, w), (h * 14, w * 14), offset=0.0)
    np.testing.assert_allclose(sized[0, 1:].reshape(h, w, C).numpy(),
                               bicubic_by_hand(patches, (h, w), (h / M, w / M)), atol=1e-5)
    assert (sized - got).abs().max() > 1e-3
    # their shortcut: a square image on the training grid keeps the table as it is
    assert interpolate_pos_embed(pos, (M, M), (64, 64)) is pos


def by_hand_forward(state: dict, images: torch.Tensor, patch: int, heads: int, blocks: int, registers: int,
                    offset: float, keys: bool = False) -> torch.Tensor:
    """DINO's / DINOv2's forward written out (prepare tokens, pre-norm blocks with optional
    LayerScale, final norm, drop class and register tokens), for inputs that are multiples of p."""
    B, _, H, W = images.shape
    h, w = H // patch, W // patch
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(B, -1, -1), x], 1)
    M = int(math.sqrt(state["pos_embed"].shape[1] - 1))
    grid = state["pos_embed"][:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + offset) / M, (w + offset) / M), mode="bicubic")
    x = x + torch.cat([state["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], 1)
    if registers:
        x = torch.cat([x[:, :1], state["register_tokens"].expand(B, -1, -1), x[:, 1:]], 1)
    C = x.shape[-1]

    def ln(t, name):
        return F.layer_norm(t, (C,), state[name + ".weight"], state[name + ".bias"], eps=1e-6)

    for i in range(blocks):
        b = f"blocks.{i}."
        y = ln(x, b + "norm1")
        qkv = (y @ state[b + "attn.qkv.weight"].T + state[b + "attn.qkv.bias"]).reshape(B, -1, 3, heads, C // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if keys and i == blocks - 1:
            return k.transpose(1, 2).reshape(B, -1, C)[:, 1 + registers:].transpose(1, 2).reshape(B, C, h, w)
        attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(B, -1, C) @ state[b + "attn.proj.weight"].T + state[b + "attn.proj.bias"]
        x = x + y * state.get(b + "ls1.gamma", 1.0)
        y = F.gelu(ln(x, b + "norm2") @ state[b + "mlp.fc1.weight"].T + state[b + "mlp.fc1.bias"])
        x = x + (y @ state[b + "mlp.fc2.weight"].T + state[b + "mlp.fc2.bias"]) * state.get(b + "ls2.gamma", 1.0)
    x = ln(x, "norm")[:, 1 + registers:]
    return x.transpose(1, 2).reshape(B, C, h, w)


@pytest.mark.parametrize("name,registers", [("dino-vits16", 0), ("dinov2-vits14", 0)])
def test_forward_equals_the_authors_computation(name, registers, tmp_path):
    width, patch, family = MODELS[name]
    state = authors_state_dict(width, patch, family, seed=1)
    torch.save(state, tmp_path / "w.pth")
    images = torch.randn(2, 3, 3 * patch, 5 * patch)
    encoder = build_encoder(name, weights=tmp_path / "w.pth").eval()
    encoder.blocks = encoder.blocks[:2]
    keys_encoder = build_encoder(name, weights=tmp_path / "w.pth", features="keys").eval()
    keys_encoder.blocks = keys_encoder.blocks[:2]
    with torch.no_grad():
        got, got_keys = encoder(images), keys_encoder(images)
        want = by_hand_forward(state, images, patch, 6, 2, registers, 0.1)
        want_keys = by_hand_forward(state, images, patch, 6, 2, registers, 0.1, keys=True)
    assert got.shape == (2, width, 3, 5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_keys, want_keys, atol=1e-5, rtol=1e-5)


def test_registers_are_inserted_after_the_class_token(tmp_path):
    state = authors_state_dict(384, 14, "dinov2-reg", seed=2)
    torch.save(state, tmp_path / "w.pth")
    encoder = build_encoder("dinov2-vits14-reg", weights=tmp_path / "w.pth").eval()
    encoder.blocks = encoder.blocks[:1]
    encoder.offset, encoder.antialias = 0.1, False  # the by-hand forward resamples with the offset
    images = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), by_hand_forward(state, images, 14, 6, 1, 4, 0.1),
                                   atol=1e-5, rtol=1e-5)
