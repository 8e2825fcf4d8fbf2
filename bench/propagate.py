"""Speed and memory of label propagation on a DAVIS-sized problem, in one run.

Three implementations on the same random unit features (60x107 grid, crw preset: 20 + 1
context frames, top-10, radius 12):

* ``dense``: the dense-masked formulation (:func:`propagate.dense.propagate_dense`), the
  specification; timed on the first few frames only (it is slow);
* ``before``: the propagator with the selection it had before the group-maximum selection,
  frozen in ``bench/baselines/propagator_before.py`` (per (frame, column strip) a top-k over
  every window cell, then a top-k over their union; the short memory kept as overlapping
  column strips);
* ``now``: :class:`propagate.Propagator` as it is.

``before`` and ``now`` are timed in one process, stepping in turn on the same frames, so
their ratio holds on a machine whose load changes.

For each channel count (``--channels``, default 3, the raw-pixel encoder's, and 256) it
prints the time per frame, the share of that time spent in matrix products and in selection
(top-k, maxima, gathers; from ``torch.profiler`` on one frame), the speed-up of ``now`` over
``before``, the largest difference of each from ``dense`` over the first frames, and the
peak memory above the process's start on videos of growing length (flat in T).

    python bench/propagate.py                       # C=3 and C=256, this machine
    python bench/propagate.py --channels 256 --frames 20 --dense-frames 1   # quicker
    python bench/propagate.py --device cuda

Each measurement runs in its own process, so peak memory (resident set size above the
process's size before any feature exists, on CPU; ``torch.cuda.max_memory_allocated`` on
CUDA) is that measurement's alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.baselines.propagator_before import MatcherBefore  # noqa: E402
from propagate import PropagationConfig, Propagator  # noqa: E402
from propagate.dense import propagate_dense  # noqa: E402

PRODUCTS = {"aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm"}
SELECTION = {"aten::topk", "aten::amax", "aten::max", "aten::gather", "aten::index", "aten::sort"}


def frame_features(t: int, C: int, h: int, w: int, device: str) -> torch.Tensor:
    """Random unit features of frame t, (C, h, w), the same in every process."""
    g = torch.Generator().manual_seed(1000 + t)
    return F.normalize(torch.randn(C, h, w, generator=g), dim=0).to(device)


def first_label(K: int, h: int, w: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.softmax(4 * torch.randn(K, h, w, generator=g), dim=0).to(device)


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def make_propagator(method: str, cfg: PropagationConfig) -> Propagator:
    prop = Propagator(cfg)
    if method == "before":
        prop.matcher = MatcherBefore(cfg)
    return prop


def time_shares(prop: Propagator, feat: torch.Tensor) -> dict:
    """Shares of one step's CPU time in matrix products and in selection (torch.profiler, self time)."""
    from torch.profiler import profile

    with profile() as prof:
        prop.step(feat)
    totals = {"products": 0.0, "selection": 0.0, "all": 0.0}
    for event in prof.key_averages():
        totals["all"] += event.self_cpu_time_total
        if event.key in PRODUCTS:
            totals["products"] += event.self_cpu_time_total
        elif event.key in SELECTION:
            totals["selection"] += event.self_cpu_time_total
    return {"products_share": totals["products"] / totals["all"],
            "selection_share": totals["selection"] / totals["all"]}


def measure(method: str, C: int, frames: int, args) -> dict:
    """One measurement of ``frames`` frames of C channels: ``dense``; ``before`` or ``now`` alone (for
    memory); or ``both``, before and now stepping in turn frame by frame, so that a changing load on
    the machine weighs on both alike."""
    cfg = PropagationConfig.preset(args.preset)
    h, w, K, dev = args.height, args.width, args.labels, args.device
    base = 0 if dev.startswith("cuda") else _current_rss()  # before any feature or state exists
    label0 = first_label(K, h, w, dev)
    result = {"channels": C, "frames": frames}
    if method == "dense":
        feats = torch.stack([frame_features(t, C, h, w, dev) for t in range(frames)])
        sync(dev)
        start = time.perf_counter()
        outs = {"dense": propagate_dense(feats, label0, cfg, query_chunk=args.dense_chunk)}
        sync(dev)
        result["dense"] = {"s_per_frame": (time.perf_counter() - start) / (frames - 1)}
    else:
        methods = ["before", "now"] if method == "both" else [method]
        props = {m: make_propagator(m, cfg) for m in methods}
        outs = {m: [label0] for m in methods}
        elapsed = dict.fromkeys(methods, 0.0)
        for prop in props.values():
            prop.start(frame_features(0, C, h, w, dev), label0)
        for t in range(1, frames):
            feat = frame_features(t, C, h, w, dev)
            for m, prop in props.items():
                sync(dev)
                start = time.perf_counter()
                label = prop.step(feat)
                sync(dev)
                elapsed[m] += time.perf_counter() - start
                if t <= args.dense_frames:
                    outs[m].append(label)
        for m, prop in props.items():
            result[m] = {"s_per_frame": elapsed[m] / (frames - 1)}
            if args.shares:
                result[m].update(time_shares(prop, frame_features(frames, C, h, w, dev)))
        outs = {m: torch.stack(o) for m, o in outs.items()}
    result.update({"peak_mb": peak_bytes(dev) / 2**20, "base_mb": base / 2**20})
    if args.save_output:
        torch.save({m: o[: args.dense_frames + 1].cpu() for m, o in outs.items()}, args.save_output)
    return result


