"""Speed and memory of label propagation on a DAVIS-sized problem.

Compares, in one run, the step-wise :class:`propagate.Propagator` (local windows for the
short memory) with the dense-masked formulation (:func:`propagate.dense.propagate_dense`:
full affinity over all context positions, masked afterwards) on the same random unit
features: time per frame, peak memory, their ratios, and the largest difference between
their outputs. The propagator is also run on videos of growing length to show that its
peak memory does not grow with the number of frames.

    python bench/propagate.py                       # T=50, C=256, 60x107 grid, crw preset
    python bench/propagate.py --device cuda
    python bench/propagate.py --frames 20 --dense-frames 2   # quicker

Each measurement runs in its own process, so peak memory (resident set size above the
process's size before any feature exists, on CPU; ``torch.cuda.max_memory_allocated`` on
CUDA) is that measurement's alone. The propagator's memory is dominated by its short
memory: n frames stored as overlapping column strips (about (8 + 2 * 11) / 8 = 3.75 copies
of each feature map), which makes every tile window a view and is constant in T.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from propagate import PropagationConfig, Propagator  # noqa: E402
from propagate.dense import propagate_dense  # noqa: E402


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


def measure(method: str, frames: int, args) -> dict:
    """One measurement: propagate ``frames`` frames with ``method`` ('local' or 'dense')."""
    cfg = PropagationConfig.preset(args.preset)
    C, h, w, K, dev = args.channels, args.height, args.width, args.labels, args.device
    base = 0 if dev.startswith("cuda") else _current_rss()  # before any feature or state exists
    label0 = first_label(K, h, w, dev)
    if method == "dense":
        feats = torch.stack([frame_features(t, C, h, w, dev) for t in range(frames)])
        sync(dev)
        start = time.perf_counter()
        out = propagate_dense(feats, label0, cfg, query_chunk=args.dense_chunk)
        sync(dev)
        elapsed = time.perf_counter() - start
    else:
        prop = Propagator(cfg)
        prop.start(frame_features(0, C, h, w, dev), label0)
        outs = [label0]
        sync(dev)
        start = time.perf_counter()
        for t in range(1, frames):
            label = prop.step(frame_features(t, C, h, w, dev))
            if t < args.dense_frames + 1:
                outs.append(label)
        sync(dev)
        elapsed = time.perf_counter() - start
        out = torch.stack(outs)
    result = {"method": method, "frames": frames, "s_per_frame": elapsed / (frames - 1),
              "peak_mb": peak_bytes(dev) / 2**20, "base_mb": base / 2**20}
    if args.save_output:
        torch.save(out[: args.dense_frames + 1].cpu(), args.save_output)
    return result


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_child(method: str, frames: int, args, save: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--child-frames", str(frames),
           "--frames", str(args.frames), "--channels", str(args.channels), "--height", str(args.height),
           "--width", str(args.width), "--labels", str(args.labels), "--preset", args.preset,
           "--device", args.device, "--dense-frames", str(args.dense_frames),
           "--dense-chunk", str(args.dense_chunk)]
    if save is not None:
        cmd += ["--save-output", str(save)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--width", type=int, default=107)
    parser.add_argument("--labels", type=int, default=4, help="label channels (objects + background)")
    parser.add_argument("--preset", default="crw")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dense-frames", type=int, default=4,
                        help="frames after frame 0 on which the (slow) dense baseline is timed and compared")
    parser.add_argument("--dense-chunk", type=int, default=512, help="query rows per dense affinity chunk")
    parser.add_argument("--child", choices=["local", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--child-frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save-output", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.child_frames, args)))
        return

    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-propagate-"))
    print(f"problem: grid {args.height}x{args.width}, C={args.channels}, K={args.labels}, "
          f"preset {args.preset} ({PropagationConfig.preset(args.preset)}), device {args.device}")
    dense = run_child("dense", args.dense_frames + 1, args, tmp / "dense.pt")
    local_short = run_child("local", args.dense_frames + 1, args, tmp / "local.pt")
    lengths = sorted({max(2, args.frames // 4), max(2, args.frames // 2), args.frames})
    local_runs = [run_child("local", n, args, None) for n in lengths]
    diff = (torch.load(tmp / "dense.pt") - torch.load(tmp / "local.pt")).abs().max().item()

    print(f"\n{'method':<34}{'frames':>7}{'s/frame':>10}{'peak MB':>10}{'above start MB':>16}")
    for name, run in [("dense-masked (all context keys)", dense), ("propagator (local windows)", local_short)] + [
            ("propagator (local windows)", run) for run in local_runs]:
        work = run["peak_mb"] - run["base_mb"]
        print(f"{name:<34}{run['frames']:>7}{run['s_per_frame']:>10.3f}{run['peak_mb']:>10.0f}{work:>16.0f}")
    print(f"\nspeed-up, same frames: {dense['s_per_frame'] / local_short['s_per_frame']:.1f}x")
    work_ratio = (dense["peak_mb"] - dense["base_mb"]) / max(local_short["peak_mb"] - local_short["base_mb"], 1e-9)
    print(f"peak memory above process start, dense ({dense['frames']} frames of features held) / propagator: "
          f"{work_ratio:.2f}x")
    growth = local_runs[-1]["peak_mb"] - local_runs[0]["peak_mb"]
    print(f"propagator peak memory growth from {local_runs[0]['frames']} to {local_runs[-1]['frames']} frames: "
          f"{growth:+.0f} MB")
    print(f"max |propagator - dense| over frames 0..{args.dense_frames}: {diff:.2e}")


if __name__ == "__main__":
    main()
