"""propagate.visualize: overlays keep the background, colour each object, and files round-trip."""
import cv2
import numpy as np
import pytest
from PIL import Image

from datasets.palette import davis_palette
from propagate.video_writer import write_video
from propagate.visualize import (
    contact_sheet,
    draw_skeleton,
    draw_tracks,
    overlay_mask,
    overlay_parts,
    save_png,
)


def test_overlay_mask_blends_objects_and_leaves_background():
    frame = np.full((40, 60, 3), 100, np.uint8)
    ids = np.zeros((40, 60), np.uint8)
    ids[10:30, 10:30] = 1
    out = overlay_mask(frame, ids, alpha=0.5)
    assert np.array_equal(out[0, 50], frame[0, 50])                    # background untouched
    want = np.round(0.5 * 100 + 0.5 * davis_palette()[1].astype(np.float32)).astype(np.uint8)
    assert np.array_equal(out[20, 20], want)                           # inside: half palette colour
    assert np.array_equal(out[10, 20], davis_palette()[1])             # the outline in the object's colour


def test_overlay_parts_colours_each_class_the_same_everywhere():
    frame = np.zeros((8, 8, 3), np.uint8)
    parts = np.zeros((8, 8), np.int64)
    parts[:4] = 3
    out = overlay_parts(frame, parts)
    assert (out[4:] == 0).all() and (out[:4] > 0).any()
    assert np.array_equal(out[0, 0], out[3, 7])


def test_contact_sheet_tiles_in_rows():
    images = [np.full((20, 40, 3), i * 30, np.uint8) for i in range(5)]
    sheet = contact_sheet(images, columns=3, width=40)
    assert sheet.shape == (2 * 20, 3 * 40, 3)
    assert (sheet[20:, 80:] == 255).all()                              # the empty sixth tile stays white
    with pytest.raises(ValueError):
        contact_sheet([])


def test_skeleton_skips_joints_not_predicted():
    frame = np.zeros((30, 30, 3), np.uint8)
    keypoints = np.array([[5.0, 5.0], [-1.0, -1.0], [25.0, 25.0]])
    out = draw_skeleton(frame, keypoints, parents=[0, 0, 0], colour=(255, 0, 0))
    assert out[5, 5, 0] > 0 and out[25, 25, 0] > 0
    assert out[15, 15].sum() > 0                                       # the bone 2 -> 0
    assert (frame == 0).all()                                          # drawn on a copy


def test_tracks_are_filled_when_visible_and_hollow_when_occluded():
    frame = np.zeros((40, 40, 3), np.uint8)
    tracks = np.array([[[10.5, 10.5], [10.5, 10.5]], [[30.5, 30.5], [30.5, 30.5]]])
    occluded = np.array([[False, False], [False, True]])
    out = draw_tracks(frame, tracks, occluded, t=1, radius=3)
    assert out[10, 10].sum() > 0                                       # dot centre (corner -> centre)
    assert out[30, 30].sum() == 0 and out[30, 33].sum() > 0            # hollow circle


def test_png_and_video_files_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    path = save_png(tmp_path / "a" / "x.png", rgb)
    assert np.array_equal(np.asarray(Image.open(path)), rgb)
    frames = [np.full((17, 23, 3), 40 * i, np.uint8) for i in range(4)]
    video = write_video(tmp_path / "v.mp4", frames, fps=5)
    capture = cv2.VideoCapture(str(video))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (16, 22, 3)                              # even sizes for the codec
        count += 1
    assert count == 4
    assert not list(tmp_path.glob(".*tmp*"))                           # written atomically
