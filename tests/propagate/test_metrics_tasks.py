"""TAP-Vid, JHMDB PCK and VIP mIoU: hand-computed cases for every rule of the reference scorers.

The ``*_matches_reference_values`` tests pin numbers that the reference scorers produced
on the inputs built by the ``make_*_case`` functions below:
TAP-Vid: google-deepmind/tapnet, tapnet/tapvid/evaluation_datasets.py,
``compute_tapvid_metrics`` (commit c2cbab81); JHMDB: ajabri/videowalk,
code/eval/eval_pck.py; VIP: ajabri/videowalk, code/eval/eval_vip.py (commit 047f3f40).
"""
import numpy as np
import pytest
from PIL import Image

from datasets.jhmdb import JHMDB_JOINTS
from datasets.vip import VIP_CLASSES
from propagate.metrics import (
    JHMDB_PCK_THRESHOLDS,
    TAPVID_KEYS,
    jhmdb_normalised_distances,
    jhmdb_pck,
    jhmdb_pck_per_joint,
    resize_nearest,
    tapvid_metrics,
    tapvid_scored_frames,
    tapvid_summary,
    vip_confusion,
    vip_miou,
)

# ---------------------------------------------------------------- input builders


def make_tapvid_case(seed: int, batch: int = 2, points: int = 6, frames: int = 8):
    """Random TAP-Vid inputs (query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks)."""
    rng = np.random.default_rng(seed)
    gt_occluded = rng.random((batch, points, frames)) < 0.3
    pred_occluded = rng.random((batch, points, frames)) < 0.3
    gt_tracks = rng.uniform(0, 256, (batch, points, frames, 2))
    pred_tracks = gt_tracks + rng.normal(0, 4.0, (batch, points, frames, 2))
    query_points = np.stack(
        [
            rng.integers(0, frames, (batch, points)).astype(np.float64),
            rng.uniform(0, 256, (batch, points)),
            rng.uniform(0, 256, (batch, points)),
        ],
        axis=-1,
    )
    return query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks


