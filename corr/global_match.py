"""Global-matching network whose attention defines the walk's transition matrices
(docs/objectives.md, GMRW; Shrivastava and Owens, ECCV 2024; GMFlow-style architecture).

Frames ``(B, 3, H, W)`` normalised with ``datasets.transforms.normalize_frames``:

1. :class:`ConvFeatures`: a small convolutional extractor at stride 4 (instance norm),
   ``(B, C, h, w)``, ``h = ceil(H/4)``, ``w = ceil(W/4)``; cells as in :mod:`corr.geometry`.
2. A 2-D sine encoding of the cell indices is added (:func:`sine_position_encoding`).
3. :class:`MatchTransformer`: ``num_layers`` pre-norm layers of windowed self-attention,
   windowed cross-attention to the other frame and an MLP, in ``window x window`` windows of
   cells (odd layers shifted by ``window // 2``; padding cells masked, nothing wraps around).

Transition matrix of a pair (:func:`pair_transition_logits`):

    A_{1->2} = softmax_rows(<f1_n, f2_m> / tau),   f L2-normalised,   (B, h1 w1, h2 w2)

rows are cells of frame 1 in row-major ``(y, x)`` order, columns cells of frame 2. Training:
``corr.losses.global_walk`` (``train.py --loss global_walk``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from corr.encoders import read_torch_file
from corr.errors import CheckpointError

__all__ = ["GlobalMatchConfig", "ConvFeatures", "MatchTransformer", "GlobalMatchNet", "pair_transition_logits",
           "sine_position_encoding", "seeded_global_match", "load_global_match"]


@dataclass(frozen=True)
class GlobalMatchConfig:
    """Size of :class:`GlobalMatchNet`.

    feature_dim: C, channels of the features and of the transformer.
    num_layers:  transformer layers (each: self-attention, cross-attention, MLP).
    num_heads:   attention heads (``feature_dim`` must be divisible by it).
    window:      attention window side in feature cells (4 pixels each).
    mlp_ratio:   hidden width of the MLP over ``feature_dim``.
    temperature: tau of the transition softmax over cosine similarities.
    """

    feature_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    window: int = 8
    mlp_ratio: int = 2
    temperature: float = 0.05

    def __post_init__(self):
        if self.feature_dim < 1 or self.feature_dim % self.num_heads:
            raise ValueError(f"feature_dim {self.feature_dim} must be a positive multiple of num_heads "
                             f"{self.num_heads}")
        if self.window < 1 or self.num_layers < 0 or self.mlp_ratio < 1:
            raise ValueError(f"need window >= 1, num_layers >= 0, mlp_ratio >= 1; got {self}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


# ------------------------------------------------------------------------------ features


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class ConvFeatures(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, out_channels, ceil(H/4), ceil(W/4))``; ``stride = 4``.

    Also usable on its own as an encoder (the contract of ``corr.encoders``), e.g. for label
    propagation with the same backbone.
    """

    stride = 4

    def __init__(self, out_channels: int = 64, width: int = 48):
        super().__init__()
        half = max(8, width // 2)
        self.out_channels = out_channels
        self.layers = nn.Sequential(
            nn.Conv2d(3, half, 7, stride=2, padding=3, bias=False), nn.InstanceNorm2d(half, affine=True),
            nn.ReLU(inplace=True), _ResidualBlock(half),
            nn.Conv2d(half, width, 3, stride=2, padding=1, bias=False), nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(inplace=True), _ResidualBlock(width),
            nn.Conv2d(width, out_channels, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected normalised images (B, 3, H, W), got {tuple(images.shape)}")
        return self.layers(images)


def sine_position_encoding(height: int, width: int, channels: int, device=None) -> torch.Tensor:
    """``(channels, height, width)`` sine/cosine encoding of cell indices (y in the first half).

    For ``k = 0 .. channels/4 - 1`` and ``omega_k = 10000^(-k / (channels/4))``:
    ``[sin(omega_k y), cos(omega_k y)]`` then the same for ``x``. Coordinates are cell indices,
    so the encoding of a cell does not depend on the frame size.
    """
    if channels % 4:
        raise ValueError(f"position encoding needs channels divisible by 4, got {channels}")
    quarter = channels // 4
    omega = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * omega  # h, quarter
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * omega   # w, quarter
    y_code = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    x_code = torch.cat([xs.sin(), xs.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return rearrange(torch.cat([y_code, x_code], dim=-1), "h w c -> c h w")


# --------------------------------------------------------------------------- attention


def _partition(x: torch.Tensor, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """``(B, h, w, C)`` -> windows ``(B * nW, window^2, C)`` and their validity ``(B * nW, window^2)``.

    The grid is padded by ``shift`` cells at the top/left and up to a multiple of ``window``
    at the bottom/right; padded cells are invalid.
    """
    b, h, w, c = x.shape
    hp = math.ceil((h + shift) / window) * window
    wp = math.ceil((w + shift) / window) * window
    x = F.pad(x, (0, 0, shift, wp - w - shift, shift, hp - h - shift))
    valid = torch.zeros(b, hp, wp, dtype=torch.bool, device=x.device)
    valid[:, shift:shift + h, shift:shift + w] = True
    tokens = rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=window, ww=window)
    valid = rearrange(valid, "b (nh wh) (nw ww) -> (b nh nw) (wh ww)", wh=window, ww=window)
    return tokens, valid, (b, h, w, hp, wp)


def _unpartition(tokens: torch.Tensor, window: int, shift: int, meta: tuple) -> torch.Tensor:
    """Inverse of :func:`_partition`: ``(B * nW, window^2, C)`` -> ``(B, h, w, C)``."""
    b, h, w, hp, wp = meta
    x = rearrange(tokens, "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c", b=b, nh=hp // window, nw=wp // window,
                  wh=window, ww=window)
    return x[:, shift:shift + h, shift:shift + w]


class WindowAttention(nn.Module):
    """Multi-head attention of ``x`` to ``source`` inside matching windows, both ``(B, h, w, C)``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor, window: int, shift: int) -> torch.Tensor:
        if x.shape != source.shape:
            raise ValueError(f"windowed attention needs equal grids, got {tuple(x.shape)} and {tuple(source.shape)}")
        q_tokens, valid, meta = _partition(x, window, shift)                     # BnW, L, C
        kv_tokens, _, _ = _partition(source, window, shift)
        q = rearrange(self.query(q_tokens), "n l (k d) -> n k l d", k=self.num_heads)
        k, v = rearrange(self.key_value(kv_tokens), "n l (two k d) -> two n k l d", two=2, k=self.num_heads)
        # a window without any valid key (cannot happen for shift < window) attends to all
        mask = valid | ~valid.any(dim=-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # BnW, heads, L, d
        out = self.proj(rearrange(out, "n k l d -> n l (k d)"))
        return _unpartition(out, window, shift, meta)


class MatchLayer(nn.Module):
    """x <- x + SelfAttn(LN x); x <- x + CrossAttn(LN x, LN y); x <- x + MLP(LN x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = WindowAttention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attention = WindowAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, other: torch.Tensor, window: int, shift: int) -> torch.Tensor:
        h = self.norm_self(x)
        x = x + self.self_attention(h, h, window, shift)
        x = x + self.cross_attention(self.norm_cross(x), self.norm_cross(other), window, shift)
        return x + self.mlp(self.norm_mlp(x))


class MatchTransformer(nn.Module):
    """Updates two frames' features jointly: ``(B, C, h, w)`` x 2 -> ``(B, C, h, w)`` x 2.

    Both frames go through every layer together (batched as ``[f1; f2]`` attending to
    ``[f2; f1]``), so the two outputs are symmetric functions of the pair. Layer ``l`` uses
    window shift ``(l % 2) * window // 2``.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, window: int, mlp_ratio: int):
        super().__init__()
        self.window = window
        self.layers = nn.ModuleList(MatchLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers))

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if f1.shape != f2.shape:
            raise ValueError(f"both frames must have the same feature shape, got {tuple(f1.shape)}, {tuple(f2.shape)}")
        b = f1.shape[0]
        x = rearrange(torch.cat([f1, f2]), "b c h w -> b h w c")                 # 2B, h, w, C
        for index, layer in enumerate(self.layers):
            other = torch.cat([x[b:], x[:b]])                                       # each frame sees the other
            x = layer(x, other, self.window, (index % 2) * (self.window // 2))
        x = rearrange(x, "b h w c -> b c h w")
        return x[:b], x[b:]


# ------------------------------------------------------------------------------- model


class GlobalMatchNet(nn.Module):
    """Frames ``(B, 3, H, W)`` x 2 -> matched features ``(B, C, ceil(H/4), ceil(W/4))`` x 2.

    ``forward`` returns features (no softmax); the transition matrix is
    :func:`pair_transition_logits` ``(f1, f2, cfg.temperature).softmax(-1)``. ``features`` is the
    per-frame convolutional backbone (before position encoding and attention).
    """

    stride = 4

    def __init__(self, cfg: GlobalMatchConfig = GlobalMatchConfig()):
        super().__init__()
        self.cfg = cfg
        self.features = ConvFeatures(cfg.feature_dim)
        self.transformer = MatchTransformer(cfg.feature_dim, cfg.num_layers, cfg.num_heads, cfg.window,
                                            cfg.mlp_ratio)

    @property
    def temperature(self) -> float:
        return self.cfg.temperature

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if frame1.shape != frame2.shape:
            raise ValueError(f"frames must have the same shape, got {tuple(frame1.shape)} and {tuple(frame2.shape)}")
        b = frame1.shape[0]
        feats = self.features(torch.cat([frame1, frame2]))                          # 2B, C, h, w
        h, w = feats.shape[-2:]
        feats = feats + sine_position_encoding(h, w, feats.shape[1], device=feats.device).to(feats.dtype)
        return self.transformer(feats[:b], feats[b:])

def seeded_global_match(seed: int, cfg: GlobalMatchConfig = GlobalMatchConfig()) -> GlobalMatchNet:
    """A randomly initialised network drawn from its own random stream seeded with ``seed``
    (the caller's CPU random state is left as it was), so one seed gives one network wherever
    it is built: a ``train.py --loss global_walk --seed S`` run starts from the network that
    ``evaluate.py --encoder global-match --seed S`` scores."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GlobalMatchNet(cfg)


def pair_transition_logits(f1: torch.Tensor, f2: torch.Tensor, temperature: float) -> torch.Tensor:
    """``<f1_n, f2_m> / tau`` with unit features: ``(B, C, h1, w1), (B, C, h2, w2) -> (B, h1 w1, h2 w2)``.

    Computed in float32 (or float64 if given) also under autocast.
    """
    dtype = torch.promote_types(f1.dtype, torch.float32)
    with torch.autocast(device_type=f1.device.type, enabled=False):
        q1 = F.normalize(rearrange(f1.to(dtype), "b c h w -> b (h w) c"), dim=-1)
        q2 = F.normalize(rearrange(f2.to(dtype), "b c h w -> b (h w) c"), dim=-1)
        return q1 @ q2.transpose(1, 2) / temperature


#: Key prefix of the network inside a ``corr.train`` checkpoint trained with ``--loss global_walk``
#: (``checkpoint["heads"]["losses"]``, the state of the loss modules).
TRAIN_LOSS_PREFIX = "losses.global_walk.model."


def load_global_match(path: str | Path) -> GlobalMatchNet:
    """The :class:`GlobalMatchNet` of a ``train.py --loss global_walk`` checkpoint (``corr-checkpoint-v1``;
    default :class:`GlobalMatchConfig` unless the checkpoint records ``global_match``)."""
    state = read_torch_file(path)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != "corr-checkpoint-v1":
        raise CheckpointError(f"{path}: not a global-match checkpoint (format {fmt!r}; expected a "
                              "'corr-checkpoint-v1' trained with --loss global_walk)")
    losses = state.get("heads", {}).get("losses", {})
    weights = {k[len(TRAIN_LOSS_PREFIX):]: v for k, v in losses.items() if k.startswith(TRAIN_LOSS_PREFIX)}
    if not weights:
        raise CheckpointError(f"{path}: a training checkpoint without a global_walk network "
                              f"(no '{TRAIN_LOSS_PREFIX}*' in heads/losses; was it trained with --loss global_walk?)")
    model = GlobalMatchNet(GlobalMatchConfig(**state.get("global_match", {})))
    model.load_state_dict(weights)
    return model.eval()
