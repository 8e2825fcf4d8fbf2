"""Training throughput of the contrastive random walk, measured in one run.

    python bench/train.py                       # README configuration, batch 2, this machine
    python bench/train.py --device cuda --batch-size 8 --steps 20
    python bench/train.py --mode dense --crop-size 64    # the demo configuration

Three numbers for the README training configuration (grid nodes: 49 patches of 64x64 from
256x256 crops, 4-frame clips, ResNet-18 stride 8 to layer4, tau 0.05, edge dropout 0.1,
Adam) at a small batch:

1. decode: clips/s and frames/s of the clip dataset in this process, decoding alone and
   decoding + augmentation (``datasets.video.measure_decode_throughput``);
2. model step alone: forward, loss, backward and Adam step on synthetic tensors of the
   batch's shape (clips/s);
3. with data loading: the same step fed by the DataLoader (``--num-workers`` processes);
   clips/s and the share of the time spent waiting for the next batch.

4. step options: the model step on the same synthetic batch with each ``--options`` entry
   (``none``; ``channels-last``, ``compile`` and ``channels-last+compile``: TrainConfig's
   ``channels_last`` and ``compile``), each from the same initial weights and the same
   edge-dropout draws: s/step, speed-up over ``none``, the share of the step in the encoder's
   forward (with the walk head), the walk's forward (affinities and loss), the backward pass
   and the optimiser, the
   first step's time (it includes compiling) and the largest loss difference from ``none``
   over every step (fp32: expected within 1e-5).

Data: ``--data`` if given, else ``../shared/data/clips`` next to the repository (three real
mp4s) if present, else the demo's generated synthetic clips. Prints a table; ``--json``
also writes the numbers. ``--step-only`` measures the step options only.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from corr.cli import parse_config  # noqa: E402
from corr.encoders import build_encoder  # noqa: E402
from corr.graph import WalkModel  # noqa: E402
from corr.io import atomic_write_json  # noqa: E402
from corr.runtime import start_runtime, sync_device  # noqa: E402
from corr.train import TrainConfig  # noqa: E402
from corr.train.config import resolve_config  # noqa: E402
from corr.train.data import batch_stream, build_dataset, prepare_demo_data  # noqa: E402
from corr.train.module import build_losses, build_train_module  # noqa: E402
from corr.train.objectives import encoder_kwargs  # noqa: E402

SHARED_CLIPS = REPO.parent / "shared" / "data" / "clips"


@dataclass
class BenchConfig:
    """Clips/s of CRW training: model step alone, with data loading, and decoding."""

    data: Optional[str] = field(default=None, metadata={"help": "videos (none: ../shared/data/clips or generated)"})
    batch_size: int = field(default=2, metadata={"help": "clips per step"})
    steps: int = field(default=4, metadata={"help": "timed steps per measurement"})
    warmup: int = field(default=1, metadata={"help": "untimed steps first"})
    mode: str = field(default="grid", metadata={"help": "grid or dense nodes"})
    crop_size: int = field(default=256, metadata={"help": "frame crop size"})
    clip_len: int = field(default=4, metadata={"help": "frames per clip"})
    encoder: str = field(default="resnet18-crw", metadata={"help": "encoder name"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers"})
    decode_clips: int = field(default=10, metadata={"help": "clips timed for decode throughput"})
    json: Optional[str] = field(default=None, metadata={"help": "also write the numbers here"})
    options: tuple[str, ...] = field(default=("none", "channels-last", "compile", "channels-last+compile"),
                                     metadata={"help": "step options compared (none, channels-last, compile, "
                                                       "channels-last+compile)"})
    step_only: bool = field(default=False, metadata={"help": "measure the step options only"})


def _time_steps(step, batches, device: torch.device, warmup: int, steps: int) -> dict:
    """Run ``step(batch)`` on ``warmup + steps`` batches from ``batches``; time the last ``steps``."""
    wait = total = 0.0
    clips = 0
    for i in range(warmup + steps):
        start = time.perf_counter()
        clip = next(batches).to(device, non_blocking=True)
        waited = time.perf_counter() - start
        step(clip)
        sync_device(device)
        if i >= warmup:
            wait += waited
            total += time.perf_counter() - start
            clips += clip.shape[0]
    return {"clips_per_s": clips / total, "s_per_step": total / steps, "data_wait_share": wait / total}


STEP_OPTIONS = {"none": {}, "channels-last": {"channels_last": True}, "compile": {"compile": True},
                "channels-last+compile": {"channels_last": True, "compile": True}}


def step_options(bench: BenchConfig, cfg: TrainConfig, runtime, clip: torch.Tensor) -> dict:
    """The model step on ``clip`` with each of ``bench.options``: times per phase and losses."""
    results = {}
    for name in bench.options:
        if name not in STEP_OPTIONS:
            raise SystemExit(f"--options: unknown {name!r}; known: {', '.join(STEP_OPTIONS)}")
        torch.manual_seed(0)
        module = build_train_module(dataclasses.replace(cfg, **STEP_OPTIONS[name]), runtime)
        module.train()
        optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=cfg.betas)
        phases = dict.fromkeys(("encoder", "walk", "backward", "optimiser"), 0.0)
        losses, first = [], 0.0
        for i in range(bench.warmup + bench.steps):
            torch.manual_seed(1000 + i)  # the same edge dropout for every option
            marks = [time.perf_counter()]
            nodes = module.model(clip)
            sync_device(runtime.device)
            marks.append(time.perf_counter())
            loss, _ = module.losses(nodes)
            sync_device(runtime.device)
            marks.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sync_device(runtime.device)
            marks.append(time.perf_counter())
            optimizer.step()
            sync_device(runtime.device)
            marks.append(time.perf_counter())
            losses.append(float(loss.detach()))
            if i == 0:
                first = marks[-1] - marks[0]
            if i >= bench.warmup:
                for phase, t0, t1 in zip(phases, marks, marks[1:]):
                    phases[phase] += t1 - t0
        total = sum(phases.values())
        results[name] = {"s_per_step": total / bench.steps, "first_step_s": first, "losses": losses,
                         "shares": {phase: t / total for phase, t in phases.items()}}
    base = results.get("none", next(iter(results.values())))
    for r in results.values():
        r["speedup"] = base["s_per_step"] / r["s_per_step"]
        r["max_loss_diff"] = max(abs(a - b) for a, b in zip(r["losses"], base["losses"]))
    return results


def run(bench: BenchConfig) -> dict:
    cfg = resolve_config(TrainConfig(data=bench.data or str(SHARED_CLIPS), batch_size=bench.batch_size, mode=bench.mode,
                                     crop_size=bench.crop_size, clip_len=bench.clip_len, encoder=bench.encoder,
                                     device=bench.device, num_workers=bench.num_workers, progress=False))
    runtime = start_runtime(cfg.device, backend="auto", amp=cfg.amp)
    if bench.data is not None:
        source = Path(bench.data)
    elif SHARED_CLIPS.is_dir():
        source = SHARED_CLIPS
    else:
        source = prepare_demo_data(runtime)
    cfg = dataclasses.replace(cfg, data=str(source))
    dataset = build_dataset(cfg, source)

    example = dataset[0]["clip"]
    synthetic = torch.randn(cfg.batch_size, *example.shape, generator=torch.Generator().manual_seed(0))
    options = step_options(bench, cfg, runtime, synthetic.to(runtime.device))
    common = {"device": str(runtime.device), "amp": runtime.amp, "data": str(source), "backend": dataset.backend,
              "num_videos": len(dataset.videos), "batch_size": cfg.batch_size, "clip_shape": list(example.shape),
              "mode": cfg.mode, "crop_size": cfg.crop_size, "encoder": cfg.encoder, "num_workers": cfg.num_workers,
              "threads": torch.get_num_threads(), "step_options": options}
    if bench.step_only:
        return common

    from datasets.video import measure_decode_throughput

    transform, dataset.transform = dataset.transform, None
    decode_only = measure_decode_throughput(dataset, bench.decode_clips)
    dataset.transform = transform
    decode_augment = measure_decode_throughput(dataset, bench.decode_clips)

    torch.manual_seed(0)
    model = WalkModel(build_encoder(cfg.encoder, **encoder_kwargs(cfg.encoder, cfg.padding)), cfg.head_dim, cfg.mode,
                      cfg.head_depth, cfg.featdrop)
    model.to(runtime.device).train()
    loss_fn = build_losses(cfg).to(runtime.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp)

    def step(clip: torch.Tensor) -> None:
        with torch.autocast(device_type=runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
            nodes = model(clip)
        loss, _ = loss_fn(nodes)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def synthetic_batches():
        while True:
            yield synthetic

    alone = _time_steps(step, synthetic_batches(), runtime.device, bench.warmup, bench.steps)
    loaded = _time_steps(step, (b["clip"] for b in batch_stream(dataset, cfg, runtime, 0)), runtime.device,
                         bench.warmup, bench.steps)
    return {**common, "decode": decode_only, "decode_augment": decode_augment, "model_step": alone,
            "with_data": loaded}


def print_table(r: dict) -> None:
    print(f"CRW training throughput: {r['encoder']} {r['mode']} nodes, clip {tuple(r['clip_shape'])}, batch "
          f"{r['batch_size']}, {r['device']}{' AMP' if r['amp'] else ''}, {r['threads']} threads, "
          f"{r['num_workers']} loader workers")
    print(f"data: {r['data']} ({r['num_videos']} videos, {r['backend']} backend)")
    print(f"\n{'step option':<24}{'s/step':>8}{'speed-up':>10}{'encoder':>9}{'walk':>7}{'backward':>10}"
          f"{'optimiser':>11}{'1st step s':>12}{'max |loss - none|':>19}")
    for name, o in r["step_options"].items():
        sh = o["shares"]
        print(f"{name:<24}{o['s_per_step']:>8.3f}{o['speedup']:>9.2f}x{100 * sh['encoder']:>8.0f}%"
              f"{100 * sh['walk']:>6.0f}%{100 * sh['backward']:>9.0f}%{100 * sh['optimiser']:>10.0f}%"
              f"{o['first_step_s']:>12.1f}{o['max_loss_diff']:>19.1e}")
    if "decode" not in r:
        return
    print()
    rows = [
        ("decode only (1 process)", r["decode"]["clips_per_s"], f"{r['decode']['frames_per_s']:.1f} frames/s"),
        ("decode + augment (1 process)", r["decode_augment"]["clips_per_s"],
         f"{r['decode_augment']['frames_per_s']:.1f} frames/s"),
        ("model step alone", r["model_step"]["clips_per_s"], f"{r['model_step']['s_per_step']:.2f} s/step"),
        ("model step + data loading", r["with_data"]["clips_per_s"],
         f"data wait {100 * r['with_data']['data_wait_share']:.1f}%"),
    ]
    print(f"{'measurement':<32}{'clips/s':>10}  note")
    for name, value, note in rows:
        print(f"{name:<32}{value:>10.2f}  {note}")


def main(argv: Optional[list[str]] = None) -> dict:
    bench = parse_config(BenchConfig, argv, description=__doc__)
    result = run(bench)
    print_table(result)
    if bench.json:
        atomic_write_json(bench.json, result)
    return result


if __name__ == "__main__":
    main()
