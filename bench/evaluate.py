"""End-to-end speed of the DAVIS evaluation on DAVIS-sized generated sequences, per phase.

Generates a DAVIS-format set (``datasets.synthetic.generate_davis``: 480x854 frames by
default, like DAVIS's 480p) and runs the DAVIS task (``evaluate.py``'s ``evaluate``) with a
random-init encoder on each device: the CPU, and CUDA when one is present. Reports per phase,
summed over the videos, seconds and frames/s: reading and decoding frames, features (the
encoder), propagation (similarity search and labels), and the rest of the run's wall time
(reading annotations, writing predictions, scoring); then the whole run in frames/s and its
J&F-Mean.

``--half float16`` adds, per device, a run whose features are rounded to float16 (stored so
by the feature cache, ``--cache-dtype float16``; propagation then reads them back) and
reports the change of J&F it causes. bfloat16 is not a storage type of the cache and is not
offered.

    python bench/evaluate.py                               # 2 videos x 12 frames, CPU (+ CUDA)
    python bench/evaluate.py --sequences 4 --frames 40 --half float16 --devices cuda
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.synthetic import generate_davis  # noqa: E402
from evaluate import evaluate  # noqa: E402
from propagate.eval_config import EvalConfig  # noqa: E402

PHASES = (("decode", "frames_s"), ("features", "features_s"), ("propagation", "propagation_s"))


def timed_run(cfg: EvalConfig) -> dict:
    """One evaluation: seconds per phase, the rest of the wall time, frames, J&F-Mean."""
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    tick = time.perf_counter()
    results = evaluate(cfg)
    wall = time.perf_counter() - tick
    t = results["timings"]
    phases = {name: t[key] for name, key in PHASES}
    phases["rest"] = max(0.0, wall - sum(phases.values()))
    return {"wall_s": wall, "frames": t["frames"], "phases_s": phases, "jf": results["metrics"]["J&F-Mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", default="480,854", help="H,W of the generated frames")
    parser.add_argument("--encoder", default="resnet18-crw")
    parser.add_argument("--preset", default="crw")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--half", choices=["none", "float16"], default="none",
                        help="also run with features rounded to this type and report the J&F change")
    parser.add_argument("--work", default=None, help="folder for the data and outputs (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split(","))
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        root = generate_davis(work / "DAVIS", num_sequences=args.sequences, num_frames=args.frames, size=size, seed=0)
        for device in devices:
            base = dict(data_root=str(root), encoder=args.encoder, preset=args.preset, device=device, overwrite=True)
            runs[f"{device} float32"] = timed_run(EvalConfig(**base, out=str(work / f"{device}-float32")))
            if args.half != "none":
                runs[f"{device} {args.half}"] = timed_run(EvalConfig(
                    **base, out=str(work / f"{device}-{args.half}"), cache=str(work / f"cache-{device}"),
                    cache_dtype=args.half))

    print(f"\n{args.sequences} videos x {args.frames} frames at {size[0]}x{size[1]}, {args.encoder}, "
          f"preset {args.preset}, {torch.get_num_threads()} CPU threads")
    header = "".join(f"{name + ' s':>14}{'f/s':>8}" for name, _ in PHASES) + f"{'rest s':>9}"
    print(f"{'run':<18}{header}{'total f/s':>11}{'J&F-Mean':>10}")
    for name, run in runs.items():
        n = run["frames"]
        cells = "".join(f"{run['phases_s'][p]:>14.2f}{n / max(run['phases_s'][p], 1e-9):>8.1f}" for p, _ in PHASES)
        print(f"{name:<18}{cells}{run['phases_s']['rest']:>9.2f}{n / run['wall_s']:>11.2f}{run['jf']:>10.4f}")
    if args.half != "none":
        for device in devices:
            change = runs[f"{device} {args.half}"]["jf"] - runs[f"{device} float32"]["jf"]
            print(f"{device}: J&F-Mean change with {args.half} features: {change:+.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
