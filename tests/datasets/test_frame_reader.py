"""datasets.video_decode.FrameReader: frames one at a time, forward and backward, equal to read_clip."""
import cv2
import numpy as np
import pytest

from datasets.video_decode import FrameReader, VideoReadError, read_clip
from propagate.video_writer import write_video


def gradient_frames(n=40, h=32, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return [np.stack([(4 * x + 5 * t) % 256, 6 * y, np.full_like(x, 6 * t)], -1).astype(np.uint8) for t in range(n)]


@pytest.fixture
def video(tmp_path):
    return write_video(tmp_path / "v.mp4", gradient_frames(), fps=12)


@pytest.mark.parametrize("backend", ["opencv", "decord"])
def test_sequential_and_seeking_reads_equal_read_clip(video, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    with FrameReader(video, backend=backend) as reader:
        assert (reader.num_frames, reader.fps, reader.size) == (40, 12.0, (32, 64))
        forward = [reader.read(t) for t in range(40)]
        backward = [reader.read(t) for t in range(39, -1, -3)]   # seeks back every time
    reference = read_clip(video, list(range(40)), backend=backend)
    assert all(np.array_equal(f, r) for f, r in zip(forward, reference))
    assert all(np.array_equal(b, reference[t]) for b, t in zip(backward, range(39, -1, -3)))


def test_frame_folder_and_errors(tmp_path):
    for t, frame in enumerate(gradient_frames(n=3)):
        cv2.imwrite(str(tmp_path / f"{t}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    reader = FrameReader(tmp_path)
    assert reader.num_frames == 3 and np.array_equal(reader.read(2), gradient_frames(n=3)[2])
    with pytest.raises(VideoReadError, match="frame 3 requested"):
        reader.read(3)
    with pytest.raises(VideoReadError, match="no such file"):
        FrameReader(tmp_path / "missing.mp4")
