"""GMRW parity: each formula against the authors' formula written out by hand (from ayshrv/gmrw,
models/gmrw.py, models/gmflow_model/matching.py, utils/utils.py) on the same small input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr.geometry import crop_box_affine
from corr.global_match import MATCH_NETS, GlobalMatchConfig, GlobalMatchNet, pair_transition_logits
from corr.losses.global_walk import (
    GlobalWalkLoss,
    curriculum_weight,
    resize_flow,
    rounded_targets,
    smoothness_loss,
    transition_flow,
    window_transition,
)

# ------------------------------------------------------------------ the authors' formulas


def their_softmax(f1, f2):
    """global_correlation_softmax: (B, C, h, w) x 2 -> (B, h w, h w), temperature sqrt(C)."""
    b, c, h, w = f1.shape
    corr = torch.matmul(f1.view(b, c, -1).permute(0, 2, 1), f2.view(b, c, -1)) / c ** 0.5
    return F.softmax(corr, dim=-1)


def their_weighted_argmax(prob, h, w, threshold):
    """compute_flow / global_correlation_softmax with weighted_argmax: rows (B, n, h w)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(h * w, 2).float()
    best = grid[prob.argmax(dim=-1)][:, :, None]
    valid = torch.sum(torch.square(best - grid[None, None]), dim=-1) < threshold ** 2
    kept = valid * prob
    return kept / torch.max(torch.tensor(1e-12), kept.sum(-1))[..., None]


def their_labels(theta, h, w):
    """get_affine_transformed_labels: theta (B, 2, 3) in align_corners=True normalised coordinates."""
    b = theta.shape[0]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    init = torch.stack([xs, ys]).float()[None].repeat(b, 1, 1, 1)
    grid = F.affine_grid(theta, (b, 2, h, w), True)
    label = F.grid_sample(init, grid, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
    label = torch.round(label).to(int)
    label = label[..., 1] * w + label[..., 0]
    onehot = F.one_hot(label.clamp(0, h * w - 1), num_classes=h * w).reshape(b, -1, h * w)
    mask = F.grid_sample(torch.ones(b, 1, h, w), grid, mode="bilinear", align_corners=True) > 0.5
    return onehot, mask.view(b, -1).float()


def their_walk_loss(at, onehot, mask):
    """LogNLLMaskNeighbourLoss(aggregation='sum') with log(x + 1e-7)."""
    loss = torch.log((at * onehot).sum(-1) + 1e-7) * mask
    return -loss.sum() / (mask.sum() + 1e-5)


def their_flow(prob, h, w, height, width):
    """compute_flow(weighted_sum) then resize_flows: rows (B, h w, h w) -> (B, 2, height, width)."""
    b = prob.shape[0]
    xs, ys = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    p = prob.reshape(b, h, w, h * w)
    fx = (p * xs.flatten()).sum(-1) - xs
    fy = (p * ys.flatten()).sum(-1) - ys
    flow = torch.stack([fx, fy], dim=1)
    flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=True)
    flow[:, 0] *= width / w
    flow[:, 1] *= height / h
    return flow


def their_smoothness(flow, image, edge=150.0):
    """utils.smoothness_loss with one flow batch (B, 2, H, W) and image (B, 3, H, W) in [-1, 1]."""
    img_gx = image[:, :, :, 2:] - image[:, :, :, :-2]
    img_gy = image[:, :, 2:, :] - image[:, :, :-2, :]
    wxx = torch.exp(-torch.mean((edge * img_gx) ** 2, dim=1, keepdim=True))
    wyy = torch.exp(-torch.mean((edge * img_gy) ** 2, dim=1, keepdim=True))
    gx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    gy = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    gxx = gx[:, :, :, 1:] - gx[:, :, :, :-1]
    gyy = gy[:, :, 1:, :] - gy[:, :, :-1, :]

    def robust_l1(x):
        return (x ** 2 + 0.001 ** 2) ** 0.5

    return (torch.mean(wxx * robust_l1(gxx)) + torch.mean(wyy * robust_l1(gyy))) / 2.0


def their_curriculum(step, start=141000, end=151000):
    if step <= start:
        return 0.0
    if step >= end:
        return 1.0
    return (step - start) * 1.0 / (end - start)


