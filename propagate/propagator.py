"""Label propagation through feature affinities: the one algorithm every task uses
(docs/propagation.md). For target frame t:

* context = frame 0 with its given labels (every position allowed, or with ``restrict_first``
  its neighbourhood only) plus the previous n frames with their predicted soft labels (a key
  allowed only in the query's neighbourhood: a disk ``< radius`` or a square ``<= radius``);
* affinity = cos(q, k); the top-k keys are chosen jointly over every allowed context position;
* label_t(q) = sum_j softmax_j(affinity_j / tau) * label(key_j), kept soft and written back.

Short-memory frames are compared on the local window of each ``block x block`` tile of
queries only, frame 0 densely (masked by the neighbourhood with ``restrict_first``), one
tile row at a time. Selection is by group maxima (exact, see :class:`Matcher`): frame 0's
top-k, the short memory's top-k, then the top-k of both.
Memory does not depend on the video's length: the short memory is n padded frames (as
overlapping column strips when they fit in ``memory_budget``) plus one tile row of
affinities. Two halves: a
:class:`Matcher` (features -> top-k :class:`Matches`; depends on context, radius, padding
and feature normalisation only) and a :class:`LabelMemory` (softmax over the first ``topk``
matches, weighted sum of labels, ``label_norm``, written back).

    prop = Propagator(PropagationConfig.preset("crw"))
    prop.start(feat0, label0)          # (C, h, w), (K, h, w)
    for feat in later_frames:
        label = prop.step(feat)        # (K, h, w)"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from .config import PropagationConfig
from .dense import normalize_label


class Matches(NamedTuple):
    """The top-k context keys of every query position of one frame (``N = h*w`` queries, row-major).

    values: (N, k) float32 similarities, sorted in decreasing order (``-inf``: fewer than k
            allowed keys, weight 0).
    source: (N, k) int64 ``frame * h*w + position`` of each key: ``frame`` is the key's frame
            in the video (0 for frame 0 and for its front-padding copies), ``position`` its
            row-major cell on the grid.
    """

    values: torch.Tensor
    source: torch.Tensor

    def first(self, k: int) -> "Matches":
        """The top-``k`` (a prefix of the sorted lists)."""
        if k > self.values.shape[1]:
            raise ValueError(f"{k} matches asked, only {self.values.shape[1]} kept")
        return Matches(self.values[:, :k], self.source[:, :k])


class Propagator:
    """Step-wise label propagation (see module docstring): a :class:`Matcher` and a :class:`LabelMemory`.

    Tensors live on the device of the features given to :meth:`start`.
    """

    def __init__(self, cfg: PropagationConfig, block: int = 8, memory_budget: int = 1 << 30):
        self.cfg = cfg
        self.matcher = Matcher(cfg, block=block, memory_budget=memory_budget)
        self.labels = LabelMemory(cfg)

    @torch.no_grad()
    def propagate(self, feats: torch.Tensor, first_label: torch.Tensor) -> torch.Tensor:
        """feats (T, C, h, w), first_label (K, h, w) -> soft labels (T, K, h, w); frame 0 = first_label."""
        if feats.ndim != 4:
            raise ValueError(f"feats must be (T, C, h, w), got {tuple(feats.shape)}")
        out = [self.start(feats[0], first_label)]
        out += [self.step(feats[t]) for t in range(1, feats.shape[0])]
        return torch.stack(out)

    @torch.no_grad()
    def start(self, feat0: torch.Tensor, label0: torch.Tensor) -> torch.Tensor:
        """Begin a video with frame 0's features (C, h, w) and labels (K, h, w). Returns label0."""
        if feat0.ndim != 3 or label0.ndim != 3 or feat0.shape[-2:] != label0.shape[-2:]:
            raise ValueError(f"feat0 (C, h, w) and label0 (K, h, w) must share the grid, got "
                             f"{tuple(feat0.shape)} and {tuple(label0.shape)}")
        self.matcher.start(feat0)
        return self.labels.start(label0.to(feat0.device))

    @torch.no_grad()
    def step(self, feat: torch.Tensor) -> torch.Tensor:
        """Propagate to the next frame: features (C, h, w) -> soft labels (K, h, w)."""
        if self.matcher.frame < 0:
            raise RuntimeError("call start(feat0, label0) before step()")
        return self.labels.step(self.matcher.match(feat))


