"""Global-matching network whose features define the walk's transition matrices
(docs/objectives.md, GMRW; Shrivastava and Owens, ECCV 2024; the GMFlow architecture of Xu et al.).

Frames ``(B, 3, H, W)`` normalised with ``datasets.transforms.normalize_frames``:

1. :class:`ConvFeatures`: a 7x7 stride-2 convolution, three stages of two residual blocks
   (widths ``cnn_widths``, strides 1, 2, 1), a 1x1 projection to ``feature_dim`` and a 3x3
   convolution (the stride-1 branch of GMFlow's two-scale head): ``(B, C, H/4, W/4)``, stride 4,
   instance normalisation without affine parameters; cells as in :mod:`corr.geometry`.
2. :func:`window_position_encoding`: DETR's normalised 2-D sine encoding computed inside each of
   the ``splits x splits`` windows and added to both frames.
3. :class:`MatchTransformer`: ``num_layers`` blocks of single-head self-attention then
   cross-attention to the other frame with an MLP, inside ``splits x splits`` windows (odd
   blocks shift the windows by half a window, Swin's cyclic shift with a -100 mask); each
   attention is ``x + LN(merge(softmax(q k^T / sqrt(C)) v))``, the cross layer's MLP reads
   ``[x, message]``: ``x + LN(MLP([x, LN(merge(attn))]))``.

Transition matrix of a pair (:func:`pair_transition_logits`):

    A_{1->2} = softmax_rows(<f1_n, f2_m> / sqrt(C)),   f the transformer's (unnormalised) features,

``(B, h1 w1, h2 w2)``, rows cells of frame 1 in row-major ``(y, x)`` order, columns cells of
frame 2. ``GlobalMatchConfig()`` is the authors' network (128-d, 6 blocks, 2 splits, MLP x4,
backbone widths 64, 96, 128; :data:`MATCH_NETS` ``"gmflow"``); ``"small"`` is a CPU-sized one.
Training: ``corr.losses.global_walk`` (``train.py --loss global_walk``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from corr.encoders import read_torch_file
from corr.encoders.formats import gmrw_state, is_gmrw
from corr.errors import CheckpointError

__all__ = ["GlobalMatchConfig", "MATCH_NETS", "ConvFeatures", "MatchTransformer", "GlobalMatchNet",
           "pair_transition_logits", "window_position_encoding", "seeded_global_match", "load_global_match",
           "SHIFT_MASK_VALUE"]

#: Additive attention mask between cells of different regions of a shifted window (Swin's value).
SHIFT_MASK_VALUE = -100.0


@dataclass(frozen=True)
class GlobalMatchConfig:
    """Size of :class:`GlobalMatchNet`.

    feature_dim:   C, channels of the features and of the transformer.
    num_layers:    transformer blocks (each: self-attention, cross-attention with MLP).
    splits:        windows per side of the attention (the grid must divide by it).
    mlp_expansion: hidden width of the MLP over its input ``2 C``.
    cnn_widths:    channels of the backbone's three stages.
    """

    feature_dim: int = 128
    num_layers: int = 6
    splits: int = 2
    mlp_expansion: int = 4
    cnn_widths: tuple[int, int, int] = (64, 96, 128)

    def __post_init__(self):
        object.__setattr__(self, "cnn_widths", tuple(int(w) for w in self.cnn_widths))
        if self.feature_dim < 2 or self.feature_dim % 4:
            raise ValueError(f"feature_dim must be a positive multiple of 4, got {self.feature_dim}")
        if self.splits < 1 or self.num_layers < 0 or self.mlp_expansion < 1 or len(self.cnn_widths) != 3:
            raise ValueError(f"need splits >= 1, num_layers >= 0, mlp_expansion >= 1 and three cnn_widths; got {self}")


#: Named network sizes (``train.py --match-net``): the authors' GMFlow configuration and a CPU one.
MATCH_NETS = {"gmflow": GlobalMatchConfig(),
              "small": GlobalMatchConfig(feature_dim=64, num_layers=2, cnn_widths=(32, 48, 64))}


# ------------------------------------------------------------------------------ features


class _ResidualBlock(nn.Module):
    """``relu(shortcut(x) + relu(IN(conv2(relu(IN(conv1(x)))))))``; the shortcut is a strided 1x1
    convolution + IN when the width or resolution changes."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.InstanceNorm2d(channels)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride),
                                          nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.conv1(x)))
        y = F.relu(self.norm(self.conv2(y)))
        return F.relu((x if self.shortcut is None else self.shortcut(x)) + y)


