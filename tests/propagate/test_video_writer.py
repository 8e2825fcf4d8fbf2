"""propagate.video_writer: browser-playable H.264, the OpenCV fallback, and atomic files."""
import cv2
import numpy as np
import pytest

from propagate import video_writer
from propagate.video_writer import H264, MPEG4, VideoWriter, h264_available, video_codec, write_video


def frames(n=6, h=33, w=47):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([4 * x, 6 * y, 2 * (x + y)], axis=-1).clip(0, 255).astype(np.uint8)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]


def read_back(path):
    capture = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return out
        out.append(frame)


@pytest.mark.skipif(not h264_available(), reason="PyAV with libx264 is not installed")
def test_h264_video_is_written_streamed_and_reads_back(tmp_path):
    path = write_video(tmp_path / "v.mp4", iter(frames()), fps=7)
    assert video_codec(path) == "h264"
    decoded = read_back(path)
    assert len(decoded) == 6 and decoded[0].shape == (32, 46, 3)       # even sizes for 4:2:0
    original = cv2.cvtColor(frames()[2][:32, :46], cv2.COLOR_RGB2BGR).astype(int)
    assert np.abs(decoded[2].astype(int) - original).mean() < 12        # lossy, but the same picture
    assert not list(tmp_path.glob(".*tmp*"))


def test_fallback_to_opencv_warns_and_still_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(video_writer, "h264_available", lambda: False)
    with pytest.warns(UserWarning, match="browsers do not play"):
        writer = VideoWriter(tmp_path / "v.mp4", fps=5)
    assert writer.codec == MPEG4
    with writer:
        for frame in frames(3):
            writer.write(frame)
    assert len(read_back(tmp_path / "v.mp4")) == 3


def test_nothing_appears_under_the_name_until_closed_and_errors_remove_the_temporary(tmp_path):
    path = tmp_path / "v.mp4"
    with pytest.raises(ValueError, match="frame 1 is 20x20"):
        with VideoWriter(path, codec=H264 if h264_available() else MPEG4) as writer:
            writer.write(frames(1)[0])
            assert not path.exists()
            writer.write(np.zeros((20, 20, 3), np.uint8))
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(path, codec=MPEG4).close()
    with pytest.raises(ValueError, match="codec must be"):
        VideoWriter(path, codec="vp9")
