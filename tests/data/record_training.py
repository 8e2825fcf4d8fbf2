"""Write ``training_record.json``: per-step losses, the checkpoint's keys and a fingerprint of
the trained weights of short runs of every objective.

A test reruns every case and requires identical losses and weights, so reorganising the
training code cannot change what it computes. Regenerate only for a deliberate change:

    python tests/data/record_training.py            # all cases
    python tests/data/record_training.py crw cycle  # some cases

Each case is ``python train.py ARGV --out OUT`` on the demo's generated clips.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECORD = HERE / "training_record.json"

COMMON = ["--num-workers", "0", "--no-progress", "--log-every", "1", "--checkpoint-every", "2",
          "--image-every", "2"]
CASES: dict[str, list[str]] = {
    "crw": ["--steps", "3"],
    "crw-grid": ["--steps", "2", "--mode", "grid", "--crop-size", "96", "--batch-size", "2"],
    "cycle": ["--loss", "cycle", "--steps", "2"],
    "pixel": ["--loss", "pixel", "--steps", "3"],
    "global_walk": ["--loss", "global_walk", "--steps", "3"],
    "mix": ["--loss", "crw=1,cycle=0.5,pixel=1", "--encoder", "resnet18-fgvc", "--steps", "2"],
    # resumes global-walk-2steps.pt, written by ``train.py --loss global_walk --encoder pixel --steps 2``
    "resume-old-checkpoint": ["--loss", "global_walk", "--encoder", "pixel", "--steps", "4", "--resume"],
}
OLD_CHECKPOINT = HERE / "global-walk-2steps.pt"
RUN_ONLY = ("out", "preset", "overwrite", "debug", "channels_last", "compile")
PLATFORM = "_platform"    # the record's key for where it was taken (record_platform.platform_key)


def tensor_fingerprint(state: dict) -> str:
    """SHA-256 over the names and float32 bytes of every tensor of a state dict."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if isinstance(value, torch.Tensor):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def checkpoint_summary(path: Path) -> dict:
    """The checkpoint's top-level keys, its config and a fingerprint of every saved weight."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    weights = {"encoder." + k: v for k, v in ckpt["encoder"]["state_dict"].items()}
    for group, state in ckpt["heads"].items():
        weights.update({f"heads.{group}.{k}": v for k, v in state.items()})
    return {"keys": sorted(ckpt), "step": ckpt["step"], "encoder": ckpt["encoder"]["name"],
            "weights": tensor_fingerprint(weights), "config": ckpt["config"]}


def run_case(name: str, out: Path, run_training) -> dict:
    """Train case ``name`` into ``out``; return its per-step losses and checkpoint summary."""
    if "--resume" in CASES[name]:
        out.mkdir(parents=True)
        (out / "checkpoint.pt").write_bytes(OLD_CHECKPOINT.read_bytes())
    losses = run_training(CASES[name] + COMMON + ["--out", str(out)])
    summary = checkpoint_summary(out / "checkpoint.pt")
    # Options added to the stored config after the record was taken that do not change what is
    # trained ("preset": the name the run resolved from; "overwrite", "debug", "channels_last",
    # "compile": run options) are left out, so the record still pins every other value.
    summary["config"] = {k: v for k, v in summary["config"].items() if k not in RUN_ONLY}
    result = {"argv": CASES[name], "losses": {str(k): v for k, v in sorted(losses.items())}, "checkpoint": summary}
    return json.loads(json.dumps(result))   # as stored: tuples become lists


def run_training(argv: list[str]) -> dict[int, float]:
    """Train in this process, as ``python train.py ARGV`` does; return step -> loss."""
    from corr.train import main

    return main(argv).losses


def main(names: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from record_platform import platform_key

    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if names and record.get(PLATFORM, platform_key()) != platform_key():
        raise SystemExit(f"the record was taken on {record[PLATFORM]}, this is {platform_key()}: regenerate every case")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(CASES):
            start = time.perf_counter()
            record[name] = run_case(name, Path(tmp) / name, run_training)
            print(f"{name}: {time.perf_counter() - start:.1f} s, losses {record[name]['losses']}")
    record[PLATFORM] = platform_key()
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