def normalised_theta(pixel_affine, h, w, stride):
    """Our crop-a pixel -> crop-b pixel affine as the authors' align_corners=True map on a (h, w) cell grid."""
    def to_norm(n):       # cell index -> normalised
        return torch.tensor([[2 / (n[1] - 1), 0, -1], [0, 2 / (n[0] - 1), -1], [0, 0, 1]], dtype=torch.float64)

    def cell_to_px():     # cell index -> pixel
        return torch.tensor([[stride, 0, stride / 2], [0, stride, stride / 2], [0, 0, 1]], dtype=torch.float64)

    full = torch.cat([pixel_affine[0].double(), torch.tensor([[0, 0, 1]], dtype=torch.float64)])
    m = to_norm((h, w)) @ torch.linalg.inv(cell_to_px()) @ full @ cell_to_px() @ torch.linalg.inv(to_norm((h, w)))
    return m[:2].float()[None]


# ------------------------------------------------------------------------------ tests


def test_transition_is_the_softmax_of_unnormalised_dot_products_over_sqrt_c():
    torch.manual_seed(0)
    f1, f2 = torch.randn(2, 16, 3, 5) * 3, torch.randn(2, 16, 3, 5) * 3
    ours = pair_transition_logits(f1, f2, math.sqrt(16)).softmax(-1)
    assert torch.allclose(ours, their_softmax(f1, f2), atol=1e-6)
    assert GlobalMatchNet(MATCH_NETS["small"]).temperature == math.sqrt(64)


@pytest.mark.parametrize("box_b", [(2.3, 5.1, 40.7, 35.3), (-3.2, 1.3, 30.1, 52.6), (7.9, -2.2, 20.3, 28.9)])
def test_walk_loss_with_the_rounded_one_hot_target_equals_theirs(box_b):
    torch.manual_seed(1)
    h = w = 8
    stride, size = 4, 32
    logits_f, logits_b = torch.randn(1, h * w, h * w) * 4, torch.randn(1, h * w, h * w) * 4
    logits_f[0, torch.arange(h * w), torch.arange(h * w)] += 6                    # some mass on the targets
    affine = crop_box_affine(torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.tensor([box_b]), size)
    loss, diag = GlobalWalkLoss()(logits_f, logits_b, affine, (h, w), stride=stride)
    onehot, mask = their_labels(normalised_theta(affine, h, w, stride), h, w)
    at = logits_f.softmax(-1) @ logits_b.softmax(-1)
    assert float(loss) == pytest.approx(float(their_walk_loss(at, onehot, mask)), abs=1e-5)
    index, ours_mask = rounded_targets(affine, (h, w), (h, w), stride)
    assert torch.equal(ours_mask.float(), mask)
    assert torch.equal(index[ours_mask], onehot.argmax(-1)[ours_mask])
    hits = ((at.argmax(-1) == onehot.argmax(-1)).float() * mask).sum() / (mask.sum() + 1e-5)
    assert diag["acc"] == pytest.approx(float(hits), abs=1e-6) and 0 < diag["valid"] < 1


def test_weighted_argmax_window_equals_theirs():
    torch.manual_seed(2)
    prob = torch.randn(2, 30, 5 * 6).softmax(-1)
    for threshold in (1.5, 2, 20):
        assert torch.allclose(window_transition(prob, (5, 6), threshold), their_weighted_argmax(prob, 5, 6, threshold),
                              atol=1e-7)


def test_smoothness_on_full_resolution_flow_equals_theirs():
    torch.manual_seed(3)
    h, w, height, width = 4, 5, 16, 20
    prob = (torch.randn(3, h * w, h * w) * 2).softmax(-1)
    image = torch.rand(3, 3, height, width) * 2 - 1
    image[..., 8:] = image[..., 8:] * 0.001            # a smooth half: weights near 1 there
    flow = resize_flow(transition_flow(prob, (h, w), (h, w)), (height, width))
    theirs = their_flow(prob, h, w, height, width)
    assert torch.allclose(flow, theirs, atol=1e-5)
    assert float(smoothness_loss(flow, image)) == pytest.approx(float(their_smoothness(theirs, image)), abs=1e-6)


def test_loss_with_smoothness_adds_the_curriculum_weighted_term():
    torch.manual_seed(4)
    h = w = 4
    lf, lb = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    images = torch.randn(2, 2, 3, 16, 16)
    identity = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]).repeat(2, 1, 1)
    fn = GlobalWalkLoss(smoothness_weight=1.0, smoothness_ramp=(141000, 151000))
    loss, diag = fn(lf, lb, identity, (h, w), stride=4, images=images, step=146000)
    walk, _ = GlobalWalkLoss()(lf, lb, identity, (h, w), stride=4)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    sources = 2 * (torch.cat([images[:, 0], images[:, 1]]) * std + mean) - 1
    flows = torch.cat([their_flow(lf.softmax(-1), h, w, 16, 16), their_flow(lb.softmax(-1), h, w, 16, 16)])
    expected = float(walk) + 0.5 * float(their_smoothness(flows, sources))
    assert diag["smooth_weight"] == 0.5 and float(loss) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("step", [0, 141000, 141001, 143500, 150999, 151000, 200000])
