"""FlyingThings3D flow files: PFM round trip (files written here by the format's definition) and
the pairing of frames and flows."""
import numpy as np
import pytest
import torch
from conftest import write_pfm

from datasets.flow_files import FlowPairCrops, flyingthings_pairs, read_flow, read_pfm
from datasets.frames import DatasetError
from datasets.transforms import normalize_frames


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_round_trip_keeps_rows_channels_and_values(tmp_path, little_endian):
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(5, 7, 3)).astype(np.float32) * 10
    flow[..., 2] = 0
    write_pfm(tmp_path / "flow.pfm", flow, little_endian)
    back = read_pfm(tmp_path / "flow.pfm")
    assert back.shape == (5, 7, 3) and back.dtype == np.float32
    assert np.array_equal(back, flow)                                   # row 0 is the top row
    assert np.array_equal(read_flow(tmp_path / "flow.pfm"), flow[..., :2])
    gray = rng.normal(size=(4, 3, 1)).astype(np.float32)
    write_pfm(tmp_path / "gray.pfm", gray, little_endian)
    assert np.array_equal(read_pfm(tmp_path / "gray.pfm"), gray)
    with pytest.raises(ValueError, match="3 channels"):
        read_flow(tmp_path / "gray.pfm")


def test_bad_pfm_files_are_refused(tmp_path):
    (tmp_path / "a.pfm").write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
    with pytest.raises(ValueError, match="not a PFM"):
        read_pfm(tmp_path / "a.pfm")
    (tmp_path / "b.pfm").write_bytes(b"PF\n4 4\n-1.0\n" + b"\x00" * 10)
    with pytest.raises(ValueError, match="shorter"):
        read_pfm(tmp_path / "b.pfm")


def test_pairs_follow_the_released_loader(tmp_path):
    scene = ("A", "0000")
    for direction, tag in (("into_future", "IntoFuture"), ("into_past", "IntoPast")):
        folder = tmp_path / "optical_flow" / "TRAIN" / scene[0] / scene[1] / direction / "left"
        folder.mkdir(parents=True)
        for n in (6, 7, 8):
            write_pfm(folder / f"OpticalFlow{tag}_{n:04d}_L.pfm", np.zeros((2, 2, 3), np.float32))
    images = tmp_path / "frames_cleanpass" / "TRAIN" / scene[0] / scene[1] / "left"
    images.mkdir(parents=True)
    for n in (6, 7, 8):
        (images / f"{n:04d}.png").write_bytes(b"")
    pairs = flyingthings_pairs(tmp_path)
    assert len(pairs) == 4
    future, past = pairs[0], pairs[2]
    assert [p.name for p in future.frames] == ["0006.png", "0007.png"]
    assert future.flow.name == "OpticalFlowIntoPast_0007_L.pfm" and future.flow.parent.parent.name == "into_past"
    assert future.flow_back.name == "OpticalFlowIntoFuture_0006_L.pfm"
    assert [p.name for p in past.frames] == ["0007.png", "0006.png"]
    assert past.flow.name == "OpticalFlowIntoFuture_0006_L.pfm" and past.flow.is_file()
    assert past.flow_back.name == "OpticalFlowIntoPast_0007_L.pfm"


def test_flow_pair_crops_cut_frames_and_flows_alike(tmp_path, flyingthings):
    frames = flyingthings(tmp_path)
    crops = FlowPairCrops(tmp_path, crop_size=12)
    assert len(crops) == 2                                               # (6, 7) into the future and the past
    sample = crops.sample(np.random.default_rng(3))
    assert sample["frames"].shape == (2, 3, 12, 12) and sample["flow"].shape == (2, 12, 12)
    u = sample["flow"][0]
    x0 = int(abs(u[0, 0])) - (7 if u[0, 0] < 0 else 6)                  # the crop's left edge, read from the flow
    assert torch.equal(u[0], torch.sign(u[0, 0]) * torch.arange(abs(u[0, 0]), abs(u[0, 0]) + 12))
    reference = sample["frames"][0]
    found = [n for n, rgb in frames.items()
             if any(torch.allclose(normalize_frames(rgb[y:y + 12, x0:x0 + 12])[0], reference) for y in range(9))]
    assert len(found) == 1                                               # the reference is an exact crop of a frame
    assert torch.equal(sample["flow_back"][1], -sample["flow"][1])       # v = +-0.5 on either side


def test_flow_pair_crops_refuse_a_missing_layout_and_small_frames(tmp_path, flyingthings):
    with pytest.raises(DatasetError, match="no FlyingThings3D pairs"):
        FlowPairCrops(tmp_path, crop_size=8)
    flyingthings(tmp_path)
    with pytest.raises(DatasetError, match="smaller than the 32 px crop"):
        FlowPairCrops(tmp_path, crop_size=32).sample(np.random.default_rng(0))
