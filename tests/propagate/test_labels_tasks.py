"""Keypoint, part-map and query-point codecs; point tracking through the propagator."""
import numpy as np
import pytest
import torch

from propagate.config import PropagationConfig
from propagate.labels import (
    backmatch_distance,
    fgvc_heatmaps_to_points,
    fgvc_queries_to_heatmaps,
    grid_size,
    heatmaps_to_keypoints,
    heatmaps_to_points,
    keypoints_to_heatmaps,
    labels_to_parts,
    parts_to_labels,
    queries_to_heatmaps,
    reference_heatmaps_to_keypoints,
    reference_keypoints_to_heatmaps,
    reference_rescale_points,
    rescale_points,
    track_points,
)
from propagate.propagator import Propagator

STRIDE = 8


def test_keypoint_round_trip_within_a_pixel_and_a_third():
    """Top-3 weighted mean of a clean sigma-0.5 Gaussian: error <= s/6 per axis (4 equal cells)."""
    rng = np.random.default_rng(0)
    size = (320, 320)
    grid = grid_size(*size, STRIDE)
    errors = []
    for _ in range(40):
        keypoints = rng.uniform(8, 312, size=(15, 2))
        labels = keypoints_to_heatmaps(keypoints, size, grid, STRIDE)
        assert labels.shape == (16, 40, 40)
        decoded = heatmaps_to_keypoints(labels, STRIDE)
        assert decoded.shape == (15, 2)
        errors.append(np.linalg.norm(decoded - keypoints, axis=1))
    errors = np.concatenate(errors)
    assert errors.max() < 8 / 6 * np.sqrt(2) + 1e-6
    assert errors.mean() < 1.0


def test_keypoint_heatmap_recipe_and_absent_joints():
    size, grid = (64, 80), grid_size(64, 80, STRIDE)
    keypoints = np.array([[3.5 + 8 * 2, 3.5 + 8 * 3],   # exactly on cell (row 3, col 2)
                          [-4.0, 10.0],                  # outside the image: absent
                          [np.nan, 5.0],                 # missing
                          [79.9, 63.9]])                 # inside (last pixel), beyond the last cell centre
    labels = keypoints_to_heatmaps(keypoints, size, grid, STRIDE)
    assert labels.shape == (5, 8, 10)
    joint = labels[1]
    assert joint[3, 2] == pytest.approx(1.0)
    assert joint[3, 3] == pytest.approx(np.exp(-1 / (2 * 0.25)))   # one cell away, sigma 0.5
    assert joint[3, 4] == 0                                          # 2 cells > 3 sigma: cut
    assert labels[2].sum() == 0 and labels[3].sum() == 0
    background = labels[0]
    assert torch.equal(background, (labels[1:].sum(0) == 0).float())
    decoded = heatmaps_to_keypoints(labels, STRIDE)
    np.testing.assert_array_equal(decoded[1], [-1, -1])
    np.testing.assert_array_equal(decoded[2], [-1, -1])
    np.testing.assert_allclose(decoded[3], [75.5, 59.5], atol=0.6)  # clamped to the last cells


