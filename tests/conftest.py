"""Shared test setup: the repository root and ``tests/`` are importable however pytest is
started, and the real sample data (a ``shared/data`` folder next to the repository: three
DAVIS sequences, three unlabelled clips) is reached through fixtures that skip, with the
reason, where it is absent."""
import sys
from pathlib import Path

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
