"""Training computes what it computed when the record was taken: the same per-step losses,
checkpoint layout and trained weights for every objective, and a checkpoint written by an
earlier ``train.py`` resumes (``tests/data/record_training.py`` took the record)."""
import json
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
sys.path.insert(0, str(DATA))
import record_training as rec  # noqa: E402

RECORD = json.loads(rec.RECORD.read_text())


@pytest.mark.parametrize("name", sorted(RECORD))
def test_training_matches_the_record(name, tmp_path):
    got = rec.run_case(name, tmp_path / "out", rec.run_training)
    want = RECORD[name]
    assert got["argv"] == want["argv"]
    assert got["losses"] == want["losses"]
    assert got["checkpoint"] == want["checkpoint"]