def test_curriculum_weight_at_given_steps(step):
    assert curriculum_weight(step, 1.0, (141000, 151000)) == pytest.approx(their_curriculum(step), abs=1e-12)
    assert curriculum_weight(step, 0.3, ()) == 0.3


def test_the_authors_network_size_and_windows():
    cfg = GlobalMatchConfig()
    assert (cfg.feature_dim, cfg.num_layers, cfg.splits, cfg.mlp_expansion, cfg.cnn_widths) == (128, 6, 2, 4,
                                                                                                (64, 96, 128))
    model = GlobalMatchNet(cfg)
    f1, f2 = model(torch.randn(1, 3, 32, 48), torch.randn(1, 3, 32, 48))
    assert f1.shape == f2.shape == (1, 128, 8, 12)          # stride 4
    with pytest.raises(ValueError, match="windows"):
        model(torch.randn(1, 3, 36, 48), torch.randn(1, 3, 36, 48))


# ---------------------------------------------------------------------------- tracking


def their_compute_flow_weighted_argmax(prob, h, w, threshold):
    """utils.compute_flow(method='weighted_argmax') in cells: rows (B, h w, h w) -> (B, 2, h, w)."""
    b = prob.shape[0]
    p = their_weighted_argmax(prob, h, w, threshold).reshape(b, h, w, h * w)
    xs, ys = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    return torch.stack([(p * xs.flatten()).sum(-1) - xs, (p * ys.flatten()).sum(-1) - ys], dim=1)


def test_weighted_argmax_flow_with_window_threshold_equals_theirs():
    from corr.flow_track import pair_flows

    torch.manual_seed(5)
    f1, f2 = torch.randn(2, 16, 6, 7) * 2, torch.randn(2, 16, 6, 7) * 2
    for threshold in (1.5, 3, 20):
        ours, back = pair_flows(f1, f2, math.sqrt(16), stride=4, flow="weighted_argmax", window_threshold=threshold)
        theirs = their_compute_flow_weighted_argmax(their_softmax(f1, f2), 6, 7, threshold) * 4
        assert torch.allclose(ours, theirs, atol=1e-5)
        theirs_back = their_compute_flow_weighted_argmax(their_softmax(f2, f1), 6, 7, threshold) * 4
        assert torch.allclose(back, theirs_back, atol=1e-5)


def their_sample(flow, x, y):
    """tracking_utils.bilinear_sample2d of one flow (2, H, W) at integer-centre points (N,)."""
    _, h, w = flow.shape
    x0, y0 = torch.floor(x), torch.floor(y)
    x1, y1 = x0 + 1, y0 + 1

    def at(yy, xx):
        return flow[:, yy.long().clamp(0, h - 1), xx.long().clamp(0, w - 1)]

    return (at(y0, x0) * (x1 - x) * (y1 - y) + at(y0, x1) * (x - x0) * (y1 - y)
            + at(y1, x0) * (x1 - x) * (y - y0) + at(y1, x1) * (x - x0) * (y - y0)).T


def their_tracks(queries, forward, backward, threshold=3.0):
    """get_tracks_from_flows_query_points for one video: queries (N, 3) [t, y, x] in integer-centre pixels."""
    t_count = forward.shape[0] + 1
    _, h, w = forward.shape[1:]
    qt, qxy = queries[:, 0], queries[:, [2, 1]]
    coords = []
    for t in range(t_count):
        coord = torch.zeros_like(qxy) if t == 0 else coords[t - 1] + their_sample(forward[t - 1], *coords[t - 1].T)
        coords.append(torch.where((qt == t)[:, None], qxy, coord))
    for t in range(t_count - 2, -1, -1):
        succ = coords[t + 1]
        moved = succ + their_sample(backward[t], *succ.T)
        coords[t] = torch.where((t < qt)[:, None], moved, coords[t])
    tracks = torch.stack(coords, dim=1)                                      # N, T, 2
    inside = (tracks[..., 0] >= 0) & (tracks[..., 1] >= 0) & (tracks[..., 0] < w) & (tracks[..., 1] < h)
    fwd = [(their_sample(forward[t], *tracks[:, t].T) + their_sample(backward[t], *tracks[:, t + 1].T)).norm(dim=1)
           < threshold for t in range(t_count - 1)] + [torch.ones(len(queries), dtype=torch.bool)]
    bwd = [torch.ones(len(queries), dtype=torch.bool)] + [
        (their_sample(backward[t - 1], *tracks[:, t].T) + their_sample(forward[t - 1], *tracks[:, t - 1].T)).norm(dim=1)
        < threshold for t in range(1, t_count)]
    visible = inside & torch.stack(fwd, 1) & torch.stack(bwd, 1)
    visible[torch.arange(len(queries)), qt.long()] = True
    return tracks, visible


