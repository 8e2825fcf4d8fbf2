"""Self-supervised Vision Transformers as dense encoders: DINO (Caron et al. 2021) and DINOv2
(Oquab et al. 2023, with or without the 4 register tokens of Darcet et al. 2024).

The blocks are timm's (``timm.models.vision_transformer.Block``); parameters carry the
authors' key names, so their released state dicts load as they are::

    cls_token (1, 1, C), pos_embed (1, 1 + M*M, C), [register_tokens (1, R, C)], [mask_token (1, C)],
    patch_embed.proj.{weight (C, 3, p, p), bias}, blocks.{i}.{norm1, attn.qkv, attn.proj, [ls1.gamma],
    norm2, mlp.fc1, mlp.fc2, [ls2.gamma]}.{weight, bias}, norm.{weight, bias}

``forward((B, 3, H, W)) -> (B, C, ceil(H/p), ceil(W/p))``: the patch tokens of the last block
after the final norm (DINO's ``get_intermediate_layers(n=1)``, DINOv2's
``x_norm_patchtokens``), class and register tokens dropped, ``stride = p``. A frame whose
sides are not multiples of p is first padded at the bottom and right by repeating its last
row and column (replicate), so that cell (i, j) covers pixels [i p, (i+1) p) x [j p, (j+1) p)
as for every encoder (:mod:`corr.geometry`); the authors' scripts instead resize or crop
frames to multiples of p, which needs no padding. ``features="keys"`` gives the keys of the
last block's attention instead (``k`` of its ``qkv`` projection of ``norm1(x)``, heads
concatenated, no final norm).

Position embeddings are resampled to the grid (h, w) as the authors' code does
(:func:`interpolate_pos_embed`).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .contract import check_images

__all__ = ["ViTEncoder", "VIT_ARCHS", "VIT_FAMILIES", "interpolate_pos_embed"]

#: width, heads of the two sizes (12 blocks each, MLP ratio 4).
VIT_ARCHS = {"vits": (384, 6), "vitb": (768, 12)}

#: Per family: the training image size (pos_embed covers (img_size / p)^2 cells), LayerScale
#: init (None: no LayerScale), and the position-embedding resampling (offset, antialias) of
#: the released models (DINOv2's hub: offset 0.1 without registers; 0.0 and antialias with).
VIT_FAMILIES = {
    "dino": {"img_size": 224, "init_values": None, "offset": 0.1, "antialias": False},
    "dinov2": {"img_size": 518, "init_values": 1.0, "offset": 0.1, "antialias": False},
    "dinov2-reg": {"img_size": 518, "init_values": 1.0, "offset": 0.0, "antialias": True},
}


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int],
                          offset: float = 0.1, antialias: bool = False) -> torch.Tensor:
    """The authors' resampling of ``pos_embed (1, 1 + N, C)`` (class token first, N = M*M
    cells of the training grid) to the grid ``(h, w)`` of an image of ``image_size (H, W)``.

    Unchanged when ``h*w == N`` and ``H == W`` (their shortcut). Otherwise the M x M patch
    embeddings are resampled bicubically (``align_corners=False``) in float32:

    - ``offset > 0`` (DINO; DINOv2 without registers): with the scale factors
      ``((h + offset) / M, (w + offset) / M)``, which PyTorch also uses to map output to input
      coordinates (``x_in = (x_out + 0.5) * M / (h + offset) - 0.5``), so the result differs
      from resampling to the size (h, w);
    - ``offset == 0`` (DINOv2 with registers): to the size ``(h, w)``, with ``antialias``.

    Returns ``(1, 1 + h*w, C)`` in the dtype of ``pos_embed``, patches row-major.
    """
    h, w = grid
    N = pos_embed.shape[1] - 1
    if h * w == N and image_size[0] == image_size[1]:
        return pos_embed
    M = int(math.sqrt(N))
    if M * M != N:
        raise ValueError(f"pos_embed must hold a square grid of patches, got {N}")
    patches = rearrange(pos_embed[:, 1:].float(), "1 (m n) c -> 1 c m n", m=M)
    if offset:
        size = {"scale_factor": (float(h + offset) / M, float(w + offset) / M)}
    else:
        size = {"size": (h, w)}
    patches = F.interpolate(patches, mode="bicubic", antialias=antialias, **size)
    if tuple(patches.shape[-2:]) != (h, w):
        raise AssertionError(f"resampled position embeddings are {tuple(patches.shape[-2:])}, expected {(h, w)}")
    patches = rearrange(patches, "1 c h w -> 1 (h w) c")
    return torch.cat([pos_embed[:, :1].float(), patches], dim=1).to(pos_embed.dtype)


class ViTEncoder(nn.Module):
    """A DINO / DINOv2 ViT with 12 blocks as a dense encoder (module docstring).

    arch:      ``"vits"`` (384-d, 6 heads) or ``"vitb"`` (768-d, 12 heads);
    patch:     p (8, 14 or 16), the stride;
    family:    ``"dino"``, ``"dinov2"`` or ``"dinov2-reg"`` (:data:`VIT_FAMILIES`);
    features:  ``"tokens"`` (last block's normed patch tokens) or ``"keys"`` (last attention's keys).
    """

    def __init__(self, arch: str = "vits", patch: int = 16, family: str = "dino", features: str = "tokens"):
        super().__init__()
        if arch not in VIT_ARCHS:
            raise ValueError(f"arch must be one of {sorted(VIT_ARCHS)}, got {arch!r}")
        if family not in VIT_FAMILIES:
            raise ValueError(f"family must be one of {sorted(VIT_FAMILIES)}, got {family!r}")
        if features not in ("tokens", "keys"):
            raise ValueError(f"features must be 'tokens' or 'keys', got {features!r}")
        dim, heads = VIT_ARCHS[arch]
        spec = VIT_FAMILIES[family]
        self.arch, self.patch, self.family, self.features = arch, int(patch), family, features
        self.offset, self.antialias = spec["offset"], spec["antialias"]
        self.stride = self.patch
        self.out_channels = dim
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size=spec["img_size"], patch_size=self.patch, embed_dim=dim,
                                      strict_img_size=False)
        grid = spec["img_size"] // self.patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.num_registers = 4 if family == "dinov2-reg" else 0
        if self.num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, self.num_registers, dim))
        if family != "dino":
            self.mask_token = nn.Parameter(torch.zeros(1, dim))  # used in training only; kept for the key layout
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, init_values=spec["init_values"],
                                           norm_layer=norm) for _ in range(12)])
        self.norm = norm(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        p = self.patch
        H, W = images.shape[-2:]
        h, w = math.ceil(H / p), math.ceil(W / p)
        if (h * p, w * p) != (H, W):
            images = F.pad(images, (0, w * p - W, 0, h * p - H), mode="replicate")
        x = self.patch_embed(images)  # B, h*w, C
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + interpolate_pos_embed(self.pos_embed, (h, w), (h * p, w * p), self.offset, self.antialias)
        if self.num_registers:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        prefix = 1 + self.num_registers
        if self.features == "keys":
            qkv = last.attn.qkv(last.norm1(x))  # B, 1+R+h*w, 3*C
            keys = rearrange(qkv, "b n (three c) -> three b n c", three=3)[1]
            return rearrange(keys[:, prefix:], "b (h w) c -> b c h w", h=h)
        x = self.norm(last(x))
        return rearrange(x[:, prefix:], "b (h w) c -> b c h w", h=h)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, patch={self.patch}, family={self.family!r}, features={self.features!r}"