def make_pck_case(seed: int, videos: int = 3):
    """Random JHMDB videos: (preds, gts) lists of (T, 15, 2); about 20% joints not predicted.

    Ground truth lies on a quarter-pixel grid (exact through the scorer's 1-based .mat
    round trip); frame 1 of every video has a single predicted joint (zero normaliser)
    and frame 2 none.
    """
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(videos):
        frames = int(rng.integers(4, 9))
        gt = rng.integers(0, 1280, (frames, 15, 2)) / 4.0
        pred = np.clip(gt + rng.normal(0, 40.0, gt.shape), 0, None)
        pred[rng.random((frames, 15)) < 0.2] = -1.0
        pred[1, 1:] = -1.0
        pred[2] = -1.0
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def make_vip_case(seed: int):
    """Random VIP frames: (preds at 4x5, gts at 9x7) lists of (T, H, W) maps; 10% void (255)."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for frames in (2, 3):
        gt = rng.integers(0, 5, (frames, 9, 7))
        gt[rng.random(gt.shape) < 0.1] = 255
        preds.append(rng.integers(0, 5, (frames, 4, 5)))
        gts.append(gt)
    return preds, gts


def one_track(gt_xy, pred_xy, gt_occ, pred_occ, query_t):
    """Inputs for one video with one track: (T, 2) positions and (T,) occlusion flags."""
    gt_xy = np.asarray(gt_xy, dtype=np.float64)
    query = np.array([[[query_t, gt_xy[int(query_t), 1], gt_xy[int(query_t), 0]]]])
    return (
        query,
        np.asarray(gt_occ, dtype=bool)[None, None],
        gt_xy[None, None],
        np.asarray(pred_occ, dtype=bool)[None, None],
        np.asarray(pred_xy, dtype=np.float64)[None, None],
    )


# ---------------------------------------------------------------- TAP-Vid


def test_tapvid_threshold_is_strict():
    # Query at frame 0, "first": frame 1 alone is scored; the prediction is exactly 1 px off.
    gt = [[10.0, 20.0], [10.0, 20.0]]
    pred = [[10.0, 20.0], [11.0, 20.0]]
    m = tapvid_metrics(*one_track(gt, pred, [False, False], [False, False], 0), "first")
    assert m["pts_within_1"][0] == 0.0  # 1^2 < 1^2 is false
    for d in (2, 4, 8, 16):
        assert m[f"pts_within_{d}"][0] == 1.0
        assert m[f"jaccard_{d}"][0] == 1.0
    assert m["jaccard_1"][0] == 0.0  # TP 0 / (1 visible + 1 FP: predicted visible, not within)
    assert m["average_pts_within_thresh"][0] == pytest.approx(0.8)
    assert m["average_jaccard"][0] == pytest.approx(0.8)
    assert m["occlusion_accuracy"][0] == 1.0


def test_tapvid_first_and_strided_score_different_frames():
    # Query at frame 2. Frames 0, 1, 2 are far off, frame 3 exact; at the query frame the
    # occlusion is mispredicted (which neither mode may see).
    gt = [[50.0, 50.0]] * 4
    pred = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [50.0, 50.0]]
    case = one_track(gt, pred, [False] * 4, [False, False, True, False], 2)
    first = tapvid_metrics(*case, "first")  # frame 3 only
    strided = tapvid_metrics(*case, "strided")  # frames 0, 1, 3
    assert first["pts_within_1"][0] == 1.0
    assert first["jaccard_16"][0] == 1.0
    assert first["occlusion_accuracy"][0] == 1.0
    assert strided["pts_within_16"][0] == pytest.approx(1 / 3)
    assert strided["jaccard_16"][0] == pytest.approx(1 / (3 + 2))  # TP 1, visible 3, FP 2
    assert strided["occlusion_accuracy"][0] == 1.0
    np.testing.assert_array_equal(
        tapvid_scored_frames(case[0], 4, "first")[0, 0], [False, False, False, True]
    )
    np.testing.assert_array_equal(
        tapvid_scored_frames(case[0], 4, "strided")[0, 0], [True, True, False, True]
    )


def test_tapvid_occlusion_accuracy_and_jaccard_false_positive_from_occluded_ground_truth():
    # Query at frame 0 ("first"): frames 1..4 scored, every predicted position exact.
    #   1: visible, predicted visible          -> TP
    #   2: occluded, predicted visible         -> FP (even at the right place), OA miss
    #   3: occluded, predicted occluded        -> nothing, OA hit
    #   4: visible, predicted occluded         -> counts for pts_within, not TP, OA miss
    gt = [[5.0, 5.0]] * 5
    m = tapvid_metrics(
        *one_track(gt, gt, [False, False, True, True, False], [False, False, False, True, True], 0), "first"
    )
    assert m["occlusion_accuracy"][0] == pytest.approx(2 / 4)
    for d in (1, 2, 4, 8, 16):
        assert m[f"pts_within_{d}"][0] == 1.0  # 2 of 2 visible, occlusion prediction ignored
        assert m[f"jaccard_{d}"][0] == pytest.approx(1 / 3)  # TP 1 / (2 visible + 1 FP)
    assert m["average_jaccard"][0] == pytest.approx(1 / 3)


def test_tapvid_results_are_per_video_and_summary_weighs_videos_equally():
    case = make_tapvid_case(5, batch=3)
    m = tapvid_metrics(*case, "strided")
    assert set(m) == set(TAPVID_KEYS)
    assert all(m[k].shape == (3,) for k in TAPVID_KEYS)
    single = [tapvid_metrics(*(x[i : i + 1] for x in case), "strided") for i in range(3)]
    for k in TAPVID_KEYS:
        np.testing.assert_allclose(np.concatenate([s[k] for s in single]), m[k])
    # [videos 0-1 in one batch, video 2 alone]: mean over 3 videos, not of the 2 batch means
    parts = [tapvid_metrics(*(x[:2] for x in case), "strided"), single[2]]
    summary = tapvid_summary(parts)
    assert set(summary) == set(TAPVID_KEYS)
    assert summary["average_jaccard"] == pytest.approx(float(np.mean(m["average_jaccard"])))
    assert isinstance(summary["occlusion_accuracy"], float)


def test_tapvid_nothing_scored_is_nan_and_query_frame_rounds_half_to_even():
    gt = [[5.0, 5.0]] * 3
    m = tapvid_metrics(*one_track(gt, gt, [False] * 3, [False] * 3, 2), "first")
    assert np.isnan(m["occlusion_accuracy"][0]) and np.isnan(m["average_jaccard"][0])
    query = np.array([[[0.5, 0, 0], [1.5, 0, 0], [1.4, 0, 0]]])  # -> frames 0, 2, 1
    scored = tapvid_scored_frames(query, 3, "strided")[0]
    np.testing.assert_array_equal(scored, [[False, True, True], [True, True, False], [True, False, True]])


def test_tapvid_bad_input_is_refused():
    case = make_tapvid_case(0)
    with pytest.raises(ValueError, match="query mode"):
        tapvid_metrics(*case, "middle")
    with pytest.raises(ValueError, match="pred_tracks"):
        tapvid_metrics(*case[:4], case[4][..., :1], "first")
    bad_query = case[0].copy()
    bad_query[0, 0, 0] = 8
    with pytest.raises(ValueError, match="query frames"):
        tapvid_metrics(bad_query, *case[1:], "first")


def test_tapvid_matches_reference_values():
    # Produced by tapnet's compute_tapvid_metrics on make_tapvid_case(123).
    expected = {
        "first": {
            "occlusion_accuracy": [0.722222222222, 0.565217391304],
            "average_jaccard": [0.320793650794, 0.269268774704],
            "average_pts_within_thresh": [0.492307692308, 0.46],
            "jaccard_4": [0.277777777778, 0.125],
            "pts_within_2": [0.230769230769, 0.15],
        },
        "strided": {
            "occlusion_accuracy": [0.571428571429, 0.52380952381],
            "average_jaccard": [0.216138803057, 0.22603279229],
            "average_pts_within_thresh": [0.504, 0.478787878788],
            "jaccard_4": [0.179487179487, 0.107142857143],
            "pts_within_2": [0.2, 0.181818181818],
        },
    }
    case = make_tapvid_case(123)
    for mode, values in expected.items():
        m = tapvid_metrics(*case, mode)
        for key, want in values.items():
            np.testing.assert_allclose(m[key], want, atol=1e-11, err_msg=f"{mode} {key}")


# ---------------------------------------------------------------- JHMDB PCK


def frame_of_box(frames: int = 3):
    """(T, 15, 2) ground truth in a 30 x 40 box (normaliser 0.6 * 50 = 30): joint 0 at (0, 0),
    joint 14 at (30, 40), joint j in between at (2 j, 2 j)."""
    gt = np.zeros((frames, 15, 2))
    gt[:, :, 0] = gt[:, :, 1] = 2.0 * np.arange(15)
    gt[:, 14] = [30.0, 40.0]
    return gt


def test_pck_thresholds_are_inclusive():
    # Normaliser 0.6 * 50 = 30; joints 0-4 off by 3, 6, 9, 12, 15 px in x (0.1 .. 0.5),
    # joints 5-9 likewise in y, joints 10-14 exact.
    gt = frame_of_box()
    pred = gt.copy()
    pred[1:, :5, 0] += [3, 6, 9, 12, 15]
    pred[1:, 5:10, 1] -= [3, 6, 9, 12, 15]
    pck = jhmdb_pck([pred], [gt])
    assert list(pck) == list(JHMDB_PCK_THRESHOLDS)
    for i, a in enumerate(JHMDB_PCK_THRESHOLDS):
        assert pck[a] == pytest.approx((5 + 2 * (i + 1)) / 15)


def test_pck_skips_frame_zero():
    gt = frame_of_box()
    pred = gt.copy()
    pred[0] += 100.0  # frame 0 (the given annotation) is never scored
    assert jhmdb_pck([pred], [gt])[0.1] == 1.0
    _, scored = jhmdb_normalised_distances(pred, gt)
    assert not scored[0].any() and scored[1:].all()


def test_pck_leaves_joints_not_predicted_out_of_box_and_counts():
    # Frame 1: only joints 0 (GT (0, 0)) and 1 (GT (30, 40)) predicted; the others, far away
    # at (300, 400), are not predicted (x < 0). Box of joints 0 and 1: normaliser 30, so
    # joint 0, 6 px off, scores 0.2 (it would be 0.02 if the far joints were in the box).
    # Frame 2: every joint predicted exactly.
    gt = np.full((3, 15, 2), [300.0, 400.0])
    gt[:, 0] = [0.0, 0.0]
    gt[:, 1] = [30.0, 40.0]
    pred = gt.copy()
    pred[1, 0, 0] += 6.0
    pred[1, 2:] = -1.0
    per_joint = jhmdb_pck_per_joint([pred], [gt])
    assert per_joint[0.1][0] == 0.5 and per_joint[0.2][0] == 1.0  # joint 0: frames 1, 2
    np.testing.assert_array_equal(per_joint[0.1][2:], 1.0)  # one entry each: not 1/2
    assert jhmdb_pck([pred], [gt])[0.1] == pytest.approx(14.5 / 15)
    # A negative y alone does not mark a joint as not predicted (the scorer tests x).
    pred_y = gt.copy()
    pred_y[1:, 3, 1] = -1.0
    assert jhmdb_normalised_distances(pred_y, gt)[1][1:, 3].all()


def test_pck_is_per_joint_then_mean_pooled_over_videos():
    # Joints 0 and 2 predicted in frames 1-4, joint 1 in frame 1 only; GT 0 (0, 0), 1 (15, 20),
    # 2 (30, 40): normaliser 30 in every frame. Joint 0 is 30 px off (never correct),
    # joints 1 and 2 exact. Per joint 0, 1, 1 -> mean 2/3 (pooling all entries: 5/9).
    gt = np.zeros((5, 15, 2))
    gt[:, 1] = [15.0, 20.0]
    gt[:, 2] = [30.0, 40.0]
    pred = np.full_like(gt, -1.0)
    pred[:, [0, 2]] = gt[:, [0, 2]]
    pred[1:, 0, 0] += 30.0
    pred[1, 1] = gt[1, 1]
    assert jhmdb_pck([pred], [gt])[0.5] == pytest.approx(2 / 3)
    # Pooled over videos: joint 1 correct once in video A, then 0 of 3 in video B -> 1/4
    # (a mean of per-video fractions would give 1/2).
    pred_b = pred.copy()
    pred_b[1:4, 1] = gt[1:4, 1] + [30.0, 0.0]
    per_joint = jhmdb_pck_per_joint([pred, pred_b], [gt, gt])
    assert per_joint[0.5][1] == pytest.approx(1 / 4)


def test_pck_zero_normaliser_counts_as_a_miss():
    gt = frame_of_box(2)
    pred = np.full_like(gt, -1.0)
    pred[1, 4] = gt[1, 4]  # the only predicted joint: box of one point, normaliser 0
    pred[1, 5] = -1.0
    per_joint = jhmdb_pck_per_joint([pred], [gt])
    assert per_joint[0.5][4] == 0.0
    assert np.isnan(per_joint[0.5][0])  # no entries: left out of the mean
    assert jhmdb_pck([pred], [gt])[0.5] == 0.0


def test_pck_bad_input_is_refused():
    gt = frame_of_box()
    with pytest.raises(ValueError, match="shape"):
        jhmdb_pck([gt[:2]], [gt])
    with pytest.raises(ValueError, match="videos"):
        jhmdb_pck([gt], [gt, gt])
    with pytest.raises(ValueError, match="nothing to score"):
        jhmdb_pck([np.full_like(gt, -1.0)], [gt])


def test_pck_matches_reference_values():
    # Produced by videowalk's eval_pck.py (feat_res set to 1 and 1x1 images so that the
    # predictions are read in pixels) on make_pck_case(321), divided by 100.
    expected = {
        0.1: 0.215238095238, 0.2: 0.47582010582, 0.3: 0.748095238095, 0.4: 0.932804232804, 0.5: 0.975661375661
    }
    pck = jhmdb_pck(*make_pck_case(321))
    for a, want in expected.items():
        assert pck[a] == pytest.approx(want, abs=1e-11)


# ---------------------------------------------------------------- VIP mIoU


def test_miou_ignores_classes_absent_from_both():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 1], [1, 1]])
    result = vip_miou([pred], [gt])
    assert result["IoU"][0] == pytest.approx(1 / 2)  # 1 / (2 + 1 - 1)
    assert result["IoU"][1] == pytest.approx(2 / 3)  # 2 / (2 + 3 - 2)
    assert len(result["IoU"]) == 20 and all(np.isnan(result["IoU"][2:]))
    assert result["mIoU"] == pytest.approx(7 / 12)


def test_miou_counts_a_class_that_is_only_predicted():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])
    result = vip_miou([pred], [gt])
    assert result["IoU"][2] == 0.0
    assert result["mIoU"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_miou_pools_one_confusion_over_frames():
    # Pooled: C[1,1] = 4, C[1,0] = 1, C[0,0] = 3 -> IoU 3/4 and 4/5, mIoU 0.775.
    # (Averaging per-frame mIoUs would give (1 + 0.375) / 2.)
    gts = [np.array([[1, 1, 1, 1]]), np.array([[0, 0, 0, 1]])]
    preds = [np.array([[1, 1, 1, 1]]), np.array([[0, 0, 0, 0]])]
    assert vip_miou(preds, gts)["mIoU"] == pytest.approx(0.775)
    assert vip_miou([np.stack(preds)], [np.stack(gts)])["mIoU"] == pytest.approx(0.775)


def test_miou_ignores_void_ground_truth_whatever_is_predicted():
    gt = np.array([[0, 1, 255, 255]])
    pred = np.array([[0, 1, 1, 3]])
    np.testing.assert_array_equal(vip_confusion(pred, gt), vip_confusion(pred[:, :2], gt[:, :2]))
    assert vip_miou([pred], [gt])["mIoU"] == 1.0


def test_vip_and_jhmdb_sizes_come_from_the_readers():
    gt = np.zeros((2, 2), dtype=np.int64)
    assert vip_confusion(gt, gt).shape == (len(VIP_CLASSES), len(VIP_CLASSES))
    assert len(vip_miou([gt], [gt])["IoU"]) == len(VIP_CLASSES)
    keypoints = np.zeros((3, len(JHMDB_JOINTS), 2))
    dist, scored = jhmdb_normalised_distances(keypoints, keypoints)
    assert dist.shape == scored.shape == (3, len(JHMDB_JOINTS))
    with pytest.raises(ValueError, match=f"{len(JHMDB_JOINTS)}, 2"):
        jhmdb_normalised_distances(keypoints[:, 1:], keypoints[:, 1:])


def test_miou_bad_input_is_refused():
    gt = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="same"):
        vip_miou([np.zeros((2, 2), dtype=np.int64)], [gt])
    with pytest.raises(ValueError, match="predicted ids"):
        vip_miou([np.full((4, 4), 20)], [gt])
    with pytest.raises(ValueError, match="entry 1"):
        vip_miou([gt, gt[:2]], [gt, gt])


def test_resize_nearest_picks_pixels_like_pil_nearest():
    ids = np.array([[0, 1, 2, 3]])
    np.testing.assert_array_equal(resize_nearest(ids, (1, 2)), [[1, 3]])  # centres 1.0, 3.0
    np.testing.assert_array_equal(resize_nearest(np.array([[4, 7], [9, 2]]), (4, 4)),
                                  np.kron([[4, 7], [9, 2]], np.ones((2, 2), dtype=int)))
    rng = np.random.default_rng(0)
    sizes = [((4, 5), (9, 7)), ((6, 7), (9, 3)), ((40, 40), (480, 854)), ((97, 61), (33, 120))]
    for (h, w), (out_h, out_w) in sizes:
        ids = rng.integers(0, 20, (h, w)).astype(np.uint8)
        ours = resize_nearest(ids, (out_h, out_w))
        pil = np.array(Image.fromarray(ids).resize((out_w, out_h), Image.NEAREST))
        np.testing.assert_array_equal(ours, pil, err_msg=f"{(h, w)} -> {(out_h, out_w)}")
    stack = rng.integers(0, 20, (3, 6, 7))
    resized = resize_nearest(stack, (9, 3))
    assert resized.shape == (3, 9, 3) and resized.dtype == stack.dtype
    assert set(np.unique(resized)) <= set(np.unique(stack))  # ids copied, never mixed


def test_miou_matches_reference_values():
    # Produced by videowalk's eval_vip.py (predictions saved as PNGs at 4x5, resized by
    # the scorer with PIL NEAREST to the 9x7 ground truth) on make_vip_case(99).
    preds, gts = make_vip_case(99)
    preds = [resize_nearest(p, g.shape[-2:]) for p, g in zip(preds, gts)]
    assert vip_miou(preds, gts)["mIoU"] == pytest.approx(0.12241696477465569, abs=1e-12)
