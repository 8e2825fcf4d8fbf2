"""VIP reader on generated VIP_Fine data: layout, exact part maps, partial annotation, errors."""
import shutil

import numpy as np
import pytest
from PIL import Image

from datasets.davis import DatasetError
from datasets.synthetic import render_scene, sequence_rng
from datasets.synthetic_tasks import generate_vip
from datasets.vip import NUM_CLASSES, VIP_CLASSES, VipDataset
from propagate.labels import grid_size, labels_to_parts, parts_to_labels

SIZE = (96, 128)
FRAMES = 5


@pytest.fixture(scope="module")
def vip_root(tmp_path_factory):
    return generate_vip(tmp_path_factory.mktemp("vip") / "VIP_Fine", num_videos=2, num_frames=FRAMES,
                        size=SIZE, max_objects=3, seed=5)


def test_reads_generated_set_and_part_maps_cover_exactly_the_objects(vip_root):
    dataset = VipDataset(vip_root)
    assert len(dataset) == 2 and NUM_CLASSES == 20 and VIP_CLASSES[0] == "background"
    video = dataset["synth-000"]
    assert video.num_frames == FRAMES and video.annotated_frames == list(range(FRAMES))
    assert video.read_frames().shape == (FRAMES, *SIZE, 3)
    rng = sequence_rng(5, 0)
    scene = render_scene(rng, FRAMES, SIZE, int(rng.integers(1, 4)))
    for t in range(FRAMES):
        parts = video.read_annotation(t)
        assert parts.dtype == np.uint8 and parts.shape == SIZE
        assert parts.max() < NUM_CLASSES
        np.testing.assert_array_equal(parts > 0, scene.masks[t] > 0)  # parts tile the objects exactly
    first = video.read_annotation(0)
    assert len(np.unique(first)) >= 3
    identity = dataset.identity()
    assert identity["num_frames"] == 2 * FRAMES and identity["num_annotated_frames"] == 2 * FRAMES


def test_part_codec_round_trip_on_generated_map(vip_root):
    parts = VipDataset(vip_root)[1].read_annotation(0)
    labels = parts_to_labels(parts, grid_size(*SIZE, 8), 8)
    assert labels.shape == (20, 12, 16)
    decoded = labels_to_parts(labels, SIZE, 8)
    assert (decoded == parts).mean() > 0.85  # part cells are a few cells wide at stride 8


def test_unannotated_frames_are_allowed_but_not_the_first(vip_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(vip_root, root)
    annotations = sorted((root / "Annotations" / "Category_ids" / "synth-000").iterdir())
    annotations[2].unlink()
    video = VipDataset(root)["synth-000"]
    assert video.annotated_frames == [0, 1, 3, 4]
    assert video.read_annotation(2) is None
    annotations[0].unlink()
    with pytest.raises(DatasetError, match=annotations[0].name):
        VipDataset(root)


def test_errors_name_the_file(vip_root, tmp_path):
    with pytest.raises(DatasetError, match="nothing"):
        VipDataset(tmp_path / "nothing")
    root = tmp_path / "copy"
    shutil.copytree(vip_root, root)
    with pytest.raises(DatasetError, match="test_videos.txt"):
        VipDataset(root, split="test")
    stray = root / "Annotations" / "Category_ids" / "synth-001" / "000000000099.png"
    Image.new("L", (4, 4)).save(stray)
    with pytest.raises(DatasetError, match="000000000099.png"):
        VipDataset(root)
    stray.unlink()
    annotation = root / "Annotations" / "Category_ids" / "synth-001" / "000000000002.png"
    Image.new("RGB", SIZE[::-1]).save(annotation)  # colours, not ids
    with pytest.raises(DatasetError, match="000000000002.png"):
        VipDataset(root)["synth-001"].read_annotation(1)
    shutil.rmtree(root / "Images" / "synth-001")
    with pytest.raises(DatasetError, match="synth-001"):
        VipDataset(root)
