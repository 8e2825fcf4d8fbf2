"""The training loop: data order, resumption, DDP, corrupt videos, checkpoints, failures."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from corr.encoders import ENCODERS
from corr.graph import WalkModel
from corr.train import TrainConfig, train
from corr.train.checkpoint import NonFiniteLossError
from corr.train.config import resolve_config
from corr.train.data import batches_per_epoch
from corr.train.figures import cycle_image, pixel_image, walk_figure, walk_image
from corr.train.module import TrainModule, build_losses
from corr.train.objectives import parse_loss_spec


class _TinyEncoder(torch.nn.Module):
    """A three-conv stride-8 encoder with BatchNorm: keeps the loop tests fast."""

    stride, out_channels = 8, 16

    def __init__(self):
        super().__init__()
        layers = []
        for c_in, c_out in ((3, 8), (8, 16), (16, 16)):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, 2, 1), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1])

    def forward(self, images):
        return self.net(images)


@pytest.fixture(autouse=True)
def _tiny_encoder(monkeypatch):
    monkeypatch.setitem(ENCODERS, "tiny", _TinyEncoder)


def _write_frame_folder(folder: Path, num_frames: int, seed: int) -> None:
    """A square drifting over a noise background, as JPEG frames."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    folder.mkdir(parents=True)
    for t in range(num_frames):
        frame = background.copy()
        x = 5 + 3 * t
        frame[14:30, x:x + 16] = (255, 40 * seed % 255, 0)
        cv2.imwrite(str(folder / f"{t:05d}.jpg"), frame)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        _write_frame_folder(root / f"video{i}", num_frames=8, seed=i)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    return root


def _config(videos: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data=str(videos), out=str(out), steps=4, batch_size=2, clip_len=3, frame_skip=1,
                  clips_per_video=2, mode="dense", crop_size=32, num_workers=0, checkpoint_every=2, log_every=1,
                  image_every=2, device="cpu", encoder="tiny", cache_dir=str(out / "index-cache"), progress=False,
                  seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def test_resume_gives_the_same_next_losses_and_skips_the_corrupt_video(videos, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    straight = train(_config(videos, tmp_path / "straight"))
    assert sorted(straight.losses) == [1, 2, 3, 4]
    # 3 frame folders x 2 clips / batch 2 -> 3 steps per epoch: step 4 is in the second epoch.
    corrupt = str(videos / "corrupt.mp4")
    assert corrupt in straight.skipped_videos
    assert len(straight.skipped_videos) == 1
    listed = (tmp_path / "straight" / "skipped_videos.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(corrupt + "\t")
    assert sum(corrupt in r.getMessage() for r in caplog.records if r.name == "corr.train") == 1
    assert all(np.isfinite(v) for v in straight.losses.values())

    stopped = train(_config(videos, tmp_path / "resumed", steps=2))
    assert stopped.losses == {1: straight.losses[1], 2: straight.losses[2]}
    with pytest.raises(ValueError, match="batch_size: 2 -> 1"):
        train(_config(videos, tmp_path / "resumed", resume=True, batch_size=1))
    saved_path = tmp_path / "resumed" / "checkpoint.pt"
    saved = torch.load(saved_path, weights_only=True)
    for key in ("pixel_radius", "pixel_domain_weight"):                  # as written before those settings existed
        del saved["config"][key]
    torch.save(saved, saved_path)
    resumed = train(_config(videos, tmp_path / "resumed", resume=True))
    assert resumed.first_step == 2
    assert resumed.losses == {3: straight.losses[3], 4: straight.losses[4]}
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name

    events = list((tmp_path / "straight").glob("events.out.tfevents.*"))
    assert events and (tmp_path / "straight" / "config.json").is_file()


def test_checkpoint_layout_and_load_for_evaluation(videos, tmp_path):
    from corr.encoders import load_checkpoint

    result = train(_config(videos, tmp_path / "run", steps=1, encoder="resnet18-crw", head_dim=8))
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert state["format"] == "corr-checkpoint-v1"
    assert state["encoder"]["name"] == "resnet18-crw"
    assert state["encoder"]["kwargs"] == {"out_layer": "layer4", "padding_mode": "reflect"}
    assert state["step"] == 1 and state["losses"] == {"crw": 1.0}
    assert set(state["heads"]) == {"walk"} and set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert state["config"]["batch_size"] == 2
    assert {"optimizer", "scaler", "scheduler"} <= set(state)

    encoder, info = load_checkpoint(result.checkpoint)
    assert info["step"] == 1 and info["layer4_loaded"]
    trained = result.model.encoder.state_dict()
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, trained[name]), name


class _Clips(torch.utils.data.Dataset):
    """Dense clips (T=3, 3, 16, 16); from epoch ``nan_from_epoch`` on they are NaN."""

    def __init__(self, nan_from_epoch: int = 10**9, skipped_every: int = 0):
        self.epoch, self.nan_from_epoch, self.skipped_every = 0, nan_from_epoch, skipped_every

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 4

    def __getitem__(self, i):
        clip = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(100 * self.epoch + i))
        if self.epoch >= self.nan_from_epoch:
            clip = clip * float("nan")
        skipped = [("/data/broken.mp4", "/data/broken.mp4: cannot decode")] if self.skipped_every else []
        return {"clip": clip, "video": f"v{i}", "skipped": skipped}


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # 4 clips / batch 2 = 2 steps per epoch: step 3 is the first on NaN input.
    cfg = _config(tmp_path, tmp_path / "run", data=None, steps=6, crop_size=16)
    with pytest.raises(NonFiniteLossError, match=r"step 3.*checkpoint\.pt \(step 2\)"):
        train(cfg, dataset=_Clips(nan_from_epoch=1))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["encoder"]["state_dict"].values() if v.is_floating_point())