def _authors_draw(img, pt, sigma):
    """videowalk data/jhmdb.py draw_labelmap_np, re-derived: int() truncation, an unnormalised
    Gaussian on arange(0, 6 sigma + 1) centred at size // 2, pasted into the clipped window."""
    ul = [int(pt[0] - 3 * sigma), int(pt[1] - 3 * sigma)]
    br = [int(pt[0] + 3 * sigma + 1), int(pt[1] + 3 * sigma + 1)]
    if ul[0] >= img.shape[1] or ul[1] >= img.shape[0] or br[0] < 0 or br[1] < 0:
        return img
    size = 6 * sigma + 1
    x = np.arange(0, size, 1, float)
    y = x[:, None]
    g = np.exp(-((x - size // 2) ** 2 + (y - size // 2) ** 2) / (2 * sigma ** 2))
    gx = max(0, -ul[0]), min(br[0], img.shape[1]) - ul[0]
    gy = max(0, -ul[1]), min(br[1], img.shape[0]) - ul[1]
    ix = max(0, ul[0]), min(br[0], img.shape[1])
    iy = max(0, ul[1]), min(br[1], img.shape[0])
    img[iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return img


def _authors_process_pose(pred, topk=3):
    """videowalk utils/test_utils.py process_pose: pred (h, w, 1 + J); top-k over cells, weights
    normalised, (x, y) = weighted mean of (id % w, id // w); an all-zero channel gives -1."""
    pred = pred[..., 1:]
    flat = pred.flatten(0, 1)
    vals, ids = torch.topk(flat, k=min(flat.shape[0], topk), dim=0)
    vals = vals / vals.sum(0)[None]
    xx, yy = ids % pred.shape[1], ids // pred.shape[1]
    coord = torch.stack([(xx * vals).sum(0), (yy * vals).sum(0)], dim=0)
    coord[:, flat.sum(0) == 0] = -1
    return coord


def test_reference_keypoint_encoding_round_trip_is_the_authors():
    rng = np.random.default_rng(3)
    original, size = (240, 320), (320, 320)
    grid = grid_size(*size, STRIDE)
    keypoints = np.concatenate([rng.uniform(0, [319, 239], size=(13, 2)), [[2.0, 1.0], [318.0, 238.5]]])
    # theirs: (pos_img - 1) * new / old / mapScale, drawn per joint, background where every joint is 0
    cells = keypoints * np.array([size[1] / original[1], size[0] / original[0]]) / STRIDE
    theirs = np.zeros((*grid, len(keypoints)))
    for j, point in enumerate(cells):
        _authors_draw(theirs[:, :, j], point, 0.5)
    theirs = torch.from_numpy(theirs)
    theirs = torch.cat([(theirs.sum(-1) == 0)[..., None] * 1.0, theirs], dim=-1)
    ours = reference_keypoints_to_heatmaps(reference_rescale_points(keypoints, original, size), grid, STRIDE)
    assert torch.allclose(ours.double(), theirs.permute(2, 0, 1), atol=1e-6)
    assert ((ours[1:] > 0).flatten(1).sum(1) <= 16).all()                     # the 4x4 window
    # decoding: their coordinates times the map scale, scaled back to the original frame
    decoded = reference_rescale_points(reference_heatmaps_to_keypoints(ours, STRIDE), size, original)
    expected = (_authors_process_pose(theirs.float()).T.double() * STRIDE).numpy()
    expected = expected * np.array([original[1] / size[1], original[0] / size[0]])
    np.testing.assert_allclose(decoded, expected, atol=1e-5)
    # the sub-cell encoding is the more accurate round trip (frame 0)
    sub_cell = rescale_points(heatmaps_to_keypoints(keypoints_to_heatmaps(
        rescale_points(keypoints, original, size), size, grid, STRIDE), STRIDE), size, original)
    reference_error = np.linalg.norm(decoded - keypoints, axis=1).mean()
    assert np.linalg.norm(sub_cell - keypoints, axis=1).mean() < reference_error
    empty = reference_keypoints_to_heatmaps(np.array([[np.nan, 3.0], [-40.0, 5.0]]), grid, STRIDE)
    assert empty[1:].sum() == 0 and (reference_heatmaps_to_keypoints(empty, STRIDE) == -1).all()


def test_rescale_points_pixel_centre_convention():
    # Pixel 10 of a 128-wide row covers [9.5, 10.5) -> [20, 22) of a 256-wide row, centre 20.5.
    out = rescale_points(np.array([[10.0, 0.0], [-1.0, -1.0]]), (64, 128), (128, 256))
    np.testing.assert_allclose(out[0], [20.5, 0.5])
    np.testing.assert_array_equal(out[1], [-1, -1])  # not predicted stays not predicted


def test_part_map_round_trip_and_bad_ids():
    ids = np.zeros((96, 128), np.uint8)
    ids[10:60, 20:70] = 4
    ids[30:90, 60:120] = 19
    ids[0:8, 0:16] = 255  # void -> background
    labels = parts_to_labels(ids, grid_size(96, 128, STRIDE), STRIDE)
    assert labels.shape == (20, 12, 16)
    assert labels[7].sum() == 0  # absent class: empty channel
    back = labels_to_parts(labels, (96, 128), STRIDE)
    expected = np.where(ids == 255, 0, ids)
    assert back.dtype == np.uint8 and back.shape == ids.shape
    assert (back == expected).mean() > 0.95
    interior = np.zeros_like(ids, bool)
    interior[14:26, 24:56] = True
    assert (back[interior] == 4).all()
    ids[0, 0] = 20
    with pytest.raises(ValueError, match="20"):
        parts_to_labels(ids, grid_size(96, 128, STRIDE), STRIDE)


def test_query_heatmap_decodes_to_sub_cell_positions():
    rng = np.random.default_rng(1)
    grid = grid_size(256, 256, STRIDE)
    points = torch.tensor(rng.uniform(20, 236, size=(64, 2)), dtype=torch.float32)  # 2+ cells from the edge
    labels = queries_to_heatmaps(points, grid, STRIDE)
    assert labels.shape == (65, 32, 32)
    assert labels[0].min() >= 0 and labels[0].max() <= 1
    decoded, peak = heatmaps_to_points(labels, STRIDE)
    assert (decoded - points).norm(dim=1).max() < 0.3
    assert (peak > 0.36).all()  # a Gaussian of sigma 0.5 cell peaks above exp(-0.5) on its nearest cell


def test_query_decode_follows_a_translating_heatmap():
    """A heatmap moved by a sub-cell shift (and blurred) decodes to the moved point."""
    grid = (24, 24)
    start = torch.tensor([[60.0, 70.0]])
    for step in range(1, 6):
        moved = start + torch.tensor([[2.7 * step, -1.3 * step]])
        labels = queries_to_heatmaps(moved, grid, STRIDE, sigma=0.8)  # propagation blurs
        decoded, _ = heatmaps_to_points(labels, STRIDE)
        assert (decoded - moved).norm() < 0.6


def _smooth_field(rng, channels, height, width):
    coarse = torch.tensor(rng.normal(size=(1, channels, height // 2 + 2, width // 2 + 2)), dtype=torch.float32)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]


def test_track_points_follows_translating_features_and_flags_occlusion():
    """Features of frame t are a random field shifted by 1 cell per frame (8 px in x).

    A point on it moves 8 px per frame; an "occluder" (unrelated features) covers the
    second query's track from frame 4 on and must be predicted occluded there.
    """
    rng = np.random.default_rng(2)
    T, h, w, C = 6, 16, 24, 32
    field = _smooth_field(rng, C, h, w + T)
    feats = torch.stack([field[:, :, T - t: T - t + w] for t in range(T)])  # content moves right
    occluder = _smooth_field(rng, C, h, w)
    def track_b(t):  # (x, y), TAP-Vid corner convention
        return np.array([44.0 + 8 * t, 92.0])
    for t in range(4, T):
        col, row = int(track_b(t)[0] // 8), int(track_b(t)[1] // 8)
        feats[t, :, row - 2: row + 3, col - 2: col + 3] = occluder[:, row - 2: row + 3, col - 2: col + 3]
    queries = np.array([[0, 40.0, 60.0],    # [t, y, x]
                        [0, 92.0, 44.0],
                        [3, 70.0, 100.0]])  # queried mid-video: tracked both ways
    cfg = PropagationConfig(context=3, topk=5, temperature=0.05, radius=None)
    tracks, occluded = track_points(Propagator(cfg).propagate, feats, queries, STRIDE)
    assert tracks.shape == (3, T, 2) and occluded.shape == (3, T)
    truth_a = np.array([[60.0 + 8 * t, 40.0] for t in range(T)])
    truth_c = np.array([[100.0 + 8 * (t - 3), 70.0] for t in range(T)])
    assert np.abs(tracks[0] - truth_a).max() < 2.0
    assert np.abs(tracks[2] - truth_c).max() < 2.0
    assert not occluded[0].any() and not occluded[2].any()
    assert np.abs(tracks[1, :4] - np.stack([track_b(t) for t in range(4)])).max() < 2.0
    assert not occluded[1, :4].any()
    assert occluded[1, 4:].all()
    np.testing.assert_allclose(tracks[2, 3], [100.0, 70.0])  # the query frame gives the query


def test_backmatch_distance_is_zero_for_a_perfect_match():
    rng = np.random.default_rng(3)
    feat = _smooth_field(rng, 16, 12, 12)
    points = torch.tensor([[3.5 + 8 * 4, 3.5 + 8 * 6]])
    assert backmatch_distance(feat, feat, points, points, STRIDE).item() == pytest.approx(0.0)
    shifted = torch.roll(feat, shifts=2, dims=2)  # content moves 2 cells right
    moved = points + torch.tensor([[16.0, 0.0]])
    assert backmatch_distance(feat, shifted, moved, points, STRIDE).item() == pytest.approx(0.0)
    assert backmatch_distance(feat, shifted, points, points, STRIDE).item() > 1.5


def _fgvc_draw(points_corner, H, W, stride, sigma=6.0):
    """FGVC's draw_gaussion_map_online by hand: a Gaussian on the pixel-index grid, then [::s, ::s]."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    maps = np.stack([np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)) for x, y in points_corner])
    return maps[:, ::stride, ::stride]


def _fgvc_img2coord(maps, topk=5):
    """FGVC's img2coord by hand on (P, H, W) maps: argsort, the last topk, normalised weighted mean."""
    P, H, W = maps.shape
    flat = maps.reshape(P, -1)
    idx = np.argsort(flat, axis=-1)[:, -topk:]
    vals = np.take_along_axis(flat, idx, axis=-1)
    vals = vals / (vals.sum(-1, keepdims=True) + 1e-9)
    return np.stack([(idx % W * vals).sum(-1), (idx // W * vals).sum(-1)], axis=-1)


def test_fgvc_point_codec_matches_fgvc_drawing_and_top5_decoding():
    H, W, stride = 64, 48, 4
    corner = np.array([[10.3, 20.7], [33.9, 5.2], [0.4, 63.5]])            # (x, y), TAP-Vid corners
    labels = fgvc_queries_to_heatmaps(torch.tensor(corner - 0.5), (H // stride, W // stride), stride)
    assert labels.shape == (4, 16, 12)
    np.testing.assert_allclose(labels[1:].numpy(), _fgvc_draw(corner, H, W, stride), atol=1e-6)
    # decoding: bilinear upsampling (align_corners=False) then FGVC's top-5 mean, on arbitrary maps
    rng = np.random.default_rng(0)
    bumps = _fgvc_draw(np.array([[0, 0], [20.0, 30.0], [30.0, 9.0], [12.0, 50.0]]), H, W, stride, sigma=8.0)
    soft = torch.tensor(bumps + 0.05 * rng.random((4, 16, 12)), dtype=torch.float32)  # interior peaks: no ties
    points, peak = fgvc_heatmaps_to_points(soft, (H, W))
    up = torch.nn.functional.interpolate(soft[None, 1:], size=(H, W), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(points.numpy() + 0.5, _fgvc_img2coord(up.double().numpy()), atol=1e-4)
    np.testing.assert_allclose(peak.numpy(), up.flatten(1).max(1).values.numpy())
    # round trip: FGVC samples pixel s j but upsampling puts cell j at s j + (s - 1) / 2, so a
    # drawn query comes back (s - 1) / 2 px down and right (interior queries)
    points, _ = fgvc_heatmaps_to_points(labels, (H, W))
    shift = points.numpy()[:2] + 0.5 - corner[:2]
    assert np.abs(shift - (stride - 1) / 2).max() < 0.75                    # top-5 pixels quantise
    zero = torch.zeros(2, 4, 4)
    assert fgvc_heatmaps_to_points(zero, (16, 16))[1].item() == 0          # a dead channel has peak 0


def test_track_points_with_fgvc_decoding_follows_translating_features():
    rng = np.random.default_rng(2)
    T, h, w, C = 5, 16, 24, 32
    field = _smooth_field(rng, C, h, w + T)
    feats = torch.stack([field[:, :, T - t: T - t + w] for t in range(T)])  # content moves right 8 px a frame
    queries = np.array([[0, 40.0, 60.0], [2, 70.0, 100.0]])
    cfg = PropagationConfig(context=3, topk=5, temperature=0.05, radius=None)
    tracks, occluded = track_points(Propagator(cfg).propagate, feats, queries, STRIDE, decoding="fgvc")
    truth = np.array([[[60.0 + 8 * t, 40.0] for t in range(T)], [[100.0 + 8 * (t - 2), 70.0] for t in range(T)]])
    bias = (STRIDE - 1) / 2                                                  # FGVC's sampling offset (above)
    later = np.ones((2, T), bool)
    later[0, 0] = later[1, 2] = False                                        # the query frames give the query
    assert np.abs(tracks - truth - bias)[later].max() < 3.0
    np.testing.assert_allclose(tracks[1, 2], [100.0, 70.0])
    assert not occluded.any()
    with pytest.raises(ValueError, match="decoding must be"):
        track_points(Propagator(cfg).propagate, feats, queries, STRIDE, decoding="top5")