def run_child(method: str, C: int, frames: int, args, save: Path | None = None, shares: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--child-frames", str(frames), "--child-channels", str(C),
           "--height", str(args.height), "--width", str(args.width), "--labels", str(args.labels),
           "--preset", args.preset, "--device", args.device, "--dense-frames", str(args.dense_frames),
           "--dense-chunk", str(args.dense_chunk)]
    if save is not None:
        cmd += ["--save-output", str(save)]
    if shares:
        cmd += ["--shares"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs="+", default=[3, 256])
    parser.add_argument("--frames", type=int, default=12, help="frames timed per implementation")
    parser.add_argument("--memory-frames", type=int, nargs="+", default=[8, 16, 32],
                        help="video lengths on which the peak memory of 'now' is measured (largest channel count)")
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--width", type=int, default=107)
    parser.add_argument("--labels", type=int, default=4, help="label channels (objects + background)")
    parser.add_argument("--preset", default="crw")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dense-frames", type=int, default=2,
                        help="frames after frame 0 on which the outputs are compared with the (slow) dense formulation")
    parser.add_argument("--dense-chunk", type=int, default=512, help="query rows per dense affinity chunk")
    parser.add_argument("--child", choices=["dense", "before", "now", "both"], help=argparse.SUPPRESS)
    parser.add_argument("--child-frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-channels", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shares", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save-output", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.child_channels, args.child_frames, args)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-propagate-"))
    cfg = PropagationConfig.preset(args.preset)
    print(f"problem: grid {args.height}x{args.width}, K={args.labels}, preset {args.preset} ({cfg}), "
          f"device {args.device}, {torch.get_num_threads()} threads")
    print(f"\n{'C':>4}  {'method':<8}{'frames':>7}{'s/frame':>10}{'products':>10}{'selection':>11}"
          f"{'peak MB above start':>21}{'max |x - dense|':>17}")
    summary = []
    for C in args.channels:
        dense = run_child("dense", C, args.dense_frames + 1, args, tmp / f"dense{C}.pt")
        reference = torch.load(tmp / f"dense{C}.pt")["dense"]
        both = run_child("both", C, max(args.frames, args.dense_frames + 1), args, tmp / f"both{C}.pt", shares=True)
        outputs = torch.load(tmp / f"both{C}.pt")
        alone = {m: run_child(m, C, args.memory_frames[0], args) for m in ("before", "now")}
        rows = [("dense", dense["dense"], dense["frames"], dense)] + [
            (m, both[m], both["frames"], alone[m]) for m in ("before", "now")]
        for name, run, frames, memory in rows:
            shares = (f"{100 * run['products_share']:>9.0f}%{100 * run['selection_share']:>10.0f}%"
                      if "products_share" in run else f"{'':>10}{'':>11}")
            diff = (f"{(outputs[name] - reference).abs().max().item():>17.1e}" if name in outputs
                    else f"{'':>17}")
            print(f"{C:>4}  {name:<8}{frames:>7}{run['s_per_frame']:>10.3f}{shares}"
                  f"{memory['peak_mb'] - memory['base_mb']:>21.0f}{diff}")
        summary.append((C, both["before"]["s_per_frame"] / both["now"]["s_per_frame"],
                        dense["dense"]["s_per_frame"] / both["now"]["s_per_frame"]))
    print("(peak memory: dense holding its frames; before and now on "
          f"{args.memory_frames[0]} frames, each in its own process)\n")
    for C, speedup, over_dense in summary:
        print(f"C={C}: now is {speedup:.2f}x faster than before, {over_dense:.1f}x faster than dense")
    C = max(args.channels)
    memory = [run_child("now", C, n, args) for n in args.memory_frames]
    above = ", ".join(f"{m['frames']} frames {m['peak_mb'] - m['base_mb']:.0f} MB" for m in memory)
    print(f"peak memory of 'now' above start at C={C}: {above} "
          f"(growth {memory[-1]['peak_mb'] - memory[0]['peak_mb']:+.0f} MB)")


if __name__ == "__main__":
    main()
