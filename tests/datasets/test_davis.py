"""DAVIS-2017 reader: layout, lazy reading, object ids, error messages, palette PNGs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.davis import DatasetError, DavisDataset, read_indexed_png, write_indexed_png
from datasets.palette import davis_palette
from datasets.synthetic import generate_davis

SIZES = [(240, 320), (200, 288), (240, 336)]
NUM_FRAMES = 6


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("davis") / "synthetic"
    return generate_davis(root, num_sequences=3, num_frames=NUM_FRAMES, max_objects=3, seed=1,
                          sizes=SIZES)


@pytest.fixture
def copy(generated, tmp_path) -> Path:
    """A private copy of the generated set that a test may damage."""
    return Path(shutil.copytree(generated, tmp_path / "copy"))


def annotation_dir(root: Path, seq: str = "synth-001") -> Path:
    return root / "Annotations" / "480p" / seq


def frame_dir(root: Path, seq: str = "synth-001") -> Path:
    return root / "JPEGImages" / "480p" / seq


def test_reads_generated_set(generated):
    data = DavisDataset(generated, split="val")
    record = json.loads((generated / "synthetic.json").read_text())
    assert data.sequences == ["synth-000", "synth-001", "synth-002"]
    assert len(data) == 3
    for index, (sequence, info) in enumerate(zip(data, record["sequences"])):
        assert data[index] is data[sequence.name] is sequence
        assert sequence.size == SIZES[index]
        assert sequence.num_frames == NUM_FRAMES and sequence.fully_annotated
        frame = sequence.read_frame(-1)
        assert frame.dtype == np.uint8 and frame.shape == (*SIZES[index], 3)
        masks = sequence.annotations()
        assert masks.dtype == np.uint8 and masks.shape == (NUM_FRAMES, *SIZES[index])
        assert sequence.object_ids() == list(range(1, info["num_objects"] + 1))
        assert set(np.unique(masks)) <= {0, *sequence.object_ids()}
    with pytest.raises(KeyError):
        data["no-such-sequence"]
    with pytest.raises(IndexError):
        data[3]
    with pytest.raises(IndexError):
        data[0].read_frame(NUM_FRAMES)


def test_identity_hashes_the_listing(copy):
    identity = DavisDataset(copy).identity()
    assert identity["name"] == "DAVIS-2017" and identity["split"] == "val"
    assert identity["num_sequences"] == 3 and identity["num_frames"] == 3 * NUM_FRAMES
    assert identity["resolution"] == "480p" and len(identity["listing_sha256"]) == 64
    assert DavisDataset(copy).identity() == identity
    path = frame_dir(copy) / "00002.jpg"
    path.write_bytes(path.read_bytes() + b"\0")
    assert DavisDataset(copy).identity()["listing_sha256"] != identity["listing_sha256"]


def test_split_file_path_keeps_its_order(generated, tmp_path):
    split = tmp_path / "mine.txt"
    split.write_text("synth-002\n\nsynth-000\n")
    data = DavisDataset(generated, split=str(split))
    assert data.sequences == ["synth-002", "synth-000"]
    assert data.identity()["num_frames"] == 2 * NUM_FRAMES


def test_missing_root_and_split_file(generated, tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        DavisDataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"ImageSets/2017/train\.txt: split file not found"):
        DavisDataset(generated, split="train")


def test_sequence_listed_but_missing(copy):
    shutil.rmtree(frame_dir(copy, "synth-002"))
    with pytest.raises(DatasetError, match=r"JPEGImages/480p/synth-002: frame folder"):
        DavisDataset(copy)


def test_missing_frame(copy):
    (frame_dir(copy) / "00003.jpg").unlink()
    with pytest.raises(DatasetError, match=r"synth-001/00003\.jpg: frame missing"):
        DavisDataset(copy)


def test_missing_annotation(copy):
    (annotation_dir(copy) / "00004.png").unlink()
    with pytest.raises(DatasetError, match=r"synth-001/00004\.png: annotation missing"):
        DavisDataset(copy)


def test_count_mismatch(copy):
    extra = annotation_dir(copy) / f"{NUM_FRAMES:05d}.png"
    shutil.copy(annotation_dir(copy) / "00000.png", extra)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(extra))}: annotation has no frame"):
        DavisDataset(copy)


def test_unreadable_annotation(copy):
    bad = annotation_dir(copy) / "00002.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(bad))}: cannot read image"):
        DavisDataset(copy)


def test_truncated_annotation_fails_when_read(copy):
    bad = annotation_dir(copy) / "00002.png"
    data = bad.read_bytes()
    bad.write_bytes(data[:data.index(b"IDAT") + 20])  # header intact, pixel data cut
    sequence = DavisDataset(copy)["synth-001"]
    with pytest.raises(DatasetError, match=rf"{re.escape(str(bad))}"):
        sequence.read_annotation(2)


def test_colour_annotation_is_rejected(copy):
    bad = annotation_dir(copy) / "00001.png"
    Image.open(bad).convert("RGB").save(bad)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(bad))}: annotation has mode 'RGB'"):
        DavisDataset(copy)


def test_annotation_of_wrong_size(copy):
    bad = annotation_dir(copy) / "00001.png"
    write_indexed_png(bad, np.zeros((100, 100), np.uint8))
    expected = rf"{re.escape(str(bad))}: annotation is 100x100 \(WxH\) but its frame is 288x200"
    with pytest.raises(DatasetError, match=expected):
        DavisDataset(copy)
    sequence = DavisDataset(copy, check_headers=False)["synth-001"]
    with pytest.raises(DatasetError, match=rf"{re.escape(str(bad))}: annotation is 100x100"):
        sequence.read_annotation(1)


def test_first_frame_only_layout(copy):
    for path in sorted(annotation_dir(copy).glob("*.png"))[1:]:
        path.unlink()
    sequence = DavisDataset(copy)["synth-001"]
    assert not sequence.fully_annotated
    assert sequence.num_frames == NUM_FRAMES and len(sequence.annotation_paths) == 1
    assert sequence.read_annotation(0).shape == SIZES[1]
    assert sequence.object_ids()
    with pytest.raises(DatasetError, match="first-frame-only"):
        sequence.annotations()


def test_object_ids_follow_the_scorer_rule(copy):
    first = annotation_dir(copy) / "00000.png"
    ids = np.zeros(SIZES[1], np.uint8)
    ids[10:20, 10:20] = 3  # id 3 present, 1 and 2 absent: still objects 1..3
    ids[50:60, 50:60] = 255  # void is not an object
    write_indexed_png(first, ids)
    assert DavisDataset(copy)["synth-001"].object_ids() == [1, 2, 3]
    # Only void and background: an error naming the file, with the binary-mask hint; the flag
    # reads such a 0/255 mask's 255 as object 1 (in every frame, so scoring agrees).
    write_indexed_png(first, np.where(ids == 255, 255, 0).astype(np.uint8))
    with pytest.raises(DatasetError, match=rf"{re.escape(str(first))}: the first frame's annotation holds no "
                                           r"object \(ids \[0, 255\].*--binary-masks"):
        DavisDataset(copy)
    binary = DavisDataset(copy, binary_masks=True)
    assert binary["synth-001"].object_ids() == [1] and binary.identity()["binary_masks"] is True
    assert (binary["synth-001"].read_annotation(0)[50:60, 50:60] == 1).all()
    write_indexed_png(first, np.zeros_like(ids))
    with pytest.raises(DatasetError, match=r"holds no object \(ids \[0\]; 0 is background and 255 void\)\.$"):
        DavisDataset(copy)


def test_grey_id_annotation_is_accepted(copy):
    path = annotation_dir(copy) / "00003.png"
    ids = read_indexed_png(path)
    Image.fromarray(ids).save(path)  # mode "L": grey value = id
    assert Image.open(path).mode == "L"
    np.testing.assert_array_equal(DavisDataset(copy)["synth-001"].read_annotation(3), ids)


def test_palette_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 8, size=(37, 53)).astype(np.uint8)
    ids[0, :5] = 255
    path = write_indexed_png(tmp_path / "sub" / "00000.png", ids)
    with Image.open(path) as image:  # exactly how the official scorer reads predictions
        assert image.mode == "P"
        np.testing.assert_array_equal(np.array(image), ids)
        palette = np.array(image.getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(read_indexed_png(path), ids)
    assert tuple(palette[1]) == (128, 0, 0) and tuple(palette[2]) == (0, 128, 0)
    assert tuple(palette[3]) == (128, 128, 0) and tuple(palette[255]) == (224, 224, 192)
    np.testing.assert_array_equal(palette[:256], davis_palette())
    wide = write_indexed_png(tmp_path / "b.png", ids.astype(np.int64))
    np.testing.assert_array_equal(read_indexed_png(wide), ids)
    with pytest.raises(ValueError, match="integer ids"):
        write_indexed_png(tmp_path / "c.png", ids.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        write_indexed_png(tmp_path / "d.png", np.full((4, 4), 300))
    with pytest.raises(ValueError, match="e.png: file not found"):
        read_indexed_png(tmp_path / "e.png")


def test_real_davis_mini(davis_mini):
    data = DavisDataset(davis_mini, split="val")
    assert len(data) == 3
    palette = davis_palette()
    for sequence in data:
        assert sequence.fully_annotated and sequence.size[0] == 480
        assert sequence.object_ids() == [1]
        first = sequence.read_annotation(0)
        with Image.open(sequence.annotation_paths[0]) as image:  # file palette = ours
            np.testing.assert_array_equal(np.array(image.getpalette()).reshape(-1, 3)[:2], palette[:2])
        assert (first == 1).any() and set(np.unique(first)) <= {0, 1}
        frame = sequence.read_frame(sequence.num_frames - 1)
        assert frame.shape == (*sequence.size, 3) and frame.std() > 10
