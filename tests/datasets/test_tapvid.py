"""TAP-Vid reader: query sampling rules, coordinate conventions, the three file kinds, errors."""
import pickle

import numpy as np
import pytest

from datasets.davis import DatasetError
from datasets.synthetic import render_scene, sequence_rng
from datasets.synthetic_tasks import generate_tapvid, scene_point_tracks
from datasets.tapvid import (
    TapVidDataset,
    TapVidVideo,
    load_tapvid_pickle,
    resolution_category,
    sample_queries_first,
    sample_queries_strided,
)

# Hand-made tracks: 4 tracks over 12 frames; x = 10 * track + t, y = 100 + t.
OCCLUDED = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # always visible
    [1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1],   # first seen at t=3; visible at 7, not 5 or 10
    [1] * 12,                               # never visible: no query
    [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0],   # visible at 5 and 10 (and 11)
], dtype=bool)
POINTS = np.stack(np.broadcast_arrays(10.0 * np.arange(4)[:, None] + np.arange(12)[None],
                                      100.0 + np.arange(12)[None] + 0 * np.arange(4)[:, None]), axis=-1)


def test_first_mode_queries_each_track_at_its_first_visible_frame():
    out = sample_queries_first(OCCLUDED, POINTS)
    np.testing.assert_array_equal(out["track_ids"], [0, 1, 3])
    np.testing.assert_array_equal(out["query_points"], [[0, 100, 0], [3, 103, 13], [5, 105, 35]])  # t, y, x
    np.testing.assert_array_equal(out["target_points"], POINTS[[0, 1, 3]])
    np.testing.assert_array_equal(out["occluded"], OCCLUDED[[0, 1, 3]])


def test_strided_mode_queries_every_fifth_frame_where_visible():
    out = sample_queries_strided(OCCLUDED, POINTS)
    # t=0: track 0; t=5: tracks 0, 3; t=10: tracks 0, 3 (track 1 is occluded at 0, 5 and 10).
    np.testing.assert_array_equal(out["track_ids"], [0, 0, 3, 0, 3])
    np.testing.assert_array_equal(out["query_points"][:, 0], [0, 5, 5, 10, 10])
    np.testing.assert_array_equal(out["query_points"][2], [5, 105, 35])
    np.testing.assert_array_equal(out["target_points"][2], POINTS[3])
    assert out["occluded"].shape == (5, 12)
    assert not out["occluded"][np.arange(5), out["query_points"][:, 0].astype(int)].any()


def _record(width=128, height=64, frames=6):
    video = np.zeros((frames, height, width, 3), np.uint8)
    # Pixel (row 20, col 10) has its centre at (10.5, 20.5) in the corner convention.
    points = np.tile(np.array([[(10 + 0.5) / width, (20 + 0.5) / height]], np.float32), (1, frames, 1))
    points = points.reshape(1, frames, 2)
    return {"video": video, "points": points, "occluded": np.zeros((1, frames), bool)}


def test_points_scale_to_256_in_the_corner_convention(tmp_path):
    path = tmp_path / "one.pkl"
    path.write_bytes(pickle.dumps({"v": _record()}))
    dataset = TapVidDataset(path, query_mode="first")
    assert dataset.kind == "davis" and dataset.category == "256x256"
    sample = next(iter(dataset))
    assert sample.frames.shape == (6, 256, 256, 3) and sample.resolution == (256, 256)
    # x: 10.5 / 128 * 256 = 21 (centre of 256-pixel 20); y: 20.5 / 64 * 256 = 82.
    np.testing.assert_allclose(sample.target_points[0, 0], [21.0, 82.0])
    np.testing.assert_allclose(sample.query_points[0], [0, 82.0, 21.0])
    native = next(iter(TapVidDataset(path, resolution=None)))
    assert native.frames.shape == (6, 64, 128, 3)
    np.testing.assert_allclose(native.target_points[0, 0], [10.5, 20.5])
    assert resolution_category(None) == "native" and resolution_category((512, 512)) == "512x512"


