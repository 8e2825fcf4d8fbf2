"""Peak memory of the video API (:func:`propagate.track`) against the video's length.

Writes generated 480p videos (a textured square moving over a gradient, H.264) of each
length, then propagates a first-frame mask through each with :func:`propagate.track`,
consuming the frames as they come (as a script saving masks would). Each measurement runs
in its own process, so its peak resident set size (``ru_maxrss``) is its own; reported is
the peak above the process's size once the libraries and the encoder are loaded, before
the video is opened. Streaming means the two numbers agree: frames, features and labels
are held for a batch and the propagator's bounded context, never for the whole video.

    python bench/track.py                                  # 50 and 500 frames, 854x480, pixel encoder
    python bench/track.py --max-side 427                   # features at half size, decoding at 480p (quicker)
    python bench/track.py --frames 50,500 --encoder resnet18-crw --context 20
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corr.runtime import resolve_device  # noqa: E402
from propagate import track  # noqa: E402
from propagate.encoder_loading import load_encoder  # noqa: E402
from propagate.eval_config import EvalConfig  # noqa: E402
from propagate.video_writer import write_video  # noqa: E402

SIDE = 96


def frames(num_frames: int, height: int, width: int):
    """RGB frames: a gradient background and a textured square moving right and down."""
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([40 + 100 * xx / width, 60 + 120 * yy / height, np.full((height, width), 180.0)], -1)
    texture = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3))
    for t in range(num_frames):
        frame = background.copy()
        y, x = square_corner(t, height, width)
        frame[y:y + SIDE, x:x + SIDE] = texture
        yield frame.astype(np.uint8)


def square_corner(t: int, height: int, width: int) -> tuple[int, int]:
    """Top-left corner of the square in frame t (bounces inside the frame)."""
    span_y, span_x = height - SIDE, width - SIDE
    return abs((2 * t) % (2 * span_y) - span_y), abs((3 * t) % (2 * span_x) - span_x)


def first_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    y, x = square_corner(0, height, width)
    mask[y:y + SIDE, x:x + SIDE] = 1
    return mask


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(video: Path, args) -> dict:
    """One measurement, in this process: track the whole video, keep nothing."""
    device = resolve_device(args.device)
    encoder, _ = load_encoder(EvalConfig(task="video", encoder=args.encoder), device)
    height, width = args.height, args.width
    mask = first_mask(height, width)
    base = current_rss()
    start, count, area = time.perf_counter(), 0, 0
    for result in track(str(video), first_mask=mask, encoder=encoder, device=args.device, context=args.context,
                          max_side=args.max_side):
        count += 1
        area += int((result.mask == 1).sum())
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"frames": count, "s_per_frame": elapsed / count, "base_mb": base / 2**20, "peak_mb": peak / 2**20,
            "above_start_mb": (peak - base) / 2**20, "mean_mask_area": area / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="50,500", help="comma-separated video lengths")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--encoder", default="pixel")
    parser.add_argument("--context", type=int, default=2, help="short-memory frames (the crw preset's is 20)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="the input's long side (default: the API's, 854: 480p frames are not resized)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child), args)))
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-track-"))
    lengths = [int(n) for n in args.frames.split(",")]
    print(f"{args.width}x{args.height} H.264 videos, encoder {args.encoder}, crw preset with context {args.context}, "
          f"input long side {args.max_side or 'default'}, device {args.device}")
    rows = []
    for n in lengths:
        video = write_video(folder / f"{n}.mp4", frames(n, args.height, args.width), fps=25)
        cmd = [sys.executable, __file__, "--child", str(video), "--height", str(args.height), "--width",
               str(args.width), "--encoder", args.encoder, "--context", str(args.context), "--device", args.device]
        cmd += ["--max-side", str(args.max_side)] if args.max_side else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\n{'frames':>7}{'s/frame':>10}{'start MB':>10}{'peak MB':>10}{'above start MB':>16}")
    for row in rows:
        print(f"{row['frames']:>7}{row['s_per_frame']:>10.3f}{row['base_mb']:>10.0f}{row['peak_mb']:>10.0f}"
              f"{row['above_start_mb']:>16.0f}")
    growth = rows[-1]["above_start_mb"] - rows[0]["above_start_mb"]
    print(f"\npeak above start, {rows[-1]['frames']} frames minus {rows[0]['frames']} frames: {growth:+.0f} MB "
          f"(holding the {rows[-1]['frames']} decoded frames alone would take "
          f"{rows[-1]['frames'] * args.height * args.width * 3 / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
