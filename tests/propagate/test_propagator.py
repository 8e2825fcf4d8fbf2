"""The propagator equals the dense formulation of docs/propagation.md, and hand-made cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from corr.errors import OptionError
from propagate import PRESETS, PropagationConfig, Propagator
from propagate.dense import context_frames, grid_distance_allowed, propagate_dense
from propagate.propagator import LabelMemory, Matcher, Matches


def smooth_features(T, C, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, C, h, w, generator=g)
    return F.avg_pool2d(x, 3, 1, 1)  # spatially correlated, like real features


def soft_label(K, h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(K, h, w, generator=g), dim=0)


@pytest.mark.parametrize("pad_with_first", [False, True])
@pytest.mark.parametrize("radius", [12.0, 2.5, None])
def test_equals_dense_reference(pad_with_first, radius):
    cfg = PropagationConfig(context=4, topk=6, temperature=0.05, radius=radius, pad_with_first=pad_with_first)
    feats, label = smooth_features(8, 24, 15, 22), soft_label(3, 15, 22)
    expected = propagate_dense(feats, label, cfg)
    for block in (4, 8):
        for budget in (1 << 15, 256 << 20):  # one frame's windows at a time, or all frames at once
            got = Propagator(cfg, block=block, memory_budget=budget).propagate(feats, label)
            assert got.shape == (8, 3, 15, 22)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert torch.equal(got[0], label)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_equal_dense_reference(preset):
    cfg = PropagationConfig.preset(preset, context=3)
    feats, label = smooth_features(6, 16, 12, 17, seed=3), soft_label(4, 12, 17, seed=4)
    got = Propagator(cfg).propagate(feats, label)
    torch.testing.assert_close(got, propagate_dense(feats, label, cfg), atol=1e-4, rtol=0)


def test_stepwise_equals_whole_video():
    cfg = PropagationConfig.preset("crw", context=3)
    feats, label = smooth_features(6, 16, 10, 12), soft_label(2, 10, 12)
    whole = Propagator(cfg).propagate(feats, label)
    prop = Propagator(cfg)
    prop.start(feats[0], label)
    for t in range(1, 6):
        torch.testing.assert_close(prop.step(feats[t]), whole[t])


def test_padding_changes_early_frames_only_through_context():
    feats, label = smooth_features(6, 8, 9, 9, seed=5), soft_label(3, 9, 9, seed=6)
    plain = Propagator(PropagationConfig(context=3, topk=5, radius=4.0)).propagate(feats, label)
    padded = Propagator(PropagationConfig(context=3, topk=5, radius=4.0, pad_with_first=True)).propagate(feats, label)
    assert (plain[1] - padded[1]).abs().max() > 1e-3  # frame 0 copies take top-k slots


def test_context_frames_rule():
    plain = PropagationConfig(context=3)
    padded = PropagationConfig(context=3, pad_with_first=True)
    assert context_frames(1, plain) == []
    assert context_frames(2, plain) == [1]
    assert context_frames(5, plain) == [2, 3, 4]
    assert context_frames(1, padded) == [0, 0, 0]
    assert context_frames(2, padded) == [0, 0, 1]
    assert context_frames(5, padded) == [2, 3, 4]


def test_hand_computed_two_positions():
    # Grid 1x2, C=2. Frame 0 keys: e0 at x=0 (label A), e1 at x=1 (label B).
    # Frame 1 query at x=0 is (cos a, sin a): cosines 0.8 with key 0 and 0.6 with key 1.
    feats = torch.zeros(2, 2, 1, 2)
    feats[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    feats[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    feats[1, :, 0, 0] = torch.tensor([0.8, 0.6])
    feats[1, :, 0, 1] = torch.tensor([0.0, 1.0])
    label = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (K=2, 1, 2)
    tau = 0.1
    out = Propagator(PropagationConfig(context=1, topk=2, temperature=tau, radius=1.0)).propagate(feats, label)
    wa = math.exp(0.8 / tau) / (math.exp(0.8 / tau) + math.exp(0.6 / tau))
    assert out[1, 0, 0, 0].item() == pytest.approx(wa, abs=1e-6)
    assert out[1, 1, 0, 0].item() == pytest.approx(1 - wa, abs=1e-6)
    # top-1 keeps only the best key
    out1 = Propagator(PropagationConfig(context=1, topk=1, temperature=tau, radius=1.0)).propagate(feats, label)
    assert out1[1, :, 0, 0].tolist() == [1.0, 0.0]


def test_radius_excludes_far_short_memory_but_not_frame_zero():
    # 1x6 grid. Frame 1 at x=5 looks like frame 0 at x=0 (allowed: long memory).
    # Frame 2 at x=5 looks like frame 1 at x=0, 5 cells away: excluded with radius 2.
    C, w = 6, 6
    eye = torch.eye(C)
    f0 = eye.clone().view(C, 1, w)
    f1 = eye[:, [1, 1, 2, 3, 4, 0]].contiguous().view(C, 1, w)  # x=5 matches f0's x=0
    f2 = eye[:, [0, 1, 2, 3, 4, 1]].contiguous().view(C, 1, w)  # x=5 matches f1's x=0 and x=1 (far)
    feats = torch.stack([f0, f1, f2])
    label = torch.zeros(2, 1, w)
    label[0, 0, 0] = 1
    label[1, 0, 1:] = 1
    out = Propagator(PropagationConfig(context=1, topk=1, temperature=0.01, radius=2.0)).propagate(feats, label)
    assert out[1, 0, 0, 5].item() == pytest.approx(1.0)  # from frame 0, 5 cells away: allowed
    # In frame 2, x=5 can only reach frame 0 (x=1, label 1) or frame 1 within distance < 2.
    far = Propagator(PropagationConfig(context=1, topk=1, temperature=0.01, radius=None)).propagate(feats, label)
    near = out
    def dense(radius):
        return propagate_dense(feats, label, PropagationConfig(context=1, topk=1, temperature=0.01, radius=radius))

    torch.testing.assert_close(near, dense(2.0))
    torch.testing.assert_close(far, dense(None))


def test_memory_does_not_grow_with_video_length():
    cfg = PropagationConfig.preset("crw", context=3)
    prop = Propagator(cfg)
    feats = smooth_features(12, 8, 10, 10)
    prop.start(feats[0], soft_label(2, 10, 10))

    def state_numel():
        tensors = [*vars(prop.matcher._state).values(), *vars(prop.labels).values()]
        return sum(v.numel() for v in tensors if isinstance(v, torch.Tensor))

    prop.step(feats[1])
    before = state_numel()
    for t in range(2, 12):
        prop.step(feats[t])
    assert state_numel() == before


def test_bad_input_is_reported():
    prop = Propagator(PropagationConfig())
    with pytest.raises(RuntimeError, match="start"):
        prop.step(torch.zeros(4, 5, 5))
    with pytest.raises(ValueError, match="grid"):
        prop.start(torch.zeros(4, 5, 5), torch.zeros(2, 6, 5))
    prop.start(torch.zeros(4, 5, 5), torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="expected features"):
        prop.step(torch.zeros(4, 6, 5))
    with pytest.raises(OptionError, match="unknown propagation preset"):
        PropagationConfig.preset("nope")
    with pytest.raises(ValueError, match="temperature"):
        PropagationConfig(temperature=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_equals_cpu():
    cfg = PropagationConfig.preset("crw", context=4)
    feats, label = smooth_features(6, 32, 20, 30), soft_label(3, 20, 30)
    cpu = Propagator(cfg).propagate(feats, label)
    gpu = Propagator(cfg).propagate(feats.cuda(), label.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def run_from_matches(matches, label, cfg):
    memory = LabelMemory(cfg)
    out = [memory.start(label)]
    out += [memory.step(m) for m in matches]
    return torch.stack(out)


@pytest.mark.parametrize("pad_with_first", [False, True])
@pytest.mark.parametrize("radius", [3.0, None])
def test_matches_serve_smaller_topk_any_temperature_and_label_norm(pad_with_first, radius):
    """Matches of top-8 computed once reproduce the dense result of every k <= 8, tau, label_norm."""
    base = PropagationConfig(context=3, topk=8, radius=radius, pad_with_first=pad_with_first)
    feats, label = smooth_features(7, 16, 11, 13, seed=7), soft_label(3, 11, 13, seed=8)
    matcher = Matcher(base, block=4)
    matcher.start(feats[0])
    matches = [matcher.match(feats[t]) for t in range(1, 7)]
    for m in matches:
        assert m.values.shape == m.source.shape == (11 * 13, 8)
        assert bool((m.values[:, :-1] >= m.values[:, 1:]).all())  # sorted, so a prefix is a top-k
    for k, tau, norm in ((8, 0.05, "none"), (3, 0.05, "none"), (5, 0.2, "minmax"), (1, 0.07, "none")):
        cfg = PropagationConfig(context=3, topk=k, temperature=tau, radius=radius, pad_with_first=pad_with_first,
                                label_norm=norm)
        torch.testing.assert_close(run_from_matches(matches, label, cfg), propagate_dense(feats, label, cfg),
                                   atol=1e-4, rtol=0)


def test_match_sources_point_at_the_chosen_keys():
    """source = frame * h*w + position: the similarity of the query with that key is the match value."""
    cfg = PropagationConfig(context=2, topk=4, radius=2.5)
    feats = F.normalize(smooth_features(5, 8, 6, 7, seed=9), dim=1)
    matcher = Matcher(cfg)
    matcher.start(feats[0])
    for t in range(1, 5):
        m = matcher.match(feats[t])
        frame, position = m.source // 42, m.source % 42
        assert bool((frame <= t - 1).all()) and bool(((frame == 0) | (frame >= t - 2)).all())
        keys = feats.flatten(2)[frame, :, position]  # (N, k, C)
        expected = torch.einsum("nc,nkc->nk", feats[t].flatten(1).T, keys)
        torch.testing.assert_close(m.values, expected, atol=1e-5, rtol=0)


def test_too_few_keys_pad_with_weightless_matches():
    cfg = PropagationConfig(context=1, topk=10, radius=1.0)  # 2x2 grid: 4 + 4 keys < 10
    feats, label = smooth_features(3, 4, 2, 2), soft_label(2, 2, 2)
    matcher = Matcher(cfg)
    matcher.start(feats[0])
    m = matcher.match(feats[1])
    assert m.values.shape == (4, 10) and bool(torch.isinf(m.values[:, 4:]).all())
    torch.testing.assert_close(Propagator(cfg).propagate(feats, label), propagate_dense(feats, label, cfg),
                               atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="only 10 kept"):
        Matches(m.values, m.source).first(11)
    memory = LabelMemory(PropagationConfig(context=1, topk=12, radius=1.0))  # wants more than were kept
    memory.start(label)
    with pytest.raises(ValueError, match="only 10 kept"):
        memory.step(m)


@pytest.mark.parametrize("restrict_first", [False, True])
@pytest.mark.parametrize("radius", [2.0, 3.5])
def test_square_neighbourhood_equals_dense_reference(restrict_first, radius):
    cfg = PropagationConfig(context=3, topk=5, temperature=0.1, radius=radius, neighbourhood="square",
                            restrict_first=restrict_first)
    feats, label = smooth_features(6, 16, 11, 14, seed=8), soft_label(3, 11, 14, seed=9)
    expected = propagate_dense(feats, label, cfg)
    for block in (4, 8):
        for budget in (1 << 15, 256 << 20):
            got = Propagator(cfg, block=block, memory_budget=budget).propagate(feats, label)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    unrestricted = propagate_dense(feats, label, PropagationConfig(context=3, topk=5, temperature=0.1, radius=radius))
    assert (expected - unrestricted).abs().max() > 1e-3  # the shape and frame 0's limit matter


def test_restricted_frame_zero_keys_lie_in_the_square():
    cfg = PropagationConfig(context=0, topk=4, radius=2.0, neighbourhood="square", restrict_first=True)
    feats = smooth_features(2, 8, 9, 10, seed=11)
    matcher = Matcher(cfg)
    matcher.start(feats[0])
    source = matcher.match(feats[1]).source  # (h*w, k), frame 0 only
    qy, qx = torch.arange(90) // 10, torch.arange(90) % 10
    ky, kx = source // 10, source % 10
    assert ((ky - qy[:, None]).abs() <= 2).all() and ((kx - qx[:, None]).abs() <= 2).all()
    assert ((ky - qy[:, None]).abs() == 2).any()  # the square's border is inside (<= radius)


def dense_topk_values(feats, t, cfg):
    """(h*w, k) the k largest allowed affinities of frame t's queries, from the full masked affinity."""
    T, C, h, w = feats.shape
    keys = F.normalize(feats, dim=1).flatten(2)
    local = grid_distance_allowed(h, w, cfg.radius, neighbourhood=cfg.neighbourhood)
    first = local if cfg.restrict_first else torch.ones_like(local)
    ctx = context_frames(t, cfg)
    aff = keys[t].T @ torch.cat([keys[0]] + [keys[j] for j in ctx], dim=1)
    aff = aff.masked_fill(~torch.cat([first] + [local] * len(ctx), dim=1), float("-inf"))
    values = aff.topk(min(cfg.topk, aff.shape[1]), dim=1).values
    return F.pad(values, (0, cfg.topk - values.shape[1]), value=float("-inf"))


