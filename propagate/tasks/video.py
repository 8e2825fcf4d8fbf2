"""One's own video: ``evaluate.py --task video --video clip.mp4 --mask first.png --out OUT``.

Propagates a mask (``--mask``, given on ``--mask-frame``) or points (``--points "x,y;x,y"``,
on ``--points-frame``) through a video file or frame folder (``--video``) with the
streaming API :func:`propagate.track.track_frames` (order, sizes and conventions: there),
with every encoder and propagation option of the other tasks. There is nothing to score:
``"metrics"`` is null. Outputs under ``--out``:

* ``masks/<frame:05d>.png``: indexed PNGs (DAVIS palette) with the mask's own ids, at the
  video's size; or ``tracks.npz``: ``tracks`` float32 ``[Q, T, 2]`` (x, y) pixels of the
  video's frames (:mod:`corr.geometry` convention), ``visible`` bool ``[Q, T]``,
  ``queries`` float32 ``[Q, 3]`` (t, x, y);
* ``overlay.mp4``: H.264 (:mod:`propagate.video_writer`), the masks blended on the frames or
  the tracks drawn with trails (hollow circles where predicted hidden), at the video's fps
  (10 for a frame folder);
* ``results.json`` (configuration, factors, checkpoint, the video's identity, how the mask
  was read, the input size and timings), ``run.json`` and the record, as for every task.

A mask is read as people save them (:func:`datasets.palette.read_mask_image`: indexed ids
kept, binary or grey thresholded at half, colours mapped to ids) and how it was read is
printed; one whose size differs from the video's is an error naming both. Frames whose long
side exceeds ``--max-side`` (default 854) are downscaled for the encoder; outputs are at the
video's size. ``--cache``, ``--sweep``, ``--sequences``, ``--data-root``, ``--input-size`` and
``--report`` do not apply (``overlay.mp4`` is the picture).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from corr.errors import OptionError
from corr.io import atomic_write, file_sha256
from corr.runtime import REPO_ROOT
from datasets.frames import listing_sha256
from datasets.palette import read_indexed_png, write_indexed_png
from datasets.video_decode import list_frame_files

from ..eval_config import EvalConfig
from ..task import Task, TaskDefaults, TaskRun, VideoEntry
from ..track import DEFAULT_MAX_SIDE, framing_for, mask_ids, open_frames, parse_points, track_frames
from ..video import encoder_for_video
from ..video_writer import VideoWriter
from ..visualize import draw_tracks, overlay_mask

#: The overlay's frame rate when the video does not give one (a frame folder).
DEFAULT_FPS = 10.0


class UserVideo:
    """The video of ``--video`` opened (:func:`propagate.track.open_frames`), with its mask or points.

    name: the file or folder name without extension; ``mask`` / ``objects`` / ``mask_reading``:
    the ids (H, W), object ids and how the file was read (:func:`propagate.track.mask_ids`);
    ``points``: float64 (Q, 2), or None.
    """

    def __init__(self, cfg: EvalConfig):
        self.path = Path(cfg.video)
        self.source = open_frames(self.path)
        self.name = self.path.stem if self.path.is_file() else self.path.name
        self.num_frames, self.size = self.source.num_frames, self.source.size
        self.fps = self.source.fps or DEFAULT_FPS
        start = cfg.mask_frame if cfg.mask else cfg.points_frame
        if start >= self.num_frames:
            flag = "--mask-frame" if cfg.mask else "--points-frame"
            raise OptionError(f"{flag} {start}: {self.path} has {self.num_frames} frames (0..{self.num_frames - 1})")
        self.start = start
        self.mask = self.objects = self.mask_reading = self.points = None
        if cfg.mask:
            self.mask, self.objects, self.mask_reading = mask_ids(cfg.mask, self.size, what=f"--mask {cfg.mask}")
        else:
            self.points = parse_points(cfg.points, self.size)

    def identity(self) -> dict:
        """The video's identity (results.json's ``"dataset"``, hashed into the run key)."""
        if self.path.is_dir():
            content = {"listing_sha256": listing_sha256([self.path / n for n in list_frame_files(self.path)],
                                                        self.path)}
        else:
            content = {"sha256": file_sha256(self.path)}
        return {"name": self.name, "path": str(self.path), **content, "num_frames": self.num_frames,
                "size": list(self.size), "fps": self.source.fps}


class VideoTask(Task):
    name = "video"
    title = "video"
    defaults = TaskDefaults(None, None, REPO_ROOT / "data", REPO_ROOT / "data")  # no dataset: --video
    label_resampling = {"labels_to_grid": "masks: nearest to the input size, one-hot, bilinear to the grid "
                                          "(DAVIS); points: Gaussian heatmap per point on the grid (TAP-Vid)",
                        "outputs_to_pixels": "masks: bilinear x stride, argmax, nearest to the video's size; "
                                             "points: windowed soft-argmax on the grid, scaled to the video"}
    headline_metrics = ()
    settings_block = "video"
    frame_protocols = ("common", "dino")
    output_norms = ("none", "minmax")

    def configure(self, cfg: EvalConfig) -> EvalConfig:
        if not cfg.video:
            raise OptionError("--task video needs --video (a video file or a folder of frames)")
        if (cfg.mask is None) == (cfg.points is None):
            raise OptionError("--task video needs --mask PNG or --points 'x,y;x,y' (one of them)")
        if cfg.mask is None and cfg.mask_frame != EvalConfig.mask_frame:
            raise OptionError("--mask-frame goes with --mask (use --points-frame with --points)")
        if cfg.points is None and cfg.points_frame != EvalConfig.points_frame:
            raise OptionError("--points-frame goes with --points (use --mask-frame with --mask)")
        for name in ("mask_frame", "points_frame"):
            if getattr(cfg, name) < 0:
                raise OptionError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
        if cfg.input_size is not None:
            raise OptionError("--input-size is not for --task video; --max-side sets the input's long side")
        unused = [name for name in ("data_root", "cache", "sweep", "sequences", "report") if getattr(cfg, name)]
        if unused:
            raise OptionError(f"--{', --'.join(n.replace('_', '-') for n in unused)}: not for --task video (one "
                              f"video given by --video, nothing scored to compare settings by or report; "
                              f"its overlay.mp4 is the picture)")
        cfg = super().configure(cfg)
        frames = cfg.propagation().frames
        if cfg.points is not None and frames != "common":
            raise OptionError(f"--points are tracked with the common frame protocol; give --frames common "
                              f"(preset {cfg.preset} uses {frames})")
        framing_for((1, 1), 1, frames, cfg.max_side)  # a bad --max-side fails before the output is claimed
        return cfg

    def factors(self, cfg: EvalConfig) -> dict:
        factors = super().factors(cfg)
        factors["input_resolution"] = (f"long side at most {cfg.max_side or DEFAULT_MAX_SIDE}, bilinear"
                                       if cfg.propagation().frames == "common" else "DINO's frame protocol")
        return factors

    def open(self, cfg: EvalConfig) -> UserVideo:
        video = UserVideo(cfg)
        if video.mask_reading is not None:
            print(f"--mask {cfg.mask}: {video.mask_reading}; objects {video.objects}")
        return video

    def settings(self, cfg: EvalConfig, dataset: UserVideo) -> dict:
        if dataset.mask is not None:
            given = {"mask": str(cfg.mask), "mask_sha256": file_sha256(cfg.mask), "mask_frame": cfg.mask_frame,
                     "mask_reading": dataset.mask_reading, "objects": dataset.objects}
        else:
            given = {"points": dataset.points.tolist(), "points_frame": cfg.points_frame}
        return {**given, "max_side": cfg.max_side or DEFAULT_MAX_SIDE}

    def describe(self, run: TaskRun) -> str:
        video = run.dataset
        framing = framing_for(video.size, run.encoder.stride, run.prop_cfg.frames, run.cfg.max_side)
        given = (f"mask on frame {video.start} (objects {video.objects})" if video.mask is not None
                 else f"{len(video.points)} point(s) on frame {video.start}")
        return (f"video {video.path}: {video.num_frames} {framing.describe()}; {given}; {run.describe()}")

    def videos(self, run: TaskRun) -> Iterator[VideoEntry]:
        yield run.dataset.name, lambda: run.dataset

    def prediction_path(self, run: TaskRun) -> Path:
        return run.out / ("masks" if run.dataset.mask is not None else "tracks.npz")

    def predict(self, run: TaskRun, video: UserVideo) -> dict:
        """Propagate, write the masks or tracks, then the overlay (a second pass over the frames)."""
        cfg, device, source = run.cfg, run.device, video.source
        framing = framing_for(video.size, run.encoder.stride, run.prop_cfg.frames, cfg.max_side)
        encoder, adapt_seconds = encoder_for_video(run.encoder, lambda t: framing.prepare(source.read(t)),
                                                   video.num_frames, cfg, device)
        timings = {}
        stream = tqdm(track_frames(source, encoder, run.prop_cfg, device, framing, mask=video.mask,
                                   points=video.points, start=video.start, batch_size=cfg.batch_size,
                                   timings=timings), total=video.num_frames, desc=video.name, unit="frame",
                      leave=False, disable=not run.runtime.is_main)
        if video.mask is not None:
            for result in stream:
                write_indexed_png(run.out / "masks" / f"{result.index:05d}.png", result.mask)
            codec = self._overlay(run.out / "overlay.mp4", video,
                                  lambda t, frame: overlay_mask(frame, read_indexed_png(
                                      run.out / "masks" / f"{t:05d}.png")))
            outputs = {"masks": "masks/<frame:05d>.png", "overlay": "overlay.mp4"}
        else:
            Q, T = len(video.points), video.num_frames
            tracks, visible = np.zeros((Q, T, 2), np.float32), np.zeros((Q, T), bool)
            for result in stream:
                tracks[:, result.index], visible[:, result.index] = result.points, result.visible
            queries = np.concatenate([np.full((Q, 1), video.start), video.points], axis=1).astype(np.float32)
            atomic_write(run.out / "tracks.npz", lambda f: np.savez_compressed(f, tracks=tracks, visible=visible,
                                                                               queries=queries))
            codec = self._overlay(run.out / "overlay.mp4", video,
                                  lambda t, frame: draw_tracks(frame, tracks, ~visible, t))
            outputs = {"tracks": "tracks.npz", "overlay": "overlay.mp4"}
        return {"num_frames": video.num_frames, "predictions": "overlay.mp4",
                "timings": {**timings, "adaptation": adapt_seconds},
                "input_size": list(framing.input_size), "scale": framing.scale,
                "outputs": {**outputs, "overlay_codec": codec}}

    @staticmethod
    def _overlay(path: Path, video: UserVideo, draw) -> str:
        """Write ``draw(t, frame)`` of every frame, in order, as an H.264 video; returns the codec used."""
        with VideoWriter(path, fps=video.fps) as writer:
            for t in range(video.num_frames):
                writer.write(draw(t, video.source.read(t)))
        return writer.codec

    def merge(self, run: TaskRun, records: dict[str, dict]) -> dict:
        (record,) = records.values()
        return {"metrics": None, "input_size": record["input_size"], "scale": record["scale"],
                "outputs": record["outputs"]}

    def print_table(self, results: dict) -> None:
        outputs, out = results["outputs"], Path(results["config"]["eval"]["out"])
        h, w = results["input_size"]
        print(f"\nframes processed at {w}x{h} (scale {results['scale']:.3f} of the video's size)")
        if "masks" in outputs:
            print(f"masks: {out / 'masks'} ({results['dataset']['num_frames']} indexed PNGs)")
        else:
            print(f"tracks: {out / outputs['tracks']} (tracks [Q, T, 2] x, y; visible [Q, T])")
        print(f"overlay: {out / outputs['overlay']} ({outputs['overlay_codec']})")
