"""Speed and memory of the TAP-Vid walk tracker (corr.flow_track) at test-time upsampling 1, 2 and 4.

A 256x256 video (the TAP-Vid evaluation size) of random frames goes through
:func:`corr.flow_track.track_video` with a random global-match network; each upsampling
factor runs in its own process, so its peak memory (resident set size above the process's
size once the network is built, on CPU; ``torch.cuda.max_memory_allocated`` on CUDA) is its
own. At factor ``u`` the network sees ``256 u`` px frames, a ``64 u x 64 u`` cell grid: the
global matching holds at most ``corr.flow_track.MAX_LOGITS`` logits at once and the window
attention its own chunk (``corr.global_match.window_attention``), so memory grows with the
feature maps (``u^2``), not with the ``(64 u)^4`` all-pairs matrix.

    python bench/walk_tracker.py                        # small network, 3 frames, u = 1, 2, 4
    python bench/walk_tracker.py --match-net gmflow --device cuda --frames 8
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corr.flow_track import FlowTrackConfig, track_video  # noqa: E402
from corr.global_match import match_config, seeded_global_match  # noqa: E402


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(args) -> dict:
    """One factor, in this process."""
    device = args.device
    model = seeded_global_match(0, match_config(args.match_net)).to(device).eval()
    frames = torch.randn(args.frames, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    queries = np.array([[t, 100.0 + t, 120.0 - t] for t in range(args.frames)])
    base = peak_bytes(device)
    cfg = FlowTrackConfig(walk_setting=args.setting, upsample_factor=args.factor)
    tick = time.perf_counter()
    tracks, _ = track_video(model, frames, queries, cfg, batch_size=1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tick
    assert tracks.shape == (args.frames, args.frames, 2)
    return {"factor": args.factor, "seconds_per_frame": seconds / args.frames,
            "peak_mib": (peak_bytes(device) - (0 if device.startswith("cuda") else base)) / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--match-net", default="small", help="gmflow (the authors') or small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--setting", default="chained", help="chained or direct")
    parser.add_argument("--factors", default="1,2,4")
    parser.add_argument("--factor", type=int, default=None, help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args()
    if args.factor is not None:
        print(json.dumps(measure(args)))
        return
    print(f"walk tracker, {args.match_net} network, {args.frames} frames of {args.size}x{args.size}, {args.setting}, "
          f"{args.device}")
    print(f"{'upsample':>8} {'cells':>9} {'s / frame':>10} {'peak MiB':>9}")
    for factor in (int(f) for f in args.factors.split(",")):
        command = [sys.executable, __file__, "--factor", str(factor), "--match-net", args.match_net, "--device",
                   args.device, "--frames", str(args.frames), "--size", str(args.size), "--setting", args.setting]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        cells = args.size * factor // 4
        print(f"{factor:>8} {f'{cells}x{cells}':>9} {row['seconds_per_frame']:>10.2f} {row['peak_mib']:>9.0f}")


if __name__ == "__main__":
    main()
