"""DAVIS-2017 semi-supervised J&F: hand-computed cases for every rule of the official scorer."""

import numpy as np
import pytest
from PIL import Image

from datasets.davis import VOID_ID, count_objects
from propagate.metrics import (
    davis_boundary_map,
    davis_boundary_radius,
    davis_disk,
    davis_sequence_scores,
    davis_summary,
    db_boundary_f,
    db_iou,
    db_statistics,
    score_davis_folder,
)


def box(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ---------------------------------------------------------------- J


def test_iou_of_overlapping_squares():
    gt = box((10, 10), 2, 6, 2, 6)[None]  # 16 pixels
    pred = box((10, 10), 4, 8, 4, 8)[None]  # 16 pixels, 4 shared
    np.testing.assert_allclose(db_iou(gt, pred), [4 / 28])


def test_iou_empty_union_is_one_and_one_sided_empty_is_zero():
    empty = np.zeros((1, 5, 5), dtype=bool)
    full = np.ones((1, 5, 5), dtype=bool)
    assert db_iou(empty, empty).tolist() == [1.0]
    assert db_iou(full, empty).tolist() == [0.0]
    assert db_iou(empty, full).tolist() == [0.0]


# ---------------------------------------------------------------- boundaries and F


def test_boundary_map_of_small_mask_with_last_row_and_column_rules():
    seg = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1],
        ]
    )
    # differs from E, S or SE neighbour; last row compares with E only, last column with
    # S only, bottom-right never (so (3,2), (3,3), (2,4) are not boundary pixels).
    expected = np.array(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 1, 1, 1],
            [1, 1, 0, 0, 0],
            [0, 1, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(davis_boundary_map(seg), expected.astype(bool))
    assert not davis_boundary_map(np.ones((4, 6))).any()  # a full mask has no boundary


def test_disk_is_skimage_disk():
    cross = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    np.testing.assert_array_equal(davis_disk(1), cross)
    np.testing.assert_array_equal(
        davis_disk(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )
    d8 = davis_disk(8)
    assert d8.shape == (17, 17)
    assert d8[8 + 6, 8 + 5] == 1  # 36 + 25 <= 64
    assert d8[8 + 6, 8 + 6] == 0  # 72 > 64
    assert d8[0, 8] == 1 and d8[0, 7] == 0  # 64 <= 64, 65 > 64


def test_boundary_radius_at_davis_sizes():
    assert davis_boundary_radius(480, 854) == 8  # ceil(7.84)
    assert davis_boundary_radius(480, 910) == 9  # bike-packing: ceil(8.23)
    assert davis_boundary_radius(480, 1152) == 10  # shooting: ceil(9.98)
    assert davis_boundary_radius(480, 854, bound_th=3) == 3  # >= 1 means pixels


@pytest.mark.parametrize("offset, expected_f", [(0, 1.0), (8, 1.0), (9, 0.0)])
def test_f_of_shifted_edge_at_davis_size(offset, expected_f):
    # Left half-planes: each boundary is one full column, so a shift within the 8-pixel
    # radius matches every boundary pixel and one pixel further matches none.
    gt = box((480, 854), 0, 480, 0, 400)[None]
    pred = box((480, 854), 0, 480, 0, 400 + offset)[None]
    np.testing.assert_allclose(db_boundary_f(gt, pred), [expected_f])


def test_f_of_diagonal_offset_uses_a_disk_not_a_square():
    # A single pixel has the 4 boundary pixels {y-1, y} x {x-1, x}. Offsetting by (6, 6)
    # at radius 8 leaves 3 of 4 pairs within distance 8 on each side: (5,5), (5,6), (6,5)
    # match but (6,6) (distance 8.49) does not. P = R = 3/4, F = 3/4.
    gt = box((480, 854), 100, 101, 100, 101)
    pred = box((480, 854), 106, 107, 106, 107)
    assert float(db_boundary_f(gt, pred)) == pytest.approx(0.75)
    assert db_boundary_f(gt[None], pred[None]).shape == (1,)


def test_f_empty_cases():
    empty = np.zeros((1, 30, 40), dtype=bool)
    obj = box((30, 40), 5, 15, 5, 20)[None]
    assert db_boundary_f(obj, empty).tolist() == [0.0]  # P = 1, R = 0
    assert db_boundary_f(empty, obj).tolist() == [0.0]  # P = 0, R = 1
    assert db_boundary_f(empty, empty).tolist() == [1.0]
    full = np.ones((1, 30, 40), dtype=bool)  # no boundary pixels either
    assert db_boundary_f(full, empty).tolist() == [1.0]


# ---------------------------------------------------------------- statistics


def test_decay_bins_on_ten_frames():
    # T = 10: bin edges round(linspace(1, 10, 5)) - 1 = 0, 2, 5, 7, 9 -> first bin
    # frames 0..2, last bin frames 7..9. Frames 3 and 6 would change the result if
    # the bins were wrong.
    s = np.array([1.0, 1.0, 1.0, 0.0, 0.3, 0.3, 0.0, 0.2, 0.4, 0.6])
    mean, recall, decay = db_statistics(s)
    assert mean == pytest.approx(s.mean())
    assert recall == pytest.approx(0.4)  # 1, 1, 1, 0.6
    assert decay == pytest.approx(1.0 - 0.4)


def test_decay_bin_edges_round_ties_up():
    # T = 7: linspace(1, 7, 5) = 1, 2.5, 4, 5.5, 7 -> edges 0, 2, 3, 5, 6 (2.5 -> 3, not the
    # round-half-to-even 2), so the first bin is frames 0..2.
    s = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert db_statistics(s)[2] == pytest.approx(2 / 3)


def test_recall_threshold_is_strict():
    assert db_statistics(np.array([0.5, 0.5, 0.51, 1.0]))[1] == pytest.approx(0.5)


def test_decay_beyond_256_frames_uses_the_intended_bins():
    # T = 300: edges 0, 75, 150, 224, 299 -> decay = mean(s[0:76]) - mean(s[224:300]).
    s = np.zeros(300)
    s[:76] = 1.0
    assert db_statistics(s)[2] == pytest.approx(1.0)


def test_single_frame_statistics():
    assert db_statistics(np.array([0.7])) == pytest.approx((0.7, 1.0, 0.0))


# ---------------------------------------------------------------- sequences


def moving_box_sequence(T=6, shape=(24, 32)):
    """(T, H, W) ids: object 1 a box moving right, object 2 a fixed box."""
    ids = np.zeros((T, *shape), dtype=np.uint8)
    for t in range(T):
        ids[t, 2:10, 2 + t : 10 + t] = 1
        ids[t, 14:20, 20:28] = 2
    return ids


def test_first_and_last_frames_are_excluded():
    gt = moving_box_sequence(T=6)
    pred = gt.copy()
    scores = davis_sequence_scores(gt, pred)
    assert scores["num_objects"] == 2 and scores["num_scored_frames"] == 4
    pred[0] = 0  # wrong first frame
    pred[-1] = 2  # wrong last frame, whole image one object
    pred[-1, 0, 0] = 9  # even an id the ground truth lacks is never read there
    again = davis_sequence_scores(gt, pred)
    for k in (1, 2):
        assert again["objects"][k]["J"].tolist() == [1.0] * 4
        assert again["objects"][k]["F"].tolist() == [1.0] * 4
        assert again["objects"][k]["J-Mean"] == 1.0
    pred[1] = 0  # a scored frame does count
    assert davis_sequence_scores(gt, pred)["objects"][1]["J"].tolist() == [0.0, 1.0, 1.0, 1.0]


def test_prediction_with_fewer_objects_is_zero_padded():
    gt = moving_box_sequence()
    pred = np.where(gt == 1, 1, 0)  # object 2 never predicted
    scores = davis_sequence_scores(gt, pred)
    assert scores["objects"][1]["J-Mean"] == 1.0
    obj2 = scores["objects"][2]
    assert obj2["J"].tolist() == [0.0] * 4 and obj2["F"].tolist() == [0.0] * 4
    assert (obj2["J-Recall"], obj2["F-Mean"]) == (0.0, 0.0)


def test_prediction_with_more_objects_is_an_error():
    gt = moving_box_sequence()
    pred = gt.copy()
    pred[2, 0, 0] = 3
    with pytest.raises(ValueError, match="id 3.*only 2 object"):
        davis_sequence_scores(gt, pred, sequence="boxes")
    pred[2, 0, 0] = 255  # void is not a valid prediction id either
    with pytest.raises(ValueError, match="boxes"):
        davis_sequence_scores(gt, pred, sequence="boxes")


def test_object_count_comes_from_frame_zero():
    gt = moving_box_sequence()
    gt[0][gt[0] == 2] = 0  # object 2 absent in frame 0: only 1 object is scored
    gt[3, 0:2, 0:2] = 5  # ids > N later on are ignored
    scores = davis_sequence_scores(gt, np.where(gt == 1, 1, 0))
    assert list(scores["objects"]) == [1]


def test_object_count_is_the_readers_rule():
    frame = np.array([[0, 3, VOID_ID], [1, 0, VOID_ID]], dtype=np.uint8)
    assert count_objects(frame) == 3  # id 2 is missing from frame 0 but still an object
    assert count_objects(np.full((2, 2), VOID_ID, dtype=np.uint8)) == 0
    gt = np.stack([frame] * 3)
    scores = davis_sequence_scores(gt, np.zeros_like(gt))
    assert scores["num_objects"] == count_objects(frame) and list(scores["objects"]) == [1, 2, 3]


def test_void_in_ground_truth_is_background():
    T, shape = 3, (10, 10)
    gt = np.zeros((T, *shape), dtype=np.uint8)
    gt[:, 2:6, 2:6] = 1  # 16 pixels
    gt[:, 0, :] = 255  # void row, not an object even in frame 0
    pred = gt.copy()
    pred[pred == 255] = 1  # predicting the object on void pixels is a false positive
    scores = davis_sequence_scores(gt, pred)
    assert list(scores["objects"]) == [1]
    np.testing.assert_allclose(scores["objects"][1]["J"], [16 / 26])
    pred[pred == 1] = 0
    pred[:, 2:6, 2:6] = 1  # the void left as background: perfect
    assert davis_sequence_scores(gt, pred)["objects"][1]["J-Mean"] == 1.0


def test_summary_averages_over_objects_not_sequences():
    one = moving_box_sequence()
    one[one == 2] = 0  # 1 object, predicted perfectly
    three = moving_box_sequence()
    three[:, 20:23, 2:6] = 3  # 3 objects, none predicted
    scores = {
        "one": davis_sequence_scores(one, one),
        "three": davis_sequence_scores(three, np.zeros_like(three)),
    }
    summary = davis_summary(scores)
    assert summary["num_objects"] == 4
    assert summary["J-Mean"] == pytest.approx(0.25)  # per-sequence averaging would give 0.5
    assert summary["F-Mean"] == pytest.approx(0.25)
    assert summary["J&F-Mean"] == pytest.approx(0.25)
    assert summary["J-Recall"] == pytest.approx(0.25)
    assert sorted(summary["per_object"]) == ["one_1", "three_1", "three_2", "three_3"]
    assert summary["per_sequence"]["one"]["J&F-Mean"] == 1.0
    assert summary["per_sequence"]["three"]["J-Mean"] == 0.0
    assert summary["per_sequence"]["three"]["num_objects"] == 3


def test_summary_without_objects_is_an_error():
    empty = np.zeros((3, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="no objects"):
        davis_summary({"empty": davis_sequence_scores(empty, empty)})


# ---------------------------------------------------------------- folders


def write_png(ids, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
    image.save(path)


def make_davis_root(root, sequences):
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
    for seq, ids in sequences.items():
        for t, frame in enumerate(ids):
            write_png(frame, root / "Annotations" / "480p" / seq / f"{t:05d}.png")


def test_score_folder_reads_like_the_scorer(tmp_path):
    gt = moving_box_sequence(T=5)
    make_davis_root(tmp_path / "davis", {"boxes": gt})
    pred = gt.copy()
    pred[2] = np.roll(pred[2], 3, axis=1)
    for t in (1, 2, 3):  # frames 0 and 4 are never read, so they need not exist
        write_png(pred[t], tmp_path / "results" / "boxes" / f"{t:05d}.png")
    summary = score_davis_folder(tmp_path / "davis", tmp_path / "results")
    expected = davis_summary({"boxes": davis_sequence_scores(gt, pred)})
    assert summary == expected
    assert 0 < summary["J-Mean"] < 1

    (tmp_path / "results" / "boxes" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match="00002.png"):
        score_davis_folder(tmp_path / "davis", tmp_path / "results")


def test_score_folder_refuses_rgb_predictions(tmp_path):
    gt = moving_box_sequence(T=3)
    make_davis_root(tmp_path / "davis", {"boxes": gt})
    path = tmp_path / "results" / "boxes" / "00001.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((*gt.shape[1:], 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match="00001.png.*RGB"):
        score_davis_folder(tmp_path / "davis", tmp_path / "results")


def test_real_davis_sequence_matches_official_scorer(tmp_path, davis_mini):
    root = davis_mini
    seq = "dog-agility"
    gt_files = sorted((root / "Annotations" / "480p" / seq).glob("*.png"))
    for path in gt_files[1:-1]:  # shifted 5 px down and 7 px left
        ids = np.array(Image.open(path))
        shifted = np.zeros_like(ids)
        shifted[5:, :-7] = ids[:-5, 7:]
        write_png(shifted, tmp_path / seq / path.name)
    summary = score_davis_folder(root, tmp_path, sequences=[seq])
    for key, value in OFFICIAL_DOG_AGILITY_SHIFT.items():
        assert summary[key] == pytest.approx(value, abs=1e-6), key


# davis2017-evaluation (semi-supervised) on dog-agility with GT frames shifted by (5, -7).
OFFICIAL_DOG_AGILITY_SHIFT = {
    "J&F-Mean": 0.8591713041518603,
    "J-Mean": 0.8280092638040387,
    "J-Recall": 1.0,
    "J-Decay": -0.12596028891428435,
    "F-Mean": 0.8903333444996818,
    "F-Recall": 1.0,
    "F-Decay": 0.09768767504270459,
}
