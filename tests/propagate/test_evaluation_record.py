"""Evaluation computes what it computed when the record was taken: identical metrics and
byte-identical prediction files on the generated sets, on davis-mini and with a checkpoint
written by an earlier ``train.py`` (``tests/data/record_evaluations.py`` took the record).

On the platform the record was taken on (``record_platform.platform_key``) metrics and
prediction files must be identical. Elsewhere float results differ in the last bits, which
can flip a label at a boundary: the metrics must agree to 1e-3 (absolute, on fractions and
pixels) and the same prediction files must be written; their bytes are then not compared."""
import json
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
sys.path.insert(0, str(DATA))
import record_evaluations as rec  # noqa: E402
from record_platform import close, platform_key  # noqa: E402

RECORD = json.loads(rec.RECORD.read_text())
SAME_PLATFORM = RECORD.get(rec.PLATFORM) == platform_key()


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("record-data")
    roots: dict[str, Path] = {}

    def root(kind: str) -> Path:
        if kind not in roots:
            roots[kind] = rec.generate(kind, base)
        return roots[kind]

    return root


@pytest.mark.parametrize("name", sorted(k for k in RECORD if k != rec.PLATFORM))
def test_evaluation_matches_the_record(name, data_roots, tmp_path):
    kind = rec.CASES[name][0]
    if kind == "davis-mini" and not rec.DAVIS_MINI.exists():
        pytest.skip(f"{rec.DAVIS_MINI} is absent (real DAVIS sample data)")
    got = rec.run_case(name, data_roots(kind), tmp_path / "out", rec.run_evaluation)
    want = RECORD[name]
    assert got["argv"] == want["argv"]
    if SAME_PLATFORM:
        assert got["metrics"] == want["metrics"]
        assert got["predictions"] == want["predictions"]
    else:
        assert close(got["metrics"], want["metrics"], rel=0.0, abs_=1e-3)
        assert sorted(got["predictions"]) == sorted(want["predictions"])
