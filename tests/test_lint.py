"""The code passes the project's lint settings (tests/ruff.toml: pycodestyle, pyflakes,
import order, 120-character lines)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    try:
        import ruff  # noqa: F401
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed (pip install -r requirements.txt installs it)")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(REPO / "tests" / "ruff.toml"),
                           "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
