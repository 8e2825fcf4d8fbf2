"""Shared test setup: the repository root and ``tests/`` are importable however pytest is
started, and the real sample data (a ``shared/data`` folder next to the repository: three
DAVIS sequences, three unlabelled clips) is reached through fixtures that skip, with the
reason, where it is absent."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
for path in (REPO_ROOT, TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real sample data not found at {path}")
    return path


@pytest.fixture
def davis_mini() -> Path:
    """Three real DAVIS-2016 train sequences laid out as DAVIS-2017 (``shared/data/davis-mini``)."""
    return _shared("davis-mini")


@pytest.fixture
def shared_clips() -> Path:
    """Three real unlabelled H.264 clips (``shared/data/clips``)."""
    return _shared("clips")


def write_pfm(path, array: np.ndarray, little_endian: bool = True) -> None:
    """PFM as its definition writes it: header, then float32 rows bottom to top."""
    height, width, channels = array.shape
    header = f"{'PF' if channels == 3 else 'Pf'}\n{width} {height}\n{-1.0 if little_endian else 1.0}\n".encode()
    rows = np.ascontiguousarray(array[::-1]).astype("<f4" if little_endian else ">f4")
    path.write_bytes(header + rows.tobytes())


def write_flyingthings(root: Path, size=(20, 28), frames=(6, 7)) -> dict:
    """One scene in FlyingThings3D's layout: random PNG frames and flows whose values name them."""
    rng = np.random.default_rng(0)
    images = root / "frames_cleanpass" / "TRAIN" / "A" / "0000" / "left"
    images.mkdir(parents=True)
    written = {}
    for n in frames:
        rgb = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        cv2.imwrite(str(images / f"{n:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        written[n] = rgb
    for direction, tag, sign in (("into_future", "IntoFuture", 1.0), ("into_past", "IntoPast", -1.0)):
        folder = root / "optical_flow" / "TRAIN" / "A" / "0000" / direction / "left"
        folder.mkdir(parents=True)
        for n in frames:
            flow = np.zeros((*size, 3), np.float32)
            flow[..., 0] = sign * (n + np.arange(size[1]))[None, :]      # u varies along x: a crop shows where
            flow[..., 1] = sign * 0.5
            write_pfm(folder / f"OpticalFlow{tag}_{n:04d}_L.pfm", flow)
    return written


@pytest.fixture
def flyingthings():
    """:func:`write_flyingthings`: a FlyingThings3D scene written where the test asks."""
    return write_flyingthings