def test_generated_sets_of_each_kind_read_back(tmp_path):
    kwargs = dict(num_videos=2, num_frames=8, size=(64, 96), num_points=16, max_objects=2, seed=4)
    davis = TapVidDataset(generate_tapvid(tmp_path / "d", kind="davis", **kwargs), query_mode="strided")
    stacking = TapVidDataset(generate_tapvid(tmp_path / "r", kind="rgb_stacking", **kwargs))
    kinetics = TapVidDataset(generate_tapvid(tmp_path / "k", kind="kinetics", **kwargs))
    assert (davis.kind, stacking.kind, kinetics.kind) == ("davis", "rgb_stacking", "kinetics")
    assert len(kinetics.files) == 2
    videos = {kind: list(ds.videos()) for kind, ds in (("d", davis), ("r", stacking), ("k", kinetics))}
    assert [v.name for v in videos["d"]] == ["synth-000", "synth-001"]
    assert isinstance(videos["k"][0].video, list) and isinstance(videos["k"][0].video[0], bytes)
    for a, b, c in zip(videos["d"], videos["r"], videos["k"]):
        assert a.points.shape == (16, 8, 2) and a.points.dtype == np.float32
        assert ((a.points >= -0.5) & (a.points <= 1.5)).all()
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.points, c.points)
        assert (~a.occluded).any(axis=1).all()  # every track visible somewhere
        error = np.abs(c.read_frames().astype(int) - a.read_frames().astype(int)).mean()
        assert error < 6  # JPEG-coded frames
    sample = next(iter(davis))
    assert sample.frames.shape == (8, 256, 256, 3) and sample.query_mode == "strided"
    assert set(np.unique(sample.query_points[:, 0])) <= {0.0, 5.0}


def test_generated_tracks_follow_their_surface():
    """A visible point shows the same surface (object id or background) in every visible frame."""
    rng = sequence_rng(0, 0)
    scene = render_scene(rng, 10, (64, 96), 3)
    points, occluded = scene_point_tracks(scene, 40, rng)
    assert points.shape == (40, 10, 2) and occluded.shape == (40, 10)
    assert occluded.any() and (~occluded).any()
    cols = np.round(points[..., 0]).astype(int).clip(0, 95)
    rows = np.round(points[..., 1]).astype(int).clip(0, 63)
    for track in range(40):
        seen = np.flatnonzero(~occluded[track])
        surfaces = scene.masks[seen, rows[track, seen], cols[track, seen]]
        assert len(set(surfaces.tolist())) == 1


def test_same_seed_gives_identical_files(tmp_path):
    kwargs = dict(num_videos=1, num_frames=5, size=(48, 64), num_points=8, seed=9)
    a = generate_tapvid(tmp_path / "a", **kwargs).read_bytes()
    b = generate_tapvid(tmp_path / "b", **kwargs).read_bytes()
    c = generate_tapvid(tmp_path / "c", **{**kwargs, "seed": 10}).read_bytes()
    assert a == b and a != c


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="absent.pkl"):
        TapVidDataset(tmp_path / "absent.pkl")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="garbage.pkl"):
        load_tapvid_pickle(garbage)
    record = _record()
    del record["occluded"]
    (tmp_path / "missing_key.pkl").write_bytes(pickle.dumps({"v": record}))
    with pytest.raises(DatasetError, match="missing_key.pkl.*occluded"):
        TapVidDataset(tmp_path / "missing_key.pkl")
    record = _record()
    record["points"] = record["points"][:, :4]
    (tmp_path / "short.pkl").write_bytes(pickle.dumps([record]))
    with pytest.raises(DatasetError, match="short.pkl.*points"):
        TapVidDataset(tmp_path / "short.pkl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        TapVidDataset(tmp_path / "empty")
    bad = TapVidVideo(name="x", video=[b"\xff\xd8 broken"], points=np.zeros((1, 1, 2), np.float32),
                      occluded=np.zeros((1, 1), bool), source=tmp_path / "shard.pkl")
    with pytest.raises(DatasetError, match="shard.pkl.*frame 0"):
        bad.read_frames()
    with pytest.raises(ValueError, match="query_mode"):
        TapVidDataset(tmp_path / "short.pkl", query_mode="last")