def test_two_pair_forward_backward_occlusion_decision_equals_theirs():
    """Hand-built flows at stride 1 (our cell centres sit at their integer pixels): a smooth
    rightward motion whose backward flow disagrees in a band of frame pair (2, 3) and near the
    bottom of pair (0, 1)."""
    from corr.flow_track import chain_tracks

    torch.manual_seed(6)
    t_count, h, w = 6, 24, 24
    forward = torch.zeros(t_count - 1, 2, h, w)
    forward[:, 0] = 1.5 + 0.05 * torch.arange(w).float()
    forward[:, 1] = 0.4
    backward = -forward.clone()
    backward[2, :, 8:14, :] += torch.tensor([2.5, 1.0])[:, None, None]        # fails the 3 px test there
    backward[0, :, 16:, :] += torch.tensor([4.0, 0.0])[:, None, None]
    queries = torch.tensor([[0, 9.3, 2.2], [2, 10.1, 6.7], [5, 4.4, 20.6], [3, 17.2, 9.9], [1, 12.5, 3.1]])
    theirs_tracks, theirs_visible = their_tracks(queries.clone(), forward, backward)
    ours_queries = queries.clone()
    ours_queries[:, 1:] += 0.5                                               # our pixel convention
    tracks, occluded = chain_tracks(forward, backward, ours_queries.numpy(), (h + 1, w + 1), stride=1)
    assert torch.allclose(torch.as_tensor(tracks).float() - 0.5, theirs_tracks, atol=1e-4)
    interior = (theirs_tracks[..., 0] < w - 1) & (theirs_tracks[..., 1] < h - 1)   # away from the edge conventions
    assert torch.equal(torch.as_tensor(~occluded)[interior], theirs_visible[interior])
    assert theirs_visible[interior].any() and (~theirs_visible[interior]).any()


class _ShiftNet(torch.nn.Module):
    """Stand-in network: one-hot cell features; frame ``t`` (all pixels = t) matches cell ``(x, y)``
    of the other frame ``t'`` with its cell ``(x + d (t' - t), y)``, d = 2 cells."""

    stride = 4
    temperature = 0.01

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, frame1, frame2):
        self.sizes.append(tuple(frame1.shape[-2:]))
        h, w = frame1.shape[-2] // 4, frame1.shape[-1] // 4
        feats = []
        for frame in (frame1, frame2):
            t = frame[:, 0, 0, 0].round().long()
            codes = F.one_hot(torch.arange(w)[None] - 2 * t[:, None] + 8, w + 8).float()  # B, w, w + 8
            rows = F.one_hot(torch.arange(h), h).float()                                  # h, h
            f = torch.einsum("bxc,yr->bcryx", codes, rows).reshape(len(t), (w + 8) * h, h, w)
            feats.append(f)
        return feats[0], feats[1]


@pytest.mark.parametrize("factor", [1, 2, 4])
@pytest.mark.parametrize("setting", ["chained", "direct"])
def test_upsampled_query_and_track_coordinates_map_back_to_the_evaluation_frames(factor, setting):
    """At upsample u the network sees (u H, u W) frames with cells of 4 / u evaluation pixels; a
    displacement of d cells is d * 4 / u pixels of the evaluation frames (the authors' flow
    rescaling by W / w_ = 4 / u), and queries are given and returned in evaluation pixels."""
    from corr.flow_track import FlowTrackConfig, track_video

    size, t_count = 48, 4
    frames = torch.arange(t_count).float()[:, None, None, None].expand(t_count, 3, size, size).contiguous()
    net = _ShiftNet()
    queries = np.array([[0, 10.3, 4.6], [1, 20.0, 16.2]])
    cfg = FlowTrackConfig(walk_setting=setting, upsample_factor=factor)
    tracks, occluded = track_video(net, frames, queries, cfg, batch_size=2)
    assert set(net.sizes) == {(size * factor, size * factor)}
    step = 2 * 4 / factor                                                           # pixels per frame
    for q, (t0, y, x) in enumerate(queries):
        expected = np.stack([x + step * (np.arange(t_count) - t0), np.full(t_count, y)], axis=1)
        np.testing.assert_allclose(tracks[q], expected, atol=1e-3)
    assert not occluded.any()


