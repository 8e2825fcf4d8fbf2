"""Cold versus warm cache (``evaluate.py --cache``) on a generated DAVIS-format set.

Runs the DAVIS task on the same videos with a random-init ``resnet18-crw``: without a
cache, with an empty cache (features and matches computed and stored: cold), with the
filled cache (warm: no frames, encoder or similarity search, only labels combined), and
warm again with another top-k and temperature (``warm_other``: half the top-k, twice the
temperature, served by the same matches). Each run writes its own output folder, so no
sequence record is reused. Reports per phase, summed over the videos: reading and decoding
frames, features (encoder, or cache read/write), propagation (similarity search and labels,
or matches read and labels), the wall time of each run (which also holds reading the
annotations, writing the predictions and scoring) and the ratios. The metrics of the first
three runs are checked to be equal (float32 storage is exact).

    python bench/cache.py                                  # 3 videos x 24 frames, 240x432
    python bench/cache.py --frames 48 --size 480,864 --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.synthetic import generate_davis  # noqa: E402
from evaluate import evaluate  # noqa: E402
from propagate.config import PropagationConfig  # noqa: E402
from propagate.eval_config import EvalConfig  # noqa: E402


def timed_run(cfg: EvalConfig) -> dict:
    tick = time.perf_counter()
    results = evaluate(cfg)
    wall = time.perf_counter() - tick
    t = results["timings"]
    return {"wall_s": wall, "frames_s": t["frames_s"], "features_s": t["features_s"],
            "propagation_s": t["propagation_s"], "cache_hits": t["cache_hits"], "match_hits": t["match_hits"],
            "metrics": results["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=3)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="240,432", help="H,W of the generated frames")
    parser.add_argument("--encoder", default="resnet18-crw")
    parser.add_argument("--preset", default="crw")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=None, help="folder for the data, cache and outputs (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split(","))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        root = generate_davis(work / "DAVIS", num_sequences=args.sequences, num_frames=args.frames, size=size, seed=0)

        def cfg(name: str, cache: bool) -> EvalConfig:
            return EvalConfig(data_root=str(root), encoder=args.encoder, preset=args.preset, device=args.device,
                              out=str(work / name), cache=str(work / "cache") if cache else None, overwrite=True)

        runs = {"no_cache": timed_run(cfg("no-cache", False)), "cold": timed_run(cfg("cold", True)),
                "warm": timed_run(cfg("warm", True))}
        preset = PropagationConfig.preset(args.preset)
        other = dataclasses.replace(cfg("warm-other", True), topk=max(1, preset.topk // 2),
                                    temperature=2 * preset.temperature)
        runs["warm_other"] = timed_run(other)

    if not runs["no_cache"]["metrics"] == runs["cold"]["metrics"] == runs["warm"]["metrics"]:
        raise SystemExit("metrics differ between the runs: the cache is not exact")
    cold, warm = runs["cold"], runs["warm"]
    ratios = {"features_cold_over_warm": cold["features_s"] / max(warm["features_s"], 1e-9),
              "features_and_frames_cold_over_warm": (cold["features_s"] + cold["frames_s"])
              / max(warm["features_s"] + warm["frames_s"], 1e-9),
              "propagation_cold_over_warm": cold["propagation_s"] / max(warm["propagation_s"], 1e-9),
              "overall_cold_over_warm": cold["wall_s"] / warm["wall_s"],
              "overall_no_cache_over_warm": runs["no_cache"]["wall_s"] / warm["wall_s"]}
    print(f"\n{args.sequences} videos x {args.frames} frames at {size[0]}x{size[1]}, {args.encoder}, "
          f"preset {args.preset}, device {args.device}")
    print(f"{'run':<12}{'frames s':>10}{'features s':>12}{'propagation s':>15}{'wall s':>10}"
          f"{'feature hits':>14}{'match hits':>12}")
    for name, run in runs.items():
        print(f"{name:<12}{run['frames_s']:>10.2f}{run['features_s']:>12.2f}{run['propagation_s']:>15.2f}"
              f"{run['wall_s']:>10.2f}{run['cache_hits']:>14}{run['match_hits']:>12}")
    for name, value in ratios.items():
        print(f"{name}: " + ("the warm run skips it" if value > 1e6 else f"{value:.1f}x"))
    print(f"J&F-Mean (all runs): {warm['metrics']['J&F-Mean']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "ratios": ratios, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
