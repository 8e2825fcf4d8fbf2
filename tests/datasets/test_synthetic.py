"""Synthetic DAVIS generator: determinism, exact masks, motion, occlusion, speed, reuse."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets.davis import DavisDataset
from datasets.synthetic import generate_davis, object_layer, render_scene, render_sequence, sequence_rng

SIZE = (96, 128)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    kwargs = dict(num_sequences=2, num_frames=5, size=SIZE, max_objects=3, seed=7)
    first = file_bytes(generate_davis(tmp_path / "a", **kwargs))
    second = file_bytes(generate_davis(tmp_path / "b", **kwargs))
    assert len(first) == 2 * 2 * 5 + 2  # frames, annotations, split file, synthetic.json
    assert first == second
    other = file_bytes(generate_davis(tmp_path / "c", **{**kwargs, "seed": 8}))
    assert other["JPEGImages/480p/synth-000/00000.jpg"] != first["JPEGImages/480p/synth-000/00000.jpg"]


def test_masks_are_exact():
    """Mask id k marks exactly the pixels showing object k: its texture, not hidden by a nearer one."""
    scene = render_scene(np.random.default_rng(3), num_frames=8, size=SIZE, num_objects=3)
    assert scene.frames.shape == (8, *SIZE, 3) and scene.masks.shape == (8, *SIZE)
    assert scene.affines.shape == (8, 3, 2, 3) and scene.depth_order.shape == (8, 3)
    for t in range(8):
        mask, frame = scene.masks[t], scene.frames[t]
        front_of = {int(k): set(int(j) for j in scene.depth_order[t][i + 1:])
                    for i, k in enumerate(scene.depth_order[t])}
        claimed = np.zeros(SIZE, bool)
        for k in range(1, 4):
            texture, coverage = object_layer(scene, t, k, SIZE)
            labelled = mask == k
            assert not (labelled & ~coverage).any(), "id outside the object's shape"
            np.testing.assert_array_equal(frame[labelled], texture[labelled])
            hidden_by = set(np.unique(mask[coverage & ~labelled]).tolist())
            assert hidden_by <= front_of[k], f"object {k} hidden by {hidden_by}, not all in front"
            claimed |= coverage
        assert not (mask[~claimed]).any(), "a pixel no object covers has an object id"


def test_frame0_shows_every_object_and_motion_is_smooth():
    for seed in range(4):
        num_objects = 1 + seed % 4
        scene = render_scene(np.random.default_rng(seed), num_frames=12, size=SIZE,
                             num_objects=num_objects)
        assert set(np.unique(scene.masks[0])) == set(range(num_objects + 1))
        centres = scene.affines[..., 2] + np.einsum(  # sprite centre in frame coordinates
            "tnij,nj->tni", scene.affines[..., :2],
            np.array([[(a.shape[1] - 1) / 2, (a.shape[0] - 1) / 2] for a in scene.sprite_alphas]))
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=-1)
        assert steps.max() < 6.0, "objects jump"
        assert np.linalg.norm(centres[-1] - centres[0], axis=-1).min() > 1.0, "an object stays put"
        assert (np.linalg.norm(np.diff(scene.background_offsets, axis=0), axis=-1) < 4.0).all()
        assert np.ptp(scene.background_offsets, axis=0).max() > 1.0, "background does not pan"
        assert np.all((centres > 0) & (centres < np.array(SIZE[::-1]))), "object centre left the frame"


def test_render_sequence_matches_written_files_and_occlusion_happens(tmp_path):
    root = generate_davis(tmp_path / "set", num_sequences=4, num_frames=10, size=SIZE,
                          max_objects=4, seed=2)
    record = json.loads((root / "synthetic.json").read_text())
    data = DavisDataset(root)
    occluded_pixels = 0
    for index, sequence in enumerate(data):
        num_objects = record["sequences"][index]["num_objects"]
        rng = sequence_rng(2, index)
        assert int(rng.integers(1, 5)) == num_objects  # the generator's first draw
        frames, masks = render_sequence(rng, 10, SIZE, num_objects)
        np.testing.assert_array_equal(sequence.annotations(), masks)
        assert sequence.object_ids() == list(range(1, num_objects + 1))
        error = np.abs(sequence.read_frame(4).astype(int) - frames[4]).mean()
        assert error < 6.0, f"JPEG frame far from the rendered one ({error:.1f})"
        scene = render_scene(sequence_rng(2, index), 10, SIZE, num_objects)  # rng as above
        for t in range(10):
            for k in range(1, num_objects + 1):
                _, coverage = object_layer(scene, t, k, SIZE)
                occluded_pixels += int((coverage & (masks[t] != k) & (masks[t] > 0)).sum())
    assert occluded_pixels > 0, "no object ever hides another"


def test_sequences_of_different_sizes(tmp_path):
    sizes = [(64, 96), (80, 72)]
    data = DavisDataset(generate_davis(tmp_path / "s", num_sequences=2, num_frames=3, sizes=sizes))
    assert [sequence.size for sequence in data] == sizes
    with pytest.raises(ValueError, match="sizes"):
        generate_davis(tmp_path / "t", num_sequences=3, num_frames=3, sizes=sizes)


def test_reuse_when_parameters_match(tmp_path):
    root = tmp_path / "reuse"
    generate_davis(root, num_sequences=1, num_frames=4, size=SIZE, seed=0)
    frame = root / "JPEGImages/480p/synth-000/00000.jpg"
    stamp = frame.stat().st_mtime_ns
    assert generate_davis(root, num_sequences=1, num_frames=4, size=SIZE, seed=0) == root
    assert frame.stat().st_mtime_ns == stamp, "an identical request rewrote the set"
    (frame.parent.parent / ".corr-index.json").write_text("{}")      # a reader's cache beside the frames
    generate_davis(root, num_sequences=1, num_frames=4, size=SIZE, seed=0)
    assert frame.stat().st_mtime_ns == stamp, "a reader's cache made the set look damaged"
    generate_davis(root, num_sequences=1, num_frames=5, size=SIZE, seed=0)  # new parameters
    assert len(list(frame.parent.glob("*.jpg"))) == 5
    assert json.loads((root / "synthetic.json").read_text())["parameters"]["num_frames"] == 5
    frame.unlink()  # a damaged set is rebuilt even with matching parameters
    generate_davis(root, num_sequences=1, num_frames=5, size=SIZE, seed=0)
    assert frame.is_file()
    assert not list(tmp_path.glob(".reuse.tmp-*")), "staging folder left behind"


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_davis(foreign, num_sequences=1, num_frames=2, size=SIZE)
    assert (foreign / "notes.txt").read_text() == "keep me"
