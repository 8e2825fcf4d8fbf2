"""Run ``evaluate.py`` under ``torchrun`` with two CPU processes, for the one-versus-two tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def evaluate_two_processes(args: list[str], out: Path, timeout: int) -> tuple[str, dict, set[int]]:
    """``torchrun --nproc_per_node=2 evaluate.py *args --out out`` -> (stdout, results.json, ranks
    that wrote sequence records). Fails the test with the end of stderr if the run fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "evaluate.py", *args, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    ranks = {json.loads(p.read_text())["rank"] for p in (out / "sequences").glob("*.json")}
    return done.stdout, results, ranks