# ------------------------------------------------------------------ the released checkpoint


def their_state_dict(cfg=GlobalMatchConfig()):
    """The keys and shapes of GMRW's model (GMFlow CNNEncoder with num_output_scales=2 and
    FeatureTransformer), written out from their code, with DDP's ``module.`` prefix."""
    c, (w1, w2, w3), e = cfg.feature_dim, cfg.cnn_widths, cfg.mlp_expansion
    shapes = {"backbone.conv1.weight": (w1, 3, 7, 7)}
    previous = w1
    for stage, width in zip((1, 2, 3), (w1, w2, w3)):
        for block in (0, 1):
            inp = previous if block == 0 else width
            shapes[f"backbone.layer{stage}.{block}.conv1.weight"] = (width, inp, 3, 3)
            shapes[f"backbone.layer{stage}.{block}.conv2.weight"] = (width, width, 3, 3)
            if block == 0 and inp != width or (block == 0 and stage == 2):
                shapes[f"backbone.layer{stage}.{block}.downsample.0.weight"] = (width, inp, 1, 1)
                shapes[f"backbone.layer{stage}.{block}.downsample.0.bias"] = (width,)
        previous = width
    shapes["backbone.conv2.weight"] = (c, w3, 1, 1)
    shapes["backbone.conv2.bias"] = (c,)
    shapes["backbone.trident_conv.weight"] = (c, c, 3, 3)
    for layer in range(cfg.num_layers):
        for part in ("self_attn", "cross_attn_ffn"):
            for proj in ("q_proj", "k_proj", "v_proj", "merge"):
                shapes[f"transformer.layers.{layer}.{part}.{proj}.weight"] = (c, c)
            shapes[f"transformer.layers.{layer}.{part}.norm1.weight"] = (c,)
            shapes[f"transformer.layers.{layer}.{part}.norm1.bias"] = (c,)
        shapes[f"transformer.layers.{layer}.cross_attn_ffn.mlp.0.weight"] = (2 * c * e, 2 * c)
        shapes[f"transformer.layers.{layer}.cross_attn_ffn.mlp.2.weight"] = (c, 2 * c * e)
        shapes[f"transformer.layers.{layer}.cross_attn_ffn.norm2.weight"] = (c,)
        shapes[f"transformer.layers.{layer}.cross_attn_ffn.norm2.bias"] = (c,)
    generator = torch.Generator().manual_seed(0)
    return {f"module.{k}": torch.randn(v, generator=generator) for k, v in shapes.items()}


def test_their_network_has_their_parameter_count():
    theirs = their_state_dict()
    count = sum(v.numel() for v in theirs.values())
    assert count == sum(p.numel() for p in GlobalMatchNet().parameters()) == 4_346_912


def test_their_released_checkpoint_layout_loads(tmp_path):
    from corr.global_match import load_global_match

    theirs = their_state_dict()
    path = tmp_path / "kinetics_144k.pth"
    torch.save({"model": theirs, "epoch": 3, "global_step": 144000}, path)
    model = load_global_match(path)
    ours = model.state_dict()
    assert model.cfg == GlobalMatchConfig() and len(ours) == len(theirs)
    assert torch.equal(ours["features.refine.weight"], theirs["module.backbone.trident_conv.weight"])
    assert torch.equal(ours["transformer.layers.5.cross_attention.mlp_norm.bias"],
                       theirs["module.transformer.layers.5.cross_attn_ffn.norm2.bias"])
    assert torch.equal(ours["features.stages.1.0.shortcut.0.weight"],
                       theirs["module.backbone.layer2.0.downsample.0.weight"])
    small = {k: v for k, v in their_state_dict(MATCH_NETS["small"]).items()}
    torch.save({"model": small}, tmp_path / "small.pth")
    assert load_global_match(tmp_path / "small.pth").cfg == MATCH_NETS["small"]


def test_unmatched_keys_of_their_layout_are_named(tmp_path):
    from corr.errors import CheckpointError
    from corr.global_match import load_global_match

    theirs = their_state_dict()
    theirs["module.upsampler.0.weight"] = torch.zeros(3)
    torch.save({"model": theirs}, tmp_path / "gmflow.pth")
    with pytest.raises(CheckpointError, match="upsampler.0.weight"):
        load_global_match(tmp_path / "gmflow.pth")
