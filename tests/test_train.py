"""The training loop: data order, resumption, DDP, corrupt videos, checkpoints, failures."""
from __future__ import annotations

import dataclasses
import logging
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
from corr.train import (NonFiniteLossError, TrainConfig, parse_loss_spec, resolve_config, train, walk_figure,
                        walk_image)


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
                  image_every=2, device="cpu", encoder="tiny", cache_dir=str(out / "index-cache"), progress=False, seed=3)
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
    assert state["encoder"]["name"] == "resnet18-crw" and state["encoder"]["kwargs"] == {"out_layer": "layer4"}
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
    result = train(_config(tmp_path, tmp_path / "run", data=None, steps=3, crop_size=16), dataset=_Clips(skipped_every=1))
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
    initial = dict(WalkModel(_TinyEncoder(), head_dim=cfg.head_dim, mode="dense").named_parameters())
    changed = 0
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
        changed += not torch.equal(value, initial[name].detach())
    assert changed > 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


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
