"""Write ``evaluation_record.json``: metrics and prediction-file hashes of fixed evaluations.

The record pins what evaluation computes: a test reruns every case and requires identical
metrics and byte-identical prediction files. Regenerate it only for a deliberate change of
results, and say why in the commit:

    python tests/data/record_evaluations.py            # all cases
    python tests/data/record_evaluations.py davis-pixel jhmdb-crw   # some cases

Cases run on the generated sets that ``evaluate.py`` uses without data (same generator
arguments), on ``../shared/data/davis-mini`` when it is present, and with
``global-walk-2steps.pt``, a checkpoint written by ``python train.py --loss global_walk
--encoder pixel --steps 2`` (the ``global-walk-demo`` preset: the small global-match network).
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
RECORD = HERE / "evaluation_record.json"
CHECKPOINT = HERE / "global-walk-2steps.pt"
PLATFORM = "_platform"    # the record's key for where it was taken (record_platform.platform_key)
DAVIS_MINI = REPO.parent / "shared" / "data" / "davis-mini"

# name -> (data set, argv without --data-root / --out); {checkpoint} is CHECKPOINT.
CASES: dict[str, tuple[str, list[str]]] = {
    "davis-pixel": ("davis", ["--task", "davis", "--encoder", "pixel"]),
    "davis-crw": ("davis", ["--task", "davis"]),
    "davis-global-match-checkpoint": ("davis", ["--task", "davis", "--encoder", "global-match",
                                                "--checkpoint", "{checkpoint}"]),
    "davis-mini-pixel": ("davis-mini", ["--task", "davis", "--encoder", "pixel", "--sequences", "dog-agility"]),
    "davis-mini-crw": ("davis-mini", ["--task", "davis", "--sequences", "dog-agility"]),
    "jhmdb-pixel": ("jhmdb", ["--task", "jhmdb", "--encoder", "pixel"]),
    "jhmdb-crw": ("jhmdb", ["--task", "jhmdb"]),
    "vip-pixel": ("vip", ["--task", "vip", "--encoder", "pixel"]),
    "vip-crw": ("vip", ["--task", "vip"]),
    "tapvid-pixel": ("tapvid", ["--task", "tapvid", "--encoder", "pixel"]),
    "tapvid-crw": ("tapvid", ["--task", "tapvid"]),
    "tapvid-walk-checkpoint": ("tapvid", ["--task", "tapvid", "--tracker", "walk", "--checkpoint", "{checkpoint}"]),
}


def generate(kind: str, base: Path) -> Path:
    """The generated set ``evaluate.py`` uses for ``kind`` without data (same arguments)."""
    from datasets.synthetic import generate_davis
    from datasets.synthetic_tasks import generate_jhmdb, generate_tapvid, generate_vip

    if kind == "davis":
        return generate_davis(base / "davis", num_sequences=4, num_frames=24, size=(240, 432), seed=0, split="val")
    if kind == "jhmdb":
        return generate_jhmdb(base / "jhmdb", num_videos=4, num_frames=20, seed=0)
    if kind == "vip":
        return generate_vip(base / "vip", num_videos=4, num_frames=12, seed=0)
    if kind == "tapvid":
        return generate_tapvid(base / "tapvid", kind="davis", num_videos=4, num_frames=24, seed=0)
    if kind == "davis-mini":
        return DAVIS_MINI
    raise ValueError(kind)


def prediction_hashes(out: Path) -> dict[str, str]:
    """SHA-256 of every file under ``out/predictions``, by relative path."""
    root = out / "predictions"
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(name: str, data: Path, out: Path, run_evaluation) -> dict:
    """Run case ``name`` on ``data`` into ``out``; return its metrics and prediction hashes."""
    _, argv = CASES[name]
    argv = [a.replace("{checkpoint}", str(CHECKPOINT)) for a in argv]
    results = run_evaluation(argv + ["--data-root", str(data), "--out", str(out)])
    return {"argv": CASES[name][1], "metrics": results["metrics"], "predictions": prediction_hashes(out)}


def run_evaluation(argv: list[str]) -> dict:
    """Evaluate in this process, as ``python evaluate.py ARGV`` does; return results.json."""
    from evaluate import evaluate, parse_args

    evaluate(parse_args(argv))
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "results.json").read_text())


def main(names: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from record_platform import platform_key

    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if names and record.get(PLATFORM, platform_key()) != platform_key():
        raise SystemExit(f"the record was taken on {record[PLATFORM]}, this is {platform_key()}: regenerate every case")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        roots: dict[str, Path] = {}
        for name in names or list(CASES):
            kind = CASES[name][0]
            if kind == "davis-mini" and not DAVIS_MINI.exists():
                print(f"{name}: skipped, {DAVIS_MINI} is absent")
                continue
            if kind not in roots:
                roots[kind] = generate(kind, base / "data")
            start = time.perf_counter()
            record[name] = run_case(name, roots[kind], base / "out" / name, run_evaluation)
            print(f"{name}: {time.perf_counter() - start:.1f} s, {record[name]['metrics']}")
    record[PLATFORM] = platform_key()
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