def test_videos_skipped_while_loading_are_counted_and_reported_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="corr.train")
    cfg = _config(tmp_path, tmp_path / "run", data=None, steps=3, crop_size=16)
    result = train(cfg, dataset=_Clips(skipped_every=1))
    assert result.skipped_videos == {"/data/broken.mp4": "/data/broken.mp4: cannot decode"}
    assert sum("broken.mp4" in r.getMessage() for r in caplog.records) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, cfg: TrainConfig, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ENCODERS["tiny"] = _TinyEncoder
    import torch.distributed as dist

    try:
        result = train(cfg)
        torch.save({"params": {k: v.detach().clone() for k, v in result.model.named_parameters()},
                    "losses": result.losses}, Path(out) / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_ddp_processes_keep_identical_weights(videos, tmp_path):
    cfg = _config(videos, tmp_path / "run", steps=2, batch_size=1, checkpoint_every=100, image_every=0)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["losses"] == ranks[1]["losses"] and sorted(ranks[0]["losses"]) == [1, 2]
    torch.manual_seed(cfg.seed)  # the initialisation train() starts from
    head_dim = resolve_config(cfg).head_dim
    initial = dict(WalkModel(_TinyEncoder(), head_dim=head_dim, mode="dense").named_parameters())
    changed = 0
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
        changed += not torch.equal(value, initial[name].detach())
    assert changed > 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def _ddp_module_worker(rank: int, world_size: int, port: int, cfgs: list[TrainConfig], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ENCODERS["tiny"] = _TinyEncoder
    import torch.distributed as dist

    try:
        for k, cfg in enumerate(cfgs):                       # one process group for all runs (spawning is slow)
            result = train(cfg)
            module = TrainModule(result.model, result.loss_fn)
            params = {n: v.detach().clone() for n, v in module.named_parameters()}
            torch.save(params, Path(out) / f"run{k}-rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ddp_averages_the_gradients_of_the_encoder_and_of_loss_owned_heads(videos, tmp_path):
    # batch 1 per process: the two processes train on different clips (different gradients)
    runs = {"cycle": (dict(clip_len=None, clip_offsets=(0, 1, 2, 3)), ["cycle.tracker", "cycle.project"]),
            "cycle=1,global_walk=1": (dict(clip_len=3), ["cycle.tracker", "global_walk.model"])}
    cfgs = [_config(videos, tmp_path / f"run{k}", loss=loss, steps=2, batch_size=1, checkpoint_every=100,
                    image_every=0, crop_size=48, **options) for k, (loss, (options, _)) in enumerate(runs.items())]
    mp.spawn(_ddp_module_worker, args=(2, _free_port(), cfgs, str(tmp_path)), nprocs=2, join=True)
    for k, (cfg, (_, owned)) in enumerate(zip(cfgs, runs.values())):
        ranks = [torch.load(tmp_path / f"run{k}-rank{r}.pt", weights_only=True) for r in range(2)]
        resolved = resolve_config(cfg)
        torch.manual_seed(cfg.seed)  # the initialisation train() starts from
        initial = dict(TrainModule(WalkModel(_TinyEncoder(), head_dim=resolved.head_dim, mode="dense"),
                                   build_losses(resolved)).named_parameters())
        assert set(ranks[0]) == set(initial), cfg.loss
        for name, value in ranks[0].items():
            assert torch.equal(value, ranks[1][name]), (cfg.loss, name)

        def moved(prefix):
            return [n for n, v in ranks[0].items() if n.startswith(prefix) and not torch.equal(v, initial[n].detach())]
        assert moved("model.encoder."), cfg.loss
        for part in owned:
            assert moved(f"losses.losses.{part}."), (cfg.loss, part)
        assert not moved("model.head."), cfg.loss     # not in these losses' graph: unused under DDP


def test_config_defaults_for_demo_and_reference():
    demo = resolve_config(TrainConfig())
    assert (demo.mode, demo.crop_size, demo.batch_size) == ("dense", 64, 2) and demo.steps <= 300
    reference = resolve_config(TrainConfig(data="/videos"))
    assert (reference.mode, reference.crop_size, reference.batch_size, reference.steps) == ("grid", 256, 20, None)
    assert (reference.lr, reference.temperature, reference.edge_dropout, reference.clip_len) == (1e-4, 0.05, 0.1, 4)
    assert resolve_config(TrainConfig(batch_size=7)).batch_size == 7
    assert parse_loss_spec("crw") == {"crw": 1.0}
    assert parse_loss_spec("crw=0.5") == {"crw": 0.5}
    with pytest.raises(ValueError, match="unknown loss 'flow'"):
        parse_loss_spec("crw,flow=1")
    with pytest.raises(ValueError, match="--mode"):
        resolve_config(TrainConfig(mode="sparse"))


def test_objective_defaults_resolve_as_published_and_mixes_keep_the_walks():
    cycle = resolve_config(TrainConfig(loss="cycle"))
    assert (cycle.lr, cycle.betas, cycle.grad_clip) == (2e-4, (0.5, 0.999), 10.0)  # docs/objectives.md
    assert (cycle.clip_offsets, cycle.clip_len, cycle.fps) == ((0, 2, 4, 6, 15, 17), 6, 12.0)
    assert (cycle.same_crop, cycle.flip, cycle.mode, cycle.encoder) == (True, True, "dense", "resnet50")
    assert cycle.frame_skip == 1                           # the demo's short generated sequences
    with_data = resolve_config(TrainConfig(loss="cycle", data="/videos"))
    assert (with_data.frame_skip, with_data.crop_size, with_data.fps) == (None, 240, 12.0)
    assert resolve_config(TrainConfig(loss="cycle", fps=6.0)).frame_skip is None         # an explicit rate wins
    mine = resolve_config(TrainConfig(loss="cycle", lr=1e-3, betas=(0.9, 0.99), grad_clip=0.0, clip_offsets=(0, 1, 2)))
    assert (mine.lr, mine.betas, mine.grad_clip, mine.clip_offsets, mine.clip_len) == (1e-3, (0.9, 0.99), 0.0,
                                                                                         (0, 1, 2), 3)
    for spec in ("crw", "crw=1,cycle=0.5", "crw=1,cycle=0.5,pixel=1", "cycle=1,pixel=1"):
        if "pixel" in spec:                                              # the pixel loss reads LAB frames
            with pytest.raises(ValueError, match="needs a LAB encoder"):
                resolve_config(TrainConfig(loss=spec))
            continue
        mix = resolve_config(TrainConfig(loss=spec))
        assert (mix.lr, mix.betas, mix.grad_clip, mix.fps, mix.clip_offsets, mix.clip_len) == (
            1e-4, (0.9, 0.999), 0.0, 8.0, None, 4), spec
        assert (mix.same_crop, mix.flip, mix.encoder, mix.frame_skip) == (False, False, "resnet18-crw", None), spec
    pixel = resolve_config(TrainConfig(loss="pixel", data="/videos"))
    assert (pixel.encoder, pixel.pixel_radius, pixel.lr, pixel.lr_schedule, pixel.batch_size, pixel.clip_len) == (
        "resnet18-fgvc", 24, 1e-3, "cosine", 1, 2)
    assert (pixel.pixel_rec_weight, pixel.pixel_sup_weight, pixel.pixel_domain_weight) == (1.0, 1.0, 1.0)
    assert (pixel.crop_area, pixel.crop_aspect, pixel.crop_style, pixel.blur) == (
        (0.6, 1.0), (1.5, 2.0), "mmaction", 0.8)
    crw = resolve_config(TrainConfig(loss="crw", data="/videos"))
    assert (crw.crop_area, crw.crop_aspect, crw.crop_style, crw.blur) == ((0.8, 0.95), (0.7, 1.3), "torchvision", 0.0)
    with pytest.raises(ValueError, match="--crop-area"):
        resolve_config(TrainConfig(crop_area=(0.5, 1.2)))
    assert resolve_config(TrainConfig(loss="crw=1,pixel=1", encoder="resnet18-fgvc")).encoder == "resnet18-fgvc"
    with pytest.raises(ValueError, match="give --clip-offsets instead"):
        resolve_config(TrainConfig(loss="cycle", clip_len=3))
    with pytest.raises(ValueError, match="strictly increasing"):
        resolve_config(TrainConfig(clip_offsets=(0, 3, 1)))
    with pytest.raises(ValueError, match="--betas"):
        resolve_config(TrainConfig(betas=(0.9,)))


def test_gradient_clipping_is_applied_and_the_resolved_config_recorded(videos, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    limit = 1e-3
    out = tmp_path / "run"
    result = train(_config(videos, out, loss="cycle", clip_len=None, clip_offsets=(0, 1, 2, 3), crop_size=48,
                           steps=2, grad_clip=limit, image_every=0))
    assert len(seen) == 2 and all(norm <= limit * (1 + 1e-4) for norm in seen)
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    before = [e.value for e in events.Scalars("train/grad_norm")]
    assert len(before) == 2 and min(before) > 10 * limit                  # the norm before clipping was larger
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["betas"], config["grad_clip"]) == (2e-4, [0.5, 0.999], limit)
    assert config["clip_offsets"] == [0, 1, 2, 3] and config["clip_len"] == 4
    assert result.loss_fn.losses["cycle"].motion_frame                  # the last frame places the patch

    seen.clear()
    train(_config(videos, tmp_path / "free", loss="cycle", clip_len=None, clip_offsets=(0, 1, 2, 3), crop_size=48,
                  steps=1, grad_clip=0.0, image_every=0))
    assert seen and seen[0] > 10 * limit                                 # without clipping


def test_loss_images_are_written_for_every_objective(videos, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(_config(videos, out, loss="crw=1,cycle=1,pixel=1", encoder="resnet18-fgvc", pixel_radius=2, steps=1,
                  crop_size=32, image_every=1))
    events = EventAccumulator(str(out), size_guidance={"images": 0})
    events.Reload()
    shapes = {tag: (events.Images(tag)[0].height, events.Images(tag)[0].width) for tag in events.Tags()["images"]}
    # 32 px crops enlarged 8x; clips of 3 frames: 2 base frames + target for the cycle
    assert shapes == {"walk/frame0_to_frame2": (256, 512), "cycle/tracked_patch": (256, 768),
                      "pixel/warped_pair": (256, 512)}


def test_flow_data_feeds_flyingthings_pairs_to_the_pixel_loss(videos, tmp_path, flyingthings):
    flyingthings(tmp_path / "things", size=(40, 48))
    result = train(_config(videos, tmp_path / "run", loss="pixel", encoder="resnet18-fgvc", clip_len=2, steps=2,
                           pixel_radius=2, image_every=0, flow_data=str(tmp_path / "things")))
    assert sorted(result.losses) == [1, 2]
    logged = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert all("pixel/sup" in entry for entry in logged)
    with pytest.raises(ValueError, match="--flow-data feeds flow pairs to --loss pixel"):
        train(_config(videos, tmp_path / "crw", flow_data=str(tmp_path / "things")))


def test_cycle_and_pixel_figures_draw_on_their_frames():
    from corr.losses.cycle import affine_from_params
    from corr.losses.pixel import FinePixelLoss

    clip = torch.zeros(4, 3, 48, 64)                        # 3 base frames + target; mean grey once denormalised
    theta = affine_from_params(torch.tensor([[0.2, -0.1, 0.3]]), (1 / 3, 1 / 3))[0]
    visuals = {"theta0": theta, "skip": theta.expand(3, 2, 3), "long": theta.expand(2, 2, 3)}
    image = cycle_image(clip, visuals)
    assert image.shape == (240, 4 * 320, 3) and image.dtype == np.uint8   # enlarged 5x
    grey = image[0, 0].copy()
    drawn = (image != grey).any(-1)
    assert drawn[:, :320].any() and drawn[:, 3 * 320:].any()
    assert not drawn[:5].any() and not drawn[:, :40].any()           # boxes around the centre, not the edge

    torch.manual_seed(0)
    encoder = ENCODERS["resnet18-fgvc"](out_layer="layer4")
    frames = torch.randn(1, 2, 3, 32, 40)
    _, _, pixel_visuals = FinePixelLoss(radius=3)(frames, encoder, generator=torch.Generator().manual_seed(0),
                                                  visuals=True)
    figure = pixel_image(frames[0], {k: v[0] for k, v in pixel_visuals.items()}, min_height=64)
    assert figure.shape == (64, 160, 3) and figure.dtype == np.uint8


def test_walk_images_have_both_frames():
    dense = walk_image(torch.zeros(3, 3, 32, 40), torch.nn.functional.normalize(torch.randn(3, 20, 8), dim=-1),
                       "dense", stride=8)
    assert dense.shape == (256, 640, 3) and dense.dtype == np.uint8     # enlarged 8x
    grid = walk_image(torch.zeros(3, 49, 3, 8, 8), torch.nn.functional.normalize(torch.randn(3, 49, 8), dim=-1),
                      "grid", stride=8)
    assert grid.shape == (56 * 4, 112 * 4, 3)
    frame = np.zeros((10, 10, 3), np.uint8)
    figure = walk_figure(frame, frame, np.array([[2.0, 2.0], [7.0, 7.0]]), np.array([1, 0]), min_height=10)
    assert figure.shape == (10, 20, 3) and figure.any()  # the arrows were drawn


def test_a_batch_larger_than_an_epoch_is_refused_before_training(videos, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(ValueError, match="6 clips per epoch, fewer than batch size 7 x 1"):
        train(_config(videos, tmp_path / "run", batch_size=7))          # 3 usable videos x 2 clips
    assert not any("steps:" in r.getMessage() for r in caplog.records)  # no "training ... (0 steps)" line first
    assert batches_per_epoch(6, 2, 2) == 1 and batches_per_epoch(7, 2, 2) == 2


@pytest.mark.parametrize("loss", ["crw", "crw=1,cycle=1"])
def test_training_starts_from_evaluates_seeded_random_init(videos, tmp_path, monkeypatch, loss):
    """``evaluate.py --encoder NAME --seed S`` scores a run's initial weights (the "before" of a run)."""
    from propagate.encoder_loading import load_encoder
    from propagate.eval_config import EvalConfig

    class FrozenAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            return None

    monkeypatch.setattr(torch.optim, "Adam", FrozenAdam)
    result = train(_config(videos, tmp_path / "run", steps=1, loss=loss, image_every=0))
    initial, _ = load_encoder(EvalConfig(encoder="tiny", seed=3), torch.device("cpu"))
    trained = dict(result.model.encoder.named_parameters())
    assert all(torch.equal(value, trained[name]) for name, value in initial.named_parameters())
    other, _ = load_encoder(EvalConfig(encoder="tiny", seed=4), torch.device("cpu"))
    assert not all(torch.equal(value, trained[name]) for name, value in other.named_parameters())


def test_an_option_given_equal_to_the_dataclass_default_still_wins_over_the_demo():
    from corr.cli import parse_config

    assert resolve_config(parse_config(TrainConfig, [])).num_workers == 1                  # the demo's
    assert resolve_config(parse_config(TrainConfig, ["--num-workers", "4"])).num_workers == 4
    assert resolve_config(TrainConfig(checkpoint_every=500)).checkpoint_every == 500


def test_presets_are_complete_and_only_given_options_override_them():
    from corr.train.config import SETUP_OPTIONS, presets

    table = presets()
    assert list(table)[:2] == ["crw", "crw-demo"] and {"cycle", "pixel", "global-walk"} <= set(table)
    for name, preset in table.items():
        assert preset.preset == name and all(getattr(preset, k) is not None for k in SETUP_OPTIONS
                                             if k not in ("steps", "frame_skip", "clip_offsets", "teacher")), name
    gmrw, small, demo = table["global-walk"], table["global-walk-small"], table["global-walk-demo"]
    assert (gmrw.match_net, gmrw.optimizer, gmrw.lr, gmrw.weight_decay, gmrw.grad_clip, gmrw.frame_skip,
            gmrw.crop_size, gmrw.walk_crop_size, gmrw.batch_size) == ("gmflow", "adamw", 4e-5, 1e-4, 20.0, 20, 640,
                                                                      512, 1)
    assert (table["global-walk-finetune"].lr, table["global-walk-finetune"].smoothness_ramp,
            table["global-walk-finetune"].flow_window) == (4e-6, (141000, 151000), 20.0)
    assert small.match_net == demo.match_net == "small" and demo.frame_skip == small.frame_skip
    with_data = resolve_config(TrainConfig(data="/videos"))
    assert resolve_config(TrainConfig(preset="crw", data="/videos")) == with_data and with_data.preset == "crw"
    assert resolve_config(TrainConfig()) == resolve_config(TrainConfig(preset="crw-demo"))
    cycle = resolve_config(TrainConfig(preset="cycle", lr=1e-3))
    assert cycle == dataclasses.replace(resolve_config(TrainConfig(loss="cycle", data="/videos", lr=1e-3)), data=None)
    assert (cycle.lr, cycle.betas, cycle.crop_size, cycle.preset) == (1e-3, (0.5, 0.999), 240, "cycle")
    mix = resolve_config(TrainConfig(loss="crw=1,pixel=1", data="/videos", encoder="resnet18-fgvc"))
    assert (mix.preset, mix.mode, mix.lr) == ("crw", "dense", 1e-4)                         # a mix keeps the walk's
    with pytest.raises(ValueError, match="unknown preset 'kinetics'"):
        resolve_config(TrainConfig(preset="kinetics"))


class _FeatureMeanLoss(torch.nn.Module):
    """A toy frame loss: the squared mean of the encoder's features of every frame of the clip."""

    def forward(self, clip, encoder):
        from einops import rearrange

        features = encoder(rearrange(clip, "b t c h w -> (b t) c h w"))
        return features.mean() ** 2, {"feature_mean": float(features.mean().detach())}


def test_an_objective_registered_in_one_entry_trains_through_the_command_line(videos, tmp_path, monkeypatch):
    from corr.train import main
    from corr.train.objectives import OBJECTIVES, Objective

    monkeypatch.setitem(OBJECTIVES, "feature_mean", Objective(
        "feature_mean", "squared mean of the encoder's features", lambda cfg: _FeatureMeanLoss(), needs_frames=True))
    out = tmp_path / "run"
    result = main(["--loss", "feature_mean", "--data", str(videos), "--out", str(out), "--steps", "2",
                   "--batch-size", "2", "--clip-len", "3", "--frame-skip", "1", "--clips-per-video", "2",
                   "--crop-size", "32", "--num-workers", "0", "--encoder", "tiny", "--device", "cpu",
                   "--cache-dir", str(tmp_path / "index-cache"), "--no-progress"])
    assert sorted(result.losses) == [1, 2] and all(np.isfinite(list(result.losses.values())))
    assert (result.cfg.preset, result.cfg.mode, result.cfg.loss) == ("feature-mean", "dense", "feature_mean")
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert state["step"] == 2 and state["losses"] == {"feature_mean": 1.0}
    torch.manual_seed(0)
    initial = _TinyEncoder()                                  # what train() built from seed 0
    assert any(not torch.equal(value, state["encoder"]["state_dict"][name])
               for name, value in initial.state_dict().items() if value.is_floating_point())


def test_cosine_schedule_is_mmcvs_per_iteration_cosine_annealing():
    from corr.train.module import lr_factor

    base, steps = 1e-3, 40
    for step in (0, 1, 13, 20, 39, 40):
        target = base * 0.001                                             # min_lr_ratio 0.001
        expected = target + 0.5 * (base - target) * (math.cos(math.pi * step / steps) + 1)   # annealing_cos
        assert base * lr_factor("cosine", step, steps) == pytest.approx(expected, abs=1e-12)
    assert lr_factor("step", 7, steps) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("linear", 1, steps)


def test_resume_checks_the_settings_of_the_runs_own_losses():
    from corr.train.checkpoint import resume_keys

    assert {"pixel_radius", "pixel_domain_weight"} <= set(resume_keys("crw=1,pixel=1"))
    assert "pixel_radius" not in resume_keys("crw") and "batch_size" in resume_keys("crw")
    assert "crop_size" in resume_keys("cycle") and "crop_size" in resume_keys("crw=1,cycle=0.5")


def test_channels_last_gives_the_same_losses_and_compile_keeps_parameter_names(monkeypatch):
    """--channels-last: NHWC weights and the same fp32 loss (1e-5) and gradients; after an Adam step
    (whose first update is lr * sign(gradient)) losses agree to 1e-3. --compile: the encoder's forward
    is compiled in place and its parameter names (the checkpoint's) are unchanged."""
    from corr.runtime import start_runtime
    from corr.train.module import build_train_module

    cfg = resolve_config(TrainConfig(encoder="tiny", mode="dense", crop_size=32, clip_len=3, device="cpu",
                                     progress=False))
    runtime = start_runtime("cpu")
    clip = torch.randn(2, cfg.clip_len, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    losses, grads = {}, {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        module = build_train_module(dataclasses.replace(cfg, channels_last=channels_last), runtime)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        losses[channels_last] = []
        for step in range(2):
            torch.manual_seed(10 + step)
            loss, _ = module(clip)
            optimizer.zero_grad()
            loss.backward()
            if step == 0:
                grads[channels_last] = [p.grad.clone() for p in module.parameters() if p.grad is not None]
            optimizer.step()
            losses[channels_last].append(float(loss))
        conv = next(m for m in module.model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert losses[True][0] == pytest.approx(losses[False][0], abs=1e-5, rel=0)
    assert losses[True][1] == pytest.approx(losses[False][1], rel=1e-3)
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)

    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(self))
    torch.manual_seed(0)
    plain = build_train_module(cfg, runtime)
    torch.manual_seed(0)
    compiled = build_train_module(dataclasses.replace(cfg, compile=True), runtime)
    assert calls == [compiled.model.encoder]
    assert list(compiled.state_dict()) == list(plain.state_dict())