class ConvFeatures(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, out_channels, ceil(H/4), ceil(W/4))``; ``stride = 4``.

    Also usable on its own as an encoder (the contract of ``corr.encoders``), e.g. for label
    propagation with the same backbone. Convolutions start from Kaiming-normal (fan out)
    weights, the last from Kaiming-uniform, as in GMFlow.
    """

    stride = 4

    def __init__(self, out_channels: int = 128, widths: tuple[int, int, int] = (64, 96, 128)):
        super().__init__()
        self.out_channels = out_channels
        self.stem = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.stem_norm = nn.InstanceNorm2d(widths[0])
        stages, previous = [], widths[0]
        for width, stride in zip(widths, (1, 2, 1)):
            stages.append(nn.Sequential(_ResidualBlock(previous, width, stride), _ResidualBlock(width, width, 1)))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.project = nn.Conv2d(previous, out_channels, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self.refine = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        nn.init.kaiming_uniform_(self.refine.weight, nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected normalised images (B, 3, H, W), got {tuple(images.shape)}")
        x = F.relu(self.stem_norm(self.stem(images)))
        return self.refine(self.project(self.stages(x)))


def window_position_encoding(height: int, width: int, channels: int, splits: int, device=None) -> torch.Tensor:
    """``(channels, height, width)`` sine encoding, the same in each of the ``splits x splits`` windows.

    In a window of ``h x w`` cells, row ``i`` (0-based) has ``y = 2 pi (i + 1) / (h + 1e-6)``
    (``x`` likewise); with ``F = channels / 2`` and ``d_k = 10000^(2 floor(k / 2) / F)`` the first
    ``F`` channels are ``sin(y / d_k)`` for even ``k``, ``cos(y / d_k)`` for odd ``k``, the last
    ``F`` the same of ``x`` (DETR's ``PositionEmbeddingSine(F, normalize=True)``).
    """
    if height % splits or width % splits:
        raise ValueError(f"a {height}x{width} cell grid does not split into {splits}x{splits} windows")
    h, w, feats = height // splits, width // splits, channels // 2
    dim_t = 10000.0 ** (2 * (torch.arange(feats, device=device, dtype=torch.float32) // 2) / feats)
    ys = torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + 1e-6) * 2 * math.pi
    xs = torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + 1e-6) * 2 * math.pi
    odd = torch.arange(feats, device=device) % 2 == 1

    def code(values: torch.Tensor) -> torch.Tensor:
        angles = values[:, None] / dim_t                                            # n, F
        return torch.where(odd, angles.cos(), angles.sin())

    window = torch.cat([repeat(code(ys), "h f -> f h w", w=w), repeat(code(xs), "w f -> f h w", h=h)])
    return repeat(window, "c h w -> c (sh h) (sw w)", sh=splits, sw=splits)


# --------------------------------------------------------------------------- attention


def _region_labels(height: int, width: int, shift_h: int, shift_w: int, window_h: int, window_w: int,
                   device=None) -> torch.Tensor:
    """``(height, width)`` Swin region of each cell of the cyclically shifted grid: cells of one
    window attend to each other only within one region."""
    def axis(n: int, window: int, shift: int) -> torch.Tensor:
        index = torch.arange(n, device=device)
        return (index >= n - window).long() + (index >= n - shift).long()

    return axis(height, window_h, shift_h)[:, None] * 3 + axis(width, window_w, shift_w)[None, :]


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, splits: int, shift: bool,
                     max_scores: int = 2 ** 26) -> torch.Tensor:
    """Single-head attention inside ``splits x splits`` windows: ``q, k, v (B, h, w, C)`` -> ``(B, h, w, C)``.

    ``softmax(q k^T / sqrt(C) + mask) v`` per window; with ``shift`` the grid is first rolled by
    ``(-h/(2 splits), -w/(2 splits))`` (rolled back after), and ``mask = -100`` between cells of
    different Swin regions (:func:`_region_labels`). Queries run in chunks so that at most
    ``max_scores`` scores are held at once.
    """
    b, h, w, c = q.shape
    wh, ww = h // splits, w // splits
    sh, sw = (wh // 2, ww // 2) if shift else (0, 0)
    if shift:
        q, k, v = (torch.roll(t, shifts=(-sh, -sw), dims=(1, 2)) for t in (q, k, v))
    to_windows = "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c"
    q, k, v = (rearrange(t, to_windows, nh=splits, nw=splits) for t in (q, k, v))
    labels = None
    if shift:
        labels = rearrange(_region_labels(h, w, sh, sw, wh, ww, device=q.device), "(nh wh) (nw ww) -> (nh nw) (wh ww)",
                           nh=splits, nw=splits)                                      # K*K, L
    n, length = q.shape[:2]
    rows = max(1, max_scores // max(n * length, 1))
    out = []
    for start in range(0, length, rows):
        scores = q[:, start:start + rows] @ k.transpose(1, 2) / math.sqrt(c)         # n, r, L
        if labels is not None:
            different = labels[:, start:start + rows, None] != labels[:, None, :]     # K*K, r, L
            scores = scores + repeat(different, "k r l -> (b k) r l", b=b).to(scores.dtype) * SHIFT_MASK_VALUE
        out.append(scores.softmax(dim=-1) @ v)
    out = rearrange(torch.cat(out, dim=1), "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c", b=b, nh=splits, nw=splits,
                    wh=wh, ww=ww)
    return torch.roll(out, shifts=(sh, sw), dims=(1, 2)) if shift else out


class AttentionLayer(nn.Module):
    """``x + LN(merge(attn(x -> source)))``, or with ``mlp``: ``x + LN2(MLP([x, LN(merge(attn))]))``.

    Projections without bias; weights start Xavier-uniform (set by :class:`MatchTransformer`).
    """

    def __init__(self, dim: int, mlp_expansion: int = 0):
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.mlp = self.mlp_norm = None
        if mlp_expansion:
            hidden = 2 * dim * mlp_expansion
            self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden, bias=False), nn.GELU(),
                                     nn.Linear(hidden, dim, bias=False))
            self.mlp_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor, splits: int, shift: bool) -> torch.Tensor:
        message = window_attention(self.query(x), self.key(source), self.value(source), splits, shift)
        message = self.norm(self.merge(message))
        if self.mlp is not None:
            message = self.mlp_norm(self.mlp(torch.cat([x, message], dim=-1)))
        return x + message


class MatchBlock(nn.Module):
    """Self-attention, then cross-attention to the other frame with the MLP."""

    def __init__(self, dim: int, mlp_expansion: int):
        super().__init__()
        self.self_attention = AttentionLayer(dim)
        self.cross_attention = AttentionLayer(dim, mlp_expansion)

    def forward(self, x: torch.Tensor, other: torch.Tensor, splits: int, shift: bool) -> torch.Tensor:
        x = self.self_attention(x, x, splits, shift)
        return self.cross_attention(x, other, splits, shift)


class MatchTransformer(nn.Module):
    """Updates two frames' features jointly: ``(B, C, h, w)`` x 2 -> ``(B, C, h, w)`` x 2.

    Both frames go through every block together (batched as ``[f1; f2]`` attending to
    ``[f2; f1]`` of the previous block), so the two outputs are symmetric functions of the pair.
    Block ``l`` shifts its windows when ``l`` is odd.
    """

    def __init__(self, dim: int, num_layers: int, splits: int, mlp_expansion: int):
        super().__init__()
        self.splits = splits
        self.layers = nn.ModuleList(MatchBlock(dim, mlp_expansion) for _ in range(num_layers))
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if f1.shape != f2.shape:
            raise ValueError(f"both frames must have the same feature shape, got {tuple(f1.shape)}, {tuple(f2.shape)}")
        b, _, h, w = f1.shape
        if h % self.splits or w % self.splits:
            raise ValueError(f"a {h}x{w} cell grid does not split into {self.splits}x{self.splits} windows "
                             f"(frame sides must be multiples of {4 * self.splits} pixels)")
        x = rearrange(torch.cat([f1, f2]), "b c h w -> b h w c")                 # 2B, h, w, C
        for index, layer in enumerate(self.layers):
            other = torch.cat([x[b:], x[:b]])                                       # each frame sees the other
            x = layer(x, other, self.splits, index % 2 == 1)
        x = rearrange(x, "b h w c -> b c h w")
        return x[:b], x[b:]


# ------------------------------------------------------------------------------- model


class GlobalMatchNet(nn.Module):
    """Frames ``(B, 3, H, W)`` x 2 -> matched features ``(B, C, H/4, W/4)`` x 2 (sides multiples of
    ``4 * splits``).

    ``forward`` returns features (no softmax); the transition matrix is
    :func:`pair_transition_logits` ``(f1, f2, model.temperature).softmax(-1)`` with
    ``temperature = sqrt(C)``. ``features`` is the per-frame convolutional backbone (before the
    position encoding and attention).
    """

    stride = 4

    def __init__(self, cfg: GlobalMatchConfig = GlobalMatchConfig()):
        super().__init__()
        self.cfg = cfg
        self.features = ConvFeatures(cfg.feature_dim, cfg.cnn_widths)
        self.transformer = MatchTransformer(cfg.feature_dim, cfg.num_layers, cfg.splits, cfg.mlp_expansion)

    @property
    def temperature(self) -> float:
        """``sqrt(C)``: the transition's softmax temperature."""
        return math.sqrt(self.cfg.feature_dim)

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if frame1.shape != frame2.shape:
            raise ValueError(f"frames must have the same shape, got {tuple(frame1.shape)} and {tuple(frame2.shape)}")
        b = frame1.shape[0]
        feats = self.features(torch.cat([frame1, frame2]))                          # 2B, C, h, w
        h, w = feats.shape[-2:]
        position = window_position_encoding(h, w, feats.shape[1], self.cfg.splits, device=feats.device)
        feats = feats + position.to(feats.dtype)
        return self.transformer(feats[:b], feats[b:])


def seeded_global_match(seed: int, cfg: GlobalMatchConfig = GlobalMatchConfig()) -> GlobalMatchNet:
    """A randomly initialised network drawn from its own random stream seeded with ``seed``
    (the caller's CPU random state is left as it was), so one seed gives one network wherever
    it is built: a ``train.py --loss global_walk --seed S`` run starts from the network that
    ``evaluate.py --encoder global-match --seed S`` scores (with the same ``--match-net``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GlobalMatchNet(cfg)


def pair_transition_logits(f1: torch.Tensor, f2: torch.Tensor, temperature: float) -> torch.Tensor:
    """``<f1_n, f2_m> / temperature`` of unnormalised features: ``(B, C, h1, w1), (B, C, h2, w2) -> (B, h1 w1, h2 w2)``.

    Computed in float32 (or float64 if given) also under autocast.
    """
    dtype = torch.promote_types(f1.dtype, torch.float32)
    with torch.autocast(device_type=f1.device.type, enabled=False):
        q1 = rearrange(f1.to(dtype), "b c h w -> b (h w) c")
        q2 = rearrange(f2.to(dtype), "b c h w -> b (h w) c")
        return q1 @ q2.transpose(1, 2) / temperature


#: Key prefix of the network inside a ``corr.train`` checkpoint trained with ``--loss global_walk``
#: (``checkpoint["heads"]["losses"]``, the state of the loss modules).
TRAIN_LOSS_PREFIX = "losses.global_walk.model."


def match_config(name: str) -> GlobalMatchConfig:
    """The :data:`MATCH_NETS` entry ``name``."""
    if name not in MATCH_NETS:
        raise ValueError(f"unknown global-match network {name!r}; known: {', '.join(MATCH_NETS)}")
    return MATCH_NETS[name]


def load_global_match(path: str | Path) -> GlobalMatchNet:
    """The :class:`GlobalMatchNet` of a ``train.py --loss global_walk`` checkpoint (``corr-checkpoint-v1``,
    the size its ``global_match`` entry gives, else the one its config's ``match_net`` names) or of
    the authors' released layout (:func:`corr.encoders.formats.gmrw_state`, ``{"model": their
    state dict}``)."""
    state = read_torch_file(path)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != "corr-checkpoint-v1":
        if is_gmrw(state):
            weights, sizes = gmrw_state(state, path)
            model = GlobalMatchNet(GlobalMatchConfig(**sizes))
            model.load_state_dict(weights)
            return model.eval()
        raise CheckpointError(f"{path}: not a global-match checkpoint (format {fmt!r}; expected a "
                              "'corr-checkpoint-v1' trained with --loss global_walk, or GMRW's released layout)")
    losses = state.get("heads", {}).get("losses", {})
    weights = {k[len(TRAIN_LOSS_PREFIX):]: v for k, v in losses.items() if k.startswith(TRAIN_LOSS_PREFIX)}
    if not weights:
        raise CheckpointError(f"{path}: a training checkpoint without a global_walk network "
                              f"(no '{TRAIN_LOSS_PREFIX}*' in heads/losses; was it trained with --loss global_walk?)")
    name = state.get("config", {}).get("match_net") or "gmflow"
    cfg = GlobalMatchConfig(**state["global_match"]) if "global_match" in state else match_config(name)
    model = GlobalMatchNet(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its global_walk network does not match --match-net {name} "
                              f"({asdict(model.cfg)}): {error}") from None
    return model.eval()