class LabelMemory:
    """The label half of propagation: frame 0's labels and the last n predicted ones.

    ``step(matches)`` for frame t: with the first ``topk`` matches ``(a_j, key_j)``,
    ``label_t(q) = sum_j softmax_j(a_j / temperature) * label(key_j)``, then ``label_norm``;
    the result is written back as context (frame f >= 1 is kept in slot ``(f - 1) mod n``).
    Labels are (K, h, w) float32 on the device of ``label0``.
    """

    def __init__(self, cfg: PropagationConfig):
        self.cfg = cfg
        self.frame = -1  # the last frame whose labels are known

    @torch.no_grad()
    def start(self, label0: torch.Tensor) -> torch.Tensor:
        """Frame 0's labels (K, h, w); returns them (float32)."""
        if label0.ndim != 3:
            raise ValueError(f"label0 must be (K, h, w), got {tuple(label0.shape)}")
        label0 = label0.float()
        self.K, self.h, self.w = label0.shape
        # Rows: frame 0's h*w cells, then n slots of h*w cells each.
        self.table = torch.zeros((1 + self.cfg.context) * self.h * self.w, self.K, device=label0.device)
        self.table[: self.h * self.w] = rearrange(label0, "k h w -> (h w) k")
        self.frame = 0
        return label0

    @torch.no_grad()
    def step(self, matches: Matches) -> torch.Tensor:
        """Labels (K, h, w) of the next frame from its matches (at least ``topk`` of them)."""
        if self.frame < 0:
            raise RuntimeError("call start(label0) before step()")
        cells, n = self.h * self.w, self.cfg.context
        if matches.values.shape[0] != cells:
            raise ValueError(f"matches for {matches.values.shape[0]} queries, the grid has {cells}")
        values, source = matches.first(self.cfg.topk)
        source = source.to(self.table.device, torch.long)
        frame, position = source // cells, source % cells
        if n > 0:
            oldest = self.frame + 1 - n
            if bool(((frame > 0) & (frame < oldest)).any()) or bool((frame > self.frame).any()):
                raise ValueError(f"matches of frame {self.frame + 1} point outside its context")
            row = torch.where(frame > 0, (1 + (frame - 1) % n) * cells + position, position)
        else:
            row = position
        weights = torch.softmax(values.to(self.table.device).float() / self.cfg.temperature, dim=1)  # (N, k)
        label = torch.einsum("nk,nkc->nc", weights, self.table[row])
        label = normalize_label(rearrange(label, "(h w) c -> c h w", h=self.h), self.cfg.label_norm)
        self.frame += 1
        if n > 0:
            slot = (self.frame - 1) % n
            self.table[(1 + slot) * cells:(2 + slot) * cells] = rearrange(label, "c h w -> (h w) c")
        return label


