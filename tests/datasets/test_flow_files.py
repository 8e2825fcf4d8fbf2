"""FlyingThings3D flow files: PFM round trip (files written here by the format's definition) and
the pairing of frames and flows."""
import numpy as np
import pytest

from datasets.flow_files import flyingthings_pairs, read_flow, read_pfm


def write_pfm(path, array: np.ndarray, little_endian: bool = True) -> None:
    """PFM as its definition writes it: header, then float32 rows bottom to top."""
    height, width, channels = array.shape
    header = f"{'PF' if channels == 3 else 'Pf'}\n{width} {height}\n{-1.0 if little_endian else 1.0}\n".encode()
    rows = np.ascontiguousarray(array[::-1]).astype("<f4" if little_endian else ">f4")
    path.write_bytes(header + rows.tobytes())


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