@pytest.mark.parametrize("budget", [1 << 12, 256 << 20])  # windows gathered from padded frames / strips
@pytest.mark.parametrize("grid,T,context,radius,square", [
    ((13, 11), 6, 3, 3.0, False),   # edge tiles on both sides
    ((9, 17), 2, 4, 2.5, False),    # a video shorter than its context
    ((7, 7), 5, 2, 1.0, False),     # a window of one cell: fewer allowed keys than k in the short memory
    ((10, 12), 4, 3, 2.0, True),    # square neighbourhood
])
def test_selection_equals_dense_topk_with_ties(budget, grid, T, context, radius, square):
    """Features with entries in {-1, 0, 1} tie exactly at every level: the chosen values are the dense top-k
    values, each source is an allowed key of the context whose affinity is its value, no key is chosen twice."""
    h, w = grid
    g = torch.Generator().manual_seed(h * w + T)
    feats = torch.randint(-1, 2, (T, 4, h, w), generator=g).float()
    cfg = PropagationConfig(context=context, topk=6, radius=radius, neighbourhood="square" if square else "disk")
    allowed = grid_distance_allowed(h, w, radius, neighbourhood=cfg.neighbourhood)
    matcher = Matcher(cfg, block=4, memory_budget=budget)
    matcher.start(feats[0])
    for t in range(1, T):
        m = matcher.match(feats[t])
        torch.testing.assert_close(m.values, dense_topk_values(feats, t, cfg), atol=1e-6, rtol=0)
        finite = torch.isfinite(m.values)
        frame, position = m.source // (h * w), m.source % (h * w)
        assert bool(((frame == 0) | ((frame >= max(1, t - context)) & (frame < t)))[finite].all())
        query = torch.arange(h * w)[:, None].expand_as(position)
        assert bool(((frame == 0) | allowed[query, position])[finite].all())
        keys = F.normalize(feats, dim=1).flatten(2)[frame, :, position]  # (N, k, C)
        expected = torch.einsum("nc,nkc->nk", F.normalize(feats[t], dim=0).flatten(1).T, keys)
        torch.testing.assert_close(m.values[finite], expected[finite], atol=1e-6, rtol=0)
        for n in range(h * w):
            chosen = m.source[n][finite[n]]
            assert chosen.unique().numel() == chosen.numel()