class Matcher:
    """The feature half of propagation: the top-k context keys of each new frame's queries.

    ``topk`` (default ``cfg.topk``) matches are kept per query, so that one pass serves
    every smaller k. Only ``context``, ``radius``, ``neighbourhood``, ``restrict_first``,
    ``pad_with_first`` and ``normalize_features`` of ``cfg`` matter here.

    Selection by group maxima (exact): the candidate keys of a query are cut into groups
    (a grid column of frame 0; one window cell across every short-memory frame), the k
    groups with the largest maxima are chosen, and the top-k is taken over their members
    only. Every key outside the chosen groups is at most the k-th largest chosen maximum,
    itself a chosen key, so the top-k values are those of a top-k over all keys (ties
    between equal values may be broken differently). The maxima are reductions over an
    outer axis, which vectorise; the top-k calls see k groups' members, not every key.
    """

    def __init__(self, cfg: PropagationConfig, topk: Optional[int] = None, block: int = 8,
                 memory_budget: int = 1 << 30):
        self.cfg = cfg
        self.topk = cfg.topk if topk is None else int(topk)
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        self.block = block
        self.memory_budget = memory_budget
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
        self._state = _State(cfg, self.block, C, h, w, feat0.device, self.memory_budget)
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
        """One tile row at a time: frame 0's top-k and the short memory's, then the top-k of both."""
        b, k = s.block, self.topk
        # Query tiles: (blocks, b*b, C), positions outside the grid are zero and cropped later.
        q = F.pad(query, (0, s.nbx * b - s.w, 0, s.nby * b - s.h))
        q = rearrange(q, "c (by y) (bx x) -> (by bx) (y x) c", y=b, x=b)
        values = torch.empty(s.nby * s.nbx, b * b, k, device=s.device)
        source = torch.empty(s.nby * s.nbx, b * b, k, dtype=torch.long, device=s.device)
        for r in range(s.nby):
            t0, t1 = r * s.nbx, (r + 1) * s.nbx
            parts = [self._long(s, q[t0:t1], t0, t1)]
            if s.filled > 0:
                parts.append((self._short_local if s.local else self._short_dense)(s, q[t0:t1], r))
            v, i = _union_topk(parts, k)
            values[t0:t1], source[t0:t1] = v.view(s.nbx, b * b, k), i.view(s.nbx, b * b, k)

        def grid(x: torch.Tensor) -> torch.Tensor:
            x = rearrange(x, "(by bx) (y x) k -> (by y) (bx x) k", by=s.nby, y=b)
            return x[: s.h, : s.w].reshape(s.h * s.w, k)
        return Matches(grid(values), grid(source))

    def _long(self, s: "_State", q: torch.Tensor, t0: int, t1: int):
        """Top-k over frame 0 for the queries q (L, b*b, C) of tiles t0..t1-1; groups: its grid columns.

        Returns values and sources (L*b*b, k') in :class:`Matches` encoding (frame 0: the position).
        """
        N = q.shape[0] * q.shape[1]
        aff = q.reshape(N, -1) @ s.long_keys  # (N, h*w)
        if s.restrict_first:
            aff.masked_fill_(~s.first_allowed(t0, t1), float("-inf"))
        cells = aff.view(N, s.h, s.w)
        kg = min(self.topk, s.w)
        column = cells.amax(dim=1).topk(kg, dim=1).indices  # (N, kg)
        members = cells.gather(2, column[:, None, :].expand(N, s.h, kg)).view(N, s.h * kg)  # (y, group)
        values, pick = members.topk(min(self.topk, s.h * kg), dim=1)
        return values, (pick // kg) * s.w + column.gather(1, pick % kg)

    def _short_local(self, s: "_State", q: torch.Tensor, r: int):
        """Top-k over the local windows of the short-memory frames for the queries of tile row r.

        Each tile's queries are compared with its window (P x P cells) in every frame, a few
        frames at a time (:meth:`_State.windows`), in one batched product: affinities
        (frames, tiles, b*b, P*P). Groups are the window cells: a cell's maximum over the
        frames is taken, the disk and border masks are added to it as a bias (``-inf`` off
        the disk or the grid), the k cells of largest maximum are chosen, then the top-k of
        their ``k * frames`` affinities (masked alike).
        Returns values and sources (L*b*b, k') (:class:`Matches` encoding).
        """
        L, Q, C = q.shape
        b, P, n = s.block, s.P, s.filled
        aff = s.affinity[:n]  # (n, L, Q, P*P), reused
        step = max(1, min(n, self.memory_budget // max(16 * L * P * P * C, 1)))  # frames of windows at a time
        for f0 in range(0, n, step):
            windows = s.windows(f0, min(n, f0 + step), r)  # (f, L, P*P, C)
            for f in range(windows.shape[0]):
                torch.bmm(q, windows[f].transpose(1, 2), out=aff[f0 + f])
        kg = min(self.topk, P * P)
        cell = (torch.amax(aff, dim=0) + s.window_bias[r]).topk(kg, dim=2).indices  # (L, Q, kg) window cells
        bias = s.window_bias[r].gather(2, cell)  # 0 or -inf
        members = aff.gather(3, cell.expand(n, L, Q, kg)) + bias  # (n, L, Q, kg)
        values, pick = rearrange(members, "f j q g -> (j q) (f g)").topk(min(self.topk, n * kg), dim=1)
        frame, chosen = pick // kg, cell.view(L * Q, kg).gather(1, pick % kg)
        tile = torch.arange(L, device=s.device).repeat_interleave(Q)[:, None]
        row = r * b + chosen // P - s.pad  # grid coordinates (outside the grid: -inf values)
        col = tile * b + chosen % P - s.pad
        position = row.clamp(0, s.h - 1) * s.w + col.clamp(0, s.w - 1)
        return values, s.slot_frame[frame] * (s.h * s.w) + position

    def _short_dense(self, s: "_State", q: torch.Tensor, r: int):
        """No locality limit: top-k over every position of every short-memory frame."""
        L, Q, C = q.shape
        keys = s.short_feats[: s.filled].reshape(-1, C)  # (n*h*w, C); no padding without a radius
        aff = q.reshape(L * Q, C) @ keys.T  # (L*Q, n*h*w)
        values, index = aff.topk(min(self.topk, aff.shape[1]), dim=1)
        cells = s.h * s.w
        return values, s.slot_frame[index // cells] * cells + index % cells


def _union_topk(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k of the union of (values, sources) lists (N, k_i); padded with ``-inf`` (weight 0)
    when they hold fewer than k keys together. Returns (N, k) values and sources."""
    values = torch.cat([v for v, _ in parts], dim=1)
    source = torch.cat([i for _, i in parts], dim=1)
    values, pick = values.topk(min(k, values.shape[1]), dim=1)
    source = source.gather(1, pick)
    if values.shape[1] < k:  # fewer keys than k in the whole context
        missing = k - values.shape[1]
        values = F.pad(values, (0, missing), value=float("-inf"))
        source = F.pad(source, (0, missing), value=0)
    return values, source


class _State:
    """A video's feature memory: frame 0 (dense) and a ring buffer of n short-memory frames."""

    def __init__(self, cfg: PropagationConfig, block: int, C: int, h: int, w: int, device, memory_budget: int):
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
        self.nby, self.nbx = math.ceil(h / b), math.ceil(w / b)
        # Padded grid of the short memory: room for every tile's window.
        self.Hp, self.Wp = self.nby * b + 2 * p, self.nbx * b + 2 * p
        # Short memory; slots 0..filled-1 are in use, in any order; slot_frame holds each
        # slot's frame in the video (0 for padding copies). With a radius, features are kept
        # zero-padded, frame cell (y, x) at (y + p, x + p): as overlapping column strips
        # (n, nbx, Hp, P, C), strip j holding padded columns j*b .. j*b+P-1, so that every
        # tile window is a view, when they fit in ``memory_budget``; else as (n, Hp, Wp, C),
        # windows gathered when needed. Without a radius, plainly as (n, h, w, C).
        n = cfg.context
        if self.local:
            self.strips = 4 * n * self.nbx * self.Hp * self.P * C <= memory_budget
            if self.strips:
                self.short = torch.zeros(n, self.nbx, self.Hp, self.P, C, device=device)
            else:
                self.short = torch.zeros(n, self.Hp, self.Wp, C, device=device)
        else:
            self.short_feats = torch.zeros(n, h, w, C, device=device)
        self.slot_frame = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = n
        self.filled = 0
        self.next_slot = 0
        if self.local:
            allowed = self._allowed_masks(cfg.radius)  # (tiles, b*b, P*P), tiles in row-major order
            bias = torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, float("-inf"))
            self.window_bias = rearrange(bias, "(r j) q k -> r j q k", j=self.nbx).contiguous()
            # Work space of one tile row: every frame's window affinities.
            self.affinity = torch.empty(n, self.nbx, b * b, self.P * self.P, device=device)

    def windows(self, f0: int, f1: int, r: int) -> torch.Tensor:
        """(f1 - f0, nbx, P*P, C): the windows of tile row r in short-memory slots f0..f1-1
        (row-major cells; a view of the strips, or a copy gathered from the padded frames)."""
        b, P = self.block, self.P
        if self.strips:
            return self.short[f0:f1, :, r * b: r * b + P].flatten(2, 3)
        band = self.short[f0:f1, r * b: r * b + P]  # (f, P, Wp, C)
        return rearrange(band.unfold(2, P, b), "f y j c x -> f j (y x) c")

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
        if self.local and self.strips:
            padded = torch.zeros(self.Hp, self.Wp, self.C, device=self.device)
            padded[p: p + self.h, p: p + self.w] = rearrange(feat, "c h w -> h w c")
            self.short[i] = rearrange(padded.unfold(1, self.P, self.block), "y j c x -> j y x c")
        elif self.local:
            self.short[i, p: p + self.h, p: p + self.w] = rearrange(feat, "c h w -> h w c")
        else:
            self.short_feats[i] = rearrange(feat, "c h w -> h w c")
        self.slot_frame[i] = frame
        self.next_slot = (i + 1) % self.slots
        self.filled = min(self.filled + 1, self.slots)
