"""JHMDB reader on generated data: layout, 1-based .mat convention, split-file order, errors."""
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datasets.davis import DatasetError
from datasets.jhmdb import JHMDB_JOINTS, JhmdbDataset, read_joint_positions
from datasets.synthetic import object_layer, render_scene, sequence_rng
from datasets.synthetic_tasks import JHMDB_SPLIT, generate_jhmdb, scene_keypoints

SIZE = (96, 128)
FRAMES = 6


@pytest.fixture(scope="module")
def jhmdb_root(tmp_path_factory):
    return generate_jhmdb(tmp_path_factory.mktemp("jhmdb") / "set", num_videos=2, num_frames=FRAMES,
                          size=SIZE, max_objects=2, seed=3)


def test_reads_generated_set_with_zero_based_keypoints(jhmdb_root):
    dataset = JhmdbDataset(jhmdb_root / JHMDB_SPLIT, root=jhmdb_root)
    assert len(dataset) == 2 and len(JHMDB_JOINTS) == 15
    video = dataset["synth/synth-000"]
    assert video.num_frames == FRAMES and video.size == SIZE
    assert [p.name for p in video.frame_paths] == [f"{i:05d}.png" for i in range(1, FRAMES + 1)]
    frames = video.read_frames()
    assert frames.shape == (FRAMES, *SIZE, 3) and frames.dtype == np.uint8
    pos_img = scipy.io.loadmat(video.joints_file)["pos_img"]
    assert pos_img.shape == (2, 15, FRAMES)
    np.testing.assert_allclose(video.keypoints, np.transpose(pos_img, (2, 1, 0)) - 1)
    # The generator's geometry: same seed -> same scene; every joint lies on the figure.
    rng = sequence_rng(3, 0)
    num_objects = int(rng.integers(1, 3))
    scene = render_scene(rng, FRAMES, SIZE, num_objects)
    np.testing.assert_allclose(video.keypoints, scene_keypoints(scene, num_objects, rng), atol=1e-9)
    np.testing.assert_array_equal(frames, scene.frames)  # PNG frames are lossless
    for t in range(FRAMES):
        _, coverage = object_layer(scene, t, num_objects, SIZE)
        cols, rows = np.round(video.keypoints[t]).astype(int).T
        on_frame = (cols >= 0) & (cols < SIZE[1]) & (rows >= 0) & (rows < SIZE[0])
        assert coverage[rows[on_frame], cols[on_frame]].all()
    identity = dataset.identity()
    assert identity["num_videos"] == 2 and identity["num_frames"] == 2 * FRAMES


def test_split_file_columns_in_either_order_and_relative_to_its_folder(jhmdb_root, tmp_path):
    lines = (jhmdb_root / JHMDB_SPLIT).read_text().splitlines()
    swapped = jhmdb_root / "swapped.txt"
    swapped.write_text("# comment\n\n" + "".join(" ".join(line.split()[::-1]) + "\n" for line in lines))
    a = JhmdbDataset(jhmdb_root / JHMDB_SPLIT, root=jhmdb_root)
    b = JhmdbDataset(swapped)  # relative paths from the split file's folder
    assert [v.name for v in a] == [v.name for v in b]
    np.testing.assert_array_equal(a[1].keypoints, b[1].keypoints)


def test_pose_shorter_than_frames_cuts_the_video_longer_is_an_error(jhmdb_root, tmp_path):
    video = JhmdbDataset(jhmdb_root / JHMDB_SPLIT, root=jhmdb_root)[0]
    frames_dir = video.frame_paths[0].parent
    short = tmp_path / "short.mat"
    scipy.io.savemat(short, {"pos_img": np.ones((2, 15, 4))})
    (tmp_path / "a.txt").write_text(f"{frames_dir} {short}\n")
    cut = JhmdbDataset(tmp_path / "a.txt")[0]
    assert cut.num_frames == 4 and cut.keypoints.shape == (4, 15, 2)
    np.testing.assert_array_equal(cut.keypoints, 0.0)  # 1-based ones -> 0
    long = tmp_path / "long.mat"
    scipy.io.savemat(long, {"pos_img": np.ones((2, 15, FRAMES + 1))})
    (tmp_path / "b.txt").write_text(f"{frames_dir} {long}\n")
    with pytest.raises(DatasetError, match="long.mat"):
        JhmdbDataset(tmp_path / "b.txt")


def test_errors_name_the_file(jhmdb_root, tmp_path):
    with pytest.raises(DatasetError, match="missing.txt"):
        JhmdbDataset(tmp_path / "missing.txt")
    frames_dir = JhmdbDataset(jhmdb_root / JHMDB_SPLIT, root=jhmdb_root)[0].frame_paths[0].parent

    def split(text: str) -> Path:
        path = tmp_path / "split.txt"
        path.write_text(text)
        return path

    with pytest.raises(DatasetError, match="nowhere.mat"):
        JhmdbDataset(split(f"{frames_dir} {tmp_path / 'nowhere.mat'}\n"))
    with pytest.raises(DatasetError, match="line 1"):
        JhmdbDataset(split(f"{frames_dir}\n"))
    wrong = tmp_path / "wrong.mat"
    scipy.io.savemat(wrong, {"pos_world": np.ones((2, 15, 3))})
    with pytest.raises(DatasetError, match="wrong.mat.*pos_img"):
        JhmdbDataset(split(f"{frames_dir} {wrong}\n"))
    scipy.io.savemat(wrong, {"pos_img": np.ones((2, 14, 3))})
    with pytest.raises(DatasetError, match="wrong.mat.*shape"):
        read_joint_positions(wrong)
    (tmp_path / "garbage.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="garbage.mat"):
        read_joint_positions(tmp_path / "garbage.mat")
    gap_dir = tmp_path / "gap"
    gap_dir.mkdir()
    for number in (1, 2, 4):
        Image.new("RGB", (8, 8)).save(gap_dir / f"{number:05d}.png")
    with pytest.raises(DatasetError, match="00003.png"):
        JhmdbDataset(split(f"{gap_dir} {jhmdb_root / 'joint_positions/synth/synth-000/joint_positions.mat'}\n"))
    with pytest.raises(DatasetError, match="no_frames"):
        JhmdbDataset(split(f"{tmp_path / 'no_frames'} {wrong}\n"))


def test_generator_reuses_an_identical_set_and_refuses_a_foreign_folder(tmp_path):
    kwargs = dict(num_videos=1, num_frames=3, size=(48, 64), seed=1)
    root = generate_jhmdb(tmp_path / "set", **kwargs)
    mat = root / "joint_positions" / "synth" / "synth-000" / "joint_positions.mat"
    stamp = mat.stat().st_mtime_ns
    assert generate_jhmdb(root, **kwargs) == root and mat.stat().st_mtime_ns == stamp  # reused
    before = read_joint_positions(mat)
    generate_jhmdb(root, **{**kwargs, "seed": 2})  # different parameters: rebuilt in place
    assert not np.allclose(read_joint_positions(mat), before)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="mine"):
        generate_jhmdb(foreign, **kwargs)
    assert (foreign / "notes.txt").read_text() == "keep me"
