"""What feature extraction costs: features per second and peak memory of each encoder family at 480p.

Each encoder (random weights: the cost does not depend on them) turns ``--frames`` random
480x854 frames into features, ``--batch`` frames per call, under ``torch.inference_mode``
in eval mode, the way ``evaluate.py`` calls it. One warm-up batch is not timed. Rates are
frames per second (one feature map per frame) and their ratio to ``resnet18-crw``, the
baseline measured in the same run.

    python bench/encoders.py                      # CPU (CUDA when present), 8 frames per encoder
    python bench/encoders.py --frames 4 --encoders resnet18-crw,dino-vits16
    python bench/encoders.py --device cuda

Each measurement runs in its own process, so peak memory is that encoder's alone: on CPU
the resident set size above the process's size before the encoder was built; on CUDA
``torch.cuda.max_memory_allocated``.
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
from corr.encoders import build_encoder  # noqa: E402
from datasets.transforms import normalize_frames  # noqa: E402

#: One encoder per family (ResNet stride 8, ResNet-50, DINO ViT-S at patch 16 and 8, ViT-B, DINOv2).
FAMILIES = ("resnet18-crw", "resnet50", "resnet18-s4", "dino-vits16", "dino-vits8", "dino-vitb16", "dinov2-vits14")
BASELINE = "resnet18-crw"


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(name: str, args) -> dict:
    """Time ``args.frames`` frames through encoder ``name``; peak memory above the start."""
    device = torch.device(args.device)
    base = 0 if device.type == "cuda" else _current_rss()
    torch.manual_seed(0)
    encoder = build_encoder(name).to(device).eval()
    frames = np.random.default_rng(0).integers(0, 256, (args.batch, args.height, args.width, 3), dtype=np.uint8)
    with torch.inference_mode():
        out = encoder(normalize_frames(frames, device=device))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, done = time.perf_counter(), 0
        while done < args.frames:
            out = encoder(normalize_frames(frames, device=device))
            done += args.batch
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    return {"encoder": name, "frames": done, "fps": done / elapsed, "grid": list(out.shape[-2:]),
            "channels": out.shape[1], "peak_mb": peak / 2**20}


def run_child(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--frames", str(args.frames), "--batch", str(args.batch),
           "--height", str(args.height), "--width", str(args.width), "--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default=",".join(FAMILIES), help="comma-separated encoder names")
    parser.add_argument("--frames", type=int, default=8, help="timed frames per encoder")
    parser.add_argument("--batch", type=int, default=2, help="frames per encoder call")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args)))
        return

    names = [BASELINE] + [n for n in args.encoders.split(",") if n and n != BASELINE]
    print(f"frames {args.height}x{args.width}, {args.frames} timed per encoder in batches of {args.batch}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    runs = [run_child(name, args) for name in names]
    base = runs[0]
    print(f"\n{'encoder':<16}{'grid':>10}{'C':>6}{'frames/s':>10}{'x ' + BASELINE:>18}{'peak MB':>10}"
          f"{'x ' + BASELINE:>18}")
    for run in runs:
        grid = "x".join(str(v) for v in run["grid"])
        print(f"{run['encoder']:<16}{grid:>10}{run['channels']:>6}{run['fps']:>10.2f}"
              f"{run['fps'] / base['fps']:>18.2f}{run['peak_mb']:>10.0f}"
              f"{run['peak_mb'] / max(base['peak_mb'], 1e-9):>18.2f}")


if __name__ == "__main__":
    main()
