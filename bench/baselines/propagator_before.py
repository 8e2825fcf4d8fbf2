"""The short-memory selection of :class:`propagate.Propagator` as it was before the
group-maximum selection, kept unchanged so that ``bench/propagate.py`` measures both in one
run: per (frame, column strip) a top-k over every window cell, then a top-k over their union.
Frozen: do not edit; it is a measuring stick, not a part of the library.

    prop = Propagator(cfg)
    prop.matcher = MatcherBefore(cfg)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from propagate.config import PropagationConfig
from propagate.propagator import Matches


class MatcherBefore:
    """The feature half of propagation: the top-k context keys of each new frame's queries.

    ``topk`` (default ``cfg.topk``) matches are kept per query, so that one pass serves
    every smaller k. Only ``context``, ``radius``, ``neighbourhood``, ``restrict_first``,
    ``pad_with_first`` and ``normalize_features`` of ``cfg`` matter here.
    """

    def __init__(self, cfg: PropagationConfig, topk: Optional[int] = None, block: int = 8,
                 memory_budget: int = 256 << 20, down_strips: Optional[bool] = None):
        self.cfg = cfg
        self.topk = cfg.topk if topk is None else int(topk)
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        self.block = block
        self.memory_budget = memory_budget
        self.down_strips = down_strips  # None: True on CPU, False elsewhere (see _short_local)
        self.frame = -1  # the last frame seen
        self._state: Optional[_State] = None

    @torch.no_grad()
    def start(self, feat0: torch.Tensor) -> None:
        """Begin a video with frame 0's features (C, h, w)."""
        if feat0.ndim != 3:
            raise ValueError(f"feat0 must be (C, h, w), got {tuple(feat0.shape)}")
        cfg = self.cfg
        C, h, w = feat0.shape
        feat0 = self._normalize(feat0.float())
        self._state = _State(cfg, self.block, C, h, w, feat0.device)
        self._down_strips = self.down_strips if self.down_strips is not None else feat0.device.type == "cpu"
        self._state.set_long_memory(feat0)
        if cfg.pad_with_first:
            for _ in range(cfg.context):
                self._state.push(feat0, frame=0)
        self.frame = 0

    @torch.no_grad()
    def match(self, feat: torch.Tensor) -> Matches:
        """The next frame's features (C, h, w) -> its :class:`Matches`; the frame becomes context."""
        state = self._state
        if state is None:
            raise RuntimeError("call start(feat0) before match()")
        if tuple(feat.shape) != (state.C, state.h, state.w):
            raise ValueError(f"expected features {(state.C, state.h, state.w)}, got {tuple(feat.shape)}")
        query = self._normalize(feat.to(state.device, torch.float32))
        matches = self._match(state, query)
        self.frame += 1
        if self.cfg.context > 0:
            state.push(query, frame=self.frame)
        return matches

    # ------------------------------------------------------------------ internals
    def _normalize(self, feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(feat, dim=0) if self.cfg.normalize_features else feat

    def _match(self, s: "_State", query: torch.Tensor) -> Matches:
        b = s.block
        # Query tiles: (blocks, b*b, C), positions outside the grid are zero and cropped later.
        q = F.pad(query, (0, s.nbx * b - s.w, 0, s.nby * b - s.h))
        q = rearrange(q, "c (by y) (bx x) -> (by bx) (y x) c", y=b, x=b)
        n_short = max(s.filled, 1)
        if s.local:  # per-frame top-k of one tile + affinities with frame 0
            per_tile = 12 * n_short * b * b * self.topk + 4 * b * b * s.h * s.w
        else:
            per_tile = 4 * b * b * (1 + n_short) * s.h * s.w
        if s.restrict_first:  # frame 0's neighbourhood mask: two int32 offsets and a bool per affinity
            per_tile += 9 * b * b * s.h * s.w
        rows = max(1, self.memory_budget // max(per_tile * s.nbx, 1))  # tile rows per chunk
        k = self.topk
        values = torch.empty(s.nby * s.nbx, b * b, k, device=s.device)
        source = torch.empty(s.nby * s.nbx, b * b, k, dtype=torch.long, device=s.device)
        for r0 in range(0, s.nby, rows):
            t0, t1 = r0 * s.nbx, min(r0 + rows, s.nby) * s.nbx
            values[t0:t1], source[t0:t1] = self._match_tiles(s, q[t0:t1], t0, t1, k)

        def grid(x: torch.Tensor) -> torch.Tensor:
            x = rearrange(x, "(by bx) (y x) k -> (by y) (bx x) k", by=s.nby, y=b)
            return x[: s.h, : s.w].reshape(s.h * s.w, k)
        return Matches(grid(values), grid(source))

    def _match_tiles(self, s: "_State", q: torch.Tensor, t0: int, t1: int, k: int):
        """q: (L, b*b, C) query tiles t0..t1-1 (whole tile rows) -> values, sources (L, b*b, k)."""
        L, Q, _ = q.shape
        # Long memory: frame 0, dense; its sources are its positions (frame 0).
        aff = q.reshape(L * Q, -1) @ s.long_keys  # (L*Q, hw)
        if s.restrict_first:
            aff.masked_fill_(~s.first_allowed(t0, t1), float("-inf"))
        values, source = aff.topk(min(k, aff.shape[1]), dim=1)
        if s.filled > 0:
            short_values, short_source = (self._short_local if s.local else self._short_dense)(s, q, t0, t1)
            values = torch.cat([values, short_values], dim=1)
            source = torch.cat([source, short_source], dim=1)
            values, pick = values.topk(min(k, values.shape[1]), dim=1)
            source = source.gather(1, pick)
        if values.shape[1] < k:  # fewer keys than k in the whole context: pad with weight-0 matches
            missing = k - values.shape[1]
            values = F.pad(values, (0, missing), value=float("-inf"))
            source = F.pad(source, (0, missing), value=0)
        return values.view(L, Q, k), source.view(L, Q, k)

    def _short_local(self, s: "_State", q: torch.Tensor, t0: int, t1: int):
        """Top-k over the local windows of the short-memory frames for tiles t0..t1-1.

        A tile's window in one frame is a contiguous block of one of that frame's column
        strips, so batches of windows are views of the memory at a fixed stride, with no
        copy of keys, and each batch is one matmul with the disk and border masks added as
        a bias. Two batch orders give the same numbers:

        * ``down_strips`` (the default on CPU): one call per (frame, strip), batched over
          the tile rows down the strip; consecutive windows share most of their keys, which
          stay in cache (about 2x faster than the other order on a CPU);
        * otherwise (CUDA): one call per tile row, batched over every (frame, strip) pair:
          few, large kernels.

        The top-k of every frame is taken, then the top-k of their union. Returns values
        and sources (L*Q, kk) (:class:`Matches` encoding).
        """
        L, Q, C = q.shape
        b, P, nbx, n = s.block, s.P, s.nbx, s.filled
        r0, rows = t0 // nbx, L // nbx
        kk = min(self.topk, s.window_area)
        queries = rearrange(q, "(r j) q c -> j r q c", j=nbx).contiguous()
        values = torch.empty(n, nbx, rows, Q, kk, device=s.device)
        index = torch.empty(n, nbx, rows, Q, kk, dtype=torch.long, device=s.device)
        strips = s.short_strips  # (slots, nbx, Hp, P, C); slots 0..n-1 in use
        frame_stride, strip_stride, row_stride = strips.stride()[:3]
        base = strips.storage_offset()
        if self._down_strips:
            for f in range(n):
                for j in range(nbx):
                    # windows[r] = strip j of frame f, rows (r0 + r) * b .. + P - 1: (P*P, C)
                    windows = strips.as_strided((rows, P * P, C), (b * row_stride, C, 1),
                                                base + f * frame_stride + j * strip_stride + r0 * b * row_stride)
                    aff = torch.baddbmm(s.window_bias[j, r0:r0 + rows], queries[j], windows.transpose(1, 2))
                    torch.topk(aff, kk, dim=-1, out=(values[f, j], index[f, j]))
        else:
            for r in range(rows):
                # windows[f * nbx + j] = strip j of frame f, rows (r0 + r) * b .. + P - 1
                windows = strips.as_strided((n * nbx, P * P, C), (strip_stride, C, 1),
                                            base + (r0 + r) * b * row_stride)
                batch = queries[:, r].expand(n, nbx, Q, C).reshape(n * nbx, Q, C)
                aff = torch.bmm(batch, windows.transpose(1, 2)).view(n, nbx, Q, P * P)
                aff.add_(s.window_bias[:, r0 + r])
                values[:, :, r], index[:, :, r] = aff.topk(kk, dim=-1)
        values = rearrange(values, "n j r q k -> (r j) q (n k)")
        index = rearrange(index, "n j r q k -> (r j) q (n k)")
        values, pick = values.topk(kk, dim=-1)  # (L, Q, kk) over every frame's top-k
        cell = index.gather(-1, pick)  # position inside the P x P window
        slot = pick // kk
        tile = torch.arange(t0, t1, device=s.device)[:, None, None]
        row = (tile // nbx) * b + cell // P - s.pad  # grid coordinates (outside the grid: -inf values)
        col = (tile % nbx) * b + cell % P - s.pad
        position = row.clamp(0, s.h - 1) * s.w + col.clamp(0, s.w - 1)
        source = s.slot_frame[slot] * (s.h * s.w) + position
        return values.reshape(L * Q, kk), source.reshape(L * Q, kk)

    def _short_dense(self, s: "_State", q: torch.Tensor, t0: int, t1: int):
        """No locality limit: top-k over every position of every short-memory frame."""
        L, Q, C = q.shape
        keys = s.short_feats[: s.filled].reshape(-1, C)  # (n*h*w, C); no padding without a radius
        aff = q.reshape(L * Q, C) @ keys.T  # (L*Q, n*h*w)
        values, index = aff.topk(min(self.topk, aff.shape[1]), dim=1)
        cells = s.h * s.w
        return values, s.slot_frame[index // cells] * cells + index % cells


class _State:
    """A video's feature memory: frame 0 (dense) and a ring buffer of n short-memory frames."""

    def __init__(self, cfg: PropagationConfig, block: int, C: int, h: int, w: int, device):
        self.C, self.h, self.w, self.device = C, h, w, device
        self.block = b = block
        self.local = cfg.radius is not None
        self.radius, self.square = cfg.radius, cfg.neighbourhood == "square"
        self.restrict_first = self.local and cfg.restrict_first
        if not self.local:
            self.pad = p = 0
        elif self.square:
            self.pad = p = math.floor(cfg.radius)  # |dy|, |dx| <= radius
        else:
            self.pad = p = max(0, math.ceil(cfg.radius) - 1)  # largest offset with d < radius
        self.P = b + 2 * p  # window side around a tile
        self.window_area = self.P * self.P
        self.nby, self.nbx = math.ceil(h / b), math.ceil(w / b)
        # Padded grid of the short memory: room for every tile's window.
        self.Hp, self.Wp = self.nby * b + 2 * p, self.nbx * b + 2 * p
        n = cfg.context
        # Short memory; slots 0..filled-1 are in use, in any order; slot_frame holds each
        # slot's frame in the video (0 for padding copies). With a radius, features are
        # kept as overlapping column strips (n, nbx, Hp, P, C): strip j holds padded columns
        # j*b .. j*b+P-1, so every tile window is contiguous. Without one, plainly as (n, h, w, C).
        if self.local:
            self.short_strips = torch.zeros(n, self.nbx, self.Hp, self.P, C, device=device)
        else:
            self.short_feats = torch.zeros(n, h, w, C, device=device)
        self.slot_frame = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = n
        self.filled = 0
        self.next_slot = 0
        if self.local:
            allowed = self._allowed_masks(cfg.radius)  # (tiles, b*b, P*P), tiles in row-major order
            bias = torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, float("-inf"))
            # Ordered by strip, then tile row: (nbx, nby, b*b, P*P), as _short_local reads it.
            self.window_bias = rearrange(bias, "(r j) q k -> j r q k", j=self.nbx).contiguous()

    def _allowed_masks(self, radius: float) -> torch.Tensor:
        """(tiles, b*b, P*P) bool: key cell of the tile's window inside the neighbourhood and on the grid."""
        b, p, P, dev = self.block, self.pad, self.P, self.device
        qy, qx = torch.meshgrid(torch.arange(b, device=dev), torch.arange(b, device=dev), indexing="ij")
        ky, kx = torch.meshgrid(torch.arange(P, device=dev), torch.arange(P, device=dev), indexing="ij")
        dy = ky.flatten()[None] - p - qy.flatten()[:, None]
        dx = kx.flatten()[None] - p - qx.flatten()[:, None]
        disk = self._inside(dy, dx)  # (b*b, P*P)
        on_grid = torch.zeros(self.Hp, self.Wp, dtype=torch.bool, device=dev)
        on_grid[p: p + self.h, p: p + self.w] = True
        on_grid = rearrange(on_grid.unfold(0, P, b).unfold(1, P, b), "by bx py px -> (by bx) (py px)")
        return disk[None] & on_grid[:, None, :]

    def _inside(self, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Whether grid offsets (dy, dx) lie in the neighbourhood (disk ``< radius``, square ``<= radius``)."""
        if self.square:
            return (dy.abs() <= self.radius) & (dx.abs() <= self.radius)
        return (dy * dy + dx * dx).float() < self.radius * self.radius

    def first_allowed(self, t0: int, t1: int) -> torch.Tensor:
        """(L*b*b, h*w) bool: frame 0's keys in the neighbourhood of the queries of tiles t0..t1-1
        (tile-major, row-major inside a tile; queries off the grid are cropped later)."""
        b, dev = self.block, self.device
        tile = torch.arange(t0, t1, device=dev, dtype=torch.int32)[:, None]
        cell = torch.arange(b * b, device=dev, dtype=torch.int32)[None]
        qy = ((tile // self.nbx) * b + cell // b).reshape(-1, 1)
        qx = ((tile % self.nbx) * b + cell % b).reshape(-1, 1)
        ky = torch.arange(self.h, device=dev, dtype=torch.int32).repeat_interleave(self.w)[None]
        kx = torch.arange(self.w, device=dev, dtype=torch.int32).repeat(self.h)[None]
        return self._inside(ky - qy, kx - qx)

    def set_long_memory(self, feat0: torch.Tensor) -> None:
        self.long_keys = feat0.flatten(1)  # (C, hw)

    def push(self, feat: torch.Tensor, frame: int) -> None:
        """Write frame ``frame``'s features (C, h, w) into the oldest slot of the short memory."""
        if self.slots == 0:
            return
        p, i = self.pad, self.next_slot
        if self.local:
            padded = torch.zeros(self.Hp, self.Wp, self.C, device=self.device)
            padded[p: p + self.h, p: p + self.w] = rearrange(feat, "c h w -> h w c")
            strips = padded.unfold(1, self.P, self.block)  # (Hp, nbx, C, P)
            self.short_strips[i] = rearrange(strips, "y j c x -> j y x c")
        else:
            self.short_feats[i] = rearrange(feat, "c h w -> h w c")
        self.slot_frame[i] = frame
        self.next_slot = (i + 1) % self.slots
        self.filled = min(self.filled + 1, self.slots)
