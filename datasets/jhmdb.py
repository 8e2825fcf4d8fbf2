"""Reader for JHMDB keypoint propagation (PCK evaluation).

Inputs (the layout of the JHMDB release and of the split files label-propagation papers use)::

    <split file>        one video per line: "<frames dir> <joint_positions.mat>" (either order;
                        blank lines and "#" comments skipped; a relative path is taken from
                        ``root`` when given, else from the split file's folder)
    <frames dir>/00001.png, 00002.png, ...          RGB frames (JHMDB's Rename_Images)
    <...>/joint_positions.mat                       MATLAB file with ``pos_img`` [2, 15, T]

``pos_img[:, j, t]`` is joint j's (x, y) in frame t, 1-based (MATLAB); this reader returns
0-based coordinates (``pos_img - 1``) with integer values at pixel centres. Joints follow
JHMDB's order (:data:`JHMDB_JOINTS`). Every joint is annotated in every frame (the puppet
model), possibly outside the image.

Some JHMDB pose sequences are shorter than their frame folders (the person leaves); the
video is then cut to the pose length, as tapnet's reader does. A pose longer than the
frames is an error.

Arrays: frames ``uint8 (H, W, 3)`` RGB; keypoints ``float64 (T, 15, 2)`` (x, y).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.frames import DatasetError, FrameVideo, VideoSet, listing_sha256

__all__ = ["JHMDB_JOINTS", "JHMDB_PARENTS", "NUM_JOINTS", "JhmdbVideo", "JhmdbDataset", "read_joint_positions"]

#: The 15 joints in JHMDB order.
JHMDB_JOINTS = ("neck", "belly", "face", "right_shoulder", "left_shoulder", "right_hip", "left_hip",
                "right_elbow", "left_elbow", "right_knee", "left_knee", "right_wrist", "left_wrist",
                "right_ankle", "left_ankle")
NUM_JOINTS = len(JHMDB_JOINTS)
#: Parent of each joint for drawing skeletons (the reference CRW ``vis_pose`` tree); the
#: root (neck) is its own parent.
JHMDB_PARENTS = (0, 0, 0, 0, 0, 1, 1, 3, 4, 5, 6, 7, 8, 9, 10)
_FRAME_NAME = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


def read_joint_positions(path: str | Path) -> np.ndarray:
    """``pos_img`` of a ``joint_positions.mat`` -> 0-based keypoints ``float64 (T, 15, 2)`` (x, y)."""
    import scipy.io

    path = Path(path)
    try:
        content = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DatasetError(f"{path}: joint positions file not found") from None
    except Exception as error:  # scipy raises several types for a corrupt file
        raise DatasetError(f"{path}: cannot read MATLAB file ({error})") from error
    if "pos_img" not in content:
        variables = sorted(k for k in content if not k.startswith("__"))
        raise DatasetError(f"{path}: no 'pos_img' variable (has {variables})")
    pos = np.asarray(content["pos_img"], dtype=np.float64)
    if pos.ndim == 2 and pos.shape == (2, NUM_JOINTS):  # a one-frame video loses its last axis
        pos = pos[..., None]
    if pos.ndim != 3 or pos.shape[:2] != (2, NUM_JOINTS):
        raise DatasetError(f"{path}: pos_img has shape {pos.shape}, expected (2, {NUM_JOINTS}, T)")
    if pos.shape[2] < 1:
        raise DatasetError(f"{path}: pos_img holds no frame")
    return np.transpose(pos - 1.0, (2, 1, 0)).copy()  # (T, 15, 2)


@dataclass
class JhmdbVideo(FrameVideo):
    """One JHMDB video: frame files (read lazily) and its 0-based keypoints.

    name:        ``<action>/<video>`` (the last two parts of the frames folder)
    frame_paths: the ``T`` frames used (cut to the pose length)
    keypoints:   ``float64 (T, 15, 2)`` (x, y), pixel centres at integers
    joints_file: the ``joint_positions.mat`` it came from
    """

    keypoints: np.ndarray
    joints_file: Path


class JhmdbDataset(VideoSet[JhmdbVideo]):
    """The videos listed by a JHMDB split file, validated on opening (listings and .mat files).

    ``root`` (optional) is the folder relative paths of the split file are taken from; by
    default the split file's own folder.
    """

    def __init__(self, split_file: str | Path, root: str | Path | None = None):
        self.split_file = Path(split_file)
        if not self.split_file.is_file():
            raise DatasetError(f"{self.split_file}: split file not found")
        self.root = Path(root) if root is not None else self.split_file.parent
        self._set_videos((self._open(frames, joints, number) for frames, joints, number in self._read_split()),
                         self.split_file)

    def _read_split(self) -> list[tuple[Path, Path, int]]:
        entries = []
        for number, line in enumerate(self.split_file.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            mats = [p for p in parts if p.lower().endswith(".mat")]
            if len(parts) != 2 or len(mats) != 1:
                raise DatasetError(f"{self.split_file}: line {number} is {line!r}; expected "
                                   "'<frames dir> <joint_positions.mat>'")
            frames = next(p for p in parts if p is not mats[0])
            entries.append((self._resolve(frames), self._resolve(mats[0]), number))
        return entries

    def _resolve(self, text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() else self.root / path

    def _open(self, frame_dir: Path, joints_file: Path, line: int) -> JhmdbVideo:
        if not frame_dir.is_dir():
            raise DatasetError(f"{frame_dir}: frames folder not found (line {line} of {self.split_file})")
        numbered: dict[int, Path] = {}
        for path in frame_dir.iterdir():
            match = _FRAME_NAME.match(path.name)
            if match:
                numbered[int(match.group(1))] = path
        if not numbered:
            raise DatasetError(f"{frame_dir}: no %05d.png frames")
        numbers = sorted(numbered)
        for previous, number in zip(numbers, numbers[1:]):
            if number != previous + 1:
                raise DatasetError(f"{frame_dir / f'{previous + 1:05d}.png'}: frame missing (numbering "
                                   f"jumps from {numbered[previous].name} to {numbered[number].name})")
        keypoints = read_joint_positions(joints_file)
        frames = [numbered[n] for n in numbers]
        if keypoints.shape[0] > len(frames):
            raise DatasetError(f"{joints_file}: pos_img has {keypoints.shape[0]} frames but {frame_dir} "
                               f"holds {len(frames)}")
        frames = frames[: keypoints.shape[0]]
        name = "/".join(frame_dir.resolve().parts[-2:])
        return JhmdbVideo(name=name, frame_paths=frames, keypoints=keypoints, joints_file=joints_file)

    def identity(self) -> dict:
        """What was read, for result files: counts and a SHA-256 of the file listing.

        ``listing_sha256`` hashes the sorted lines ``"<path>\\t<size in bytes>\\n"`` of every
        frame and joints file (paths relative to ``root``, with ``/``).
        """
        paths = [path for video in self for path in [*video.frame_paths, video.joints_file]]
        return {
            "name": "JHMDB",
            "split_file": str(self.split_file.resolve()),
            "num_videos": len(self),
            "num_frames": sum(video.num_frames for video in self),
            "listing_sha256": listing_sha256(paths, self.root),
        }

    def __repr__(self) -> str:
        return f"JhmdbDataset(split_file={str(self.split_file)!r}, videos={len(self)})"
