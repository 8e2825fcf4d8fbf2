"""evaluate.py --task video: one's own video and mask (or points) -> masks / tracks and an H.264 overlay."""
import json

import cv2
import numpy as np
import pytest
from browser import HAVE_CURRENT_DATA, browser_or_skip, wait_for
from PIL import Image
from test_track import square_video  # tests/propagate, on the path under pytest

from datasets.palette import davis_palette, write_indexed_png
from evaluate import main
from propagate.video_writer import H264_MIME, h264_available, video_codec, write_video

needs_h264 = pytest.mark.skipif(not h264_available(), reason="PyAV with libx264 is not installed")


def run(argv):
    return main(["--task", "video", "--encoder", "pixel", "--context", "4", *argv])


def frame_folder(path, frames):
    path.mkdir()
    for t, frame in enumerate(frames):
        cv2.imwrite(str(path / f"frame{t}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return path


@needs_h264
def test_real_clip_with_a_hand_drawn_mask(shared_clips, tmp_path, capsys):
    clip = shared_clips / "carphone_pristine.mp4"            # 176x144, 120 frames
    mask = np.zeros((144, 176), np.uint8)
    cv2.ellipse(mask, (88, 70), (28, 38), 0, 0, 360, 255, -1)
    cv2.imwrite(str(tmp_path / "first.png"), cv2.GaussianBlur(mask, (5, 5), 0))   # grey, anti-aliased
    out = tmp_path / "out"
    results = run(["--video", str(clip), "--mask", str(tmp_path / "first.png"), "--out", str(out),
                   "--max-side", "88", "--context", "2", "--radius", "4"])
    printed = capsys.readouterr().out
    assert "thresholded at half" in printed and f"overlay: {out / 'overlay.mp4'} (h264)" in printed
    assert "scale 0.500" in printed
    pngs = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(120)]
    for path in pngs[::17]:
        with Image.open(path) as image:
            assert image.mode == "P" and image.size == (176, 144)
            assert np.array_equal(np.array(image.getpalette()[:768]).reshape(256, 3), davis_palette())
            assert set(np.unique(np.array(image))) <= {0, 1}
    last = np.array(Image.open(pngs[-1]))
    assert 0.2 < (last == 1).sum() / (mask > 0).sum() < 3     # the object is still there, roughly its size
    assert video_codec(out / "overlay.mp4") == "h264"
    assert cv2.VideoCapture(str(out / "overlay.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 120
    assert results["metrics"] is None and results["input_size"] == [72, 88]
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["video"]["mask_reading"].startswith("binary/grey")
    check_plays_in_chromium(out / "overlay.mp4", tmp_path / "overlay-screenshot.png")


def check_plays_in_chromium(video, screenshot):
    """A page holding the overlay, opened in headless Chromium: its type is accepted and it plays."""
    page = video.parent / "play.html"
    page.write_text(f'<!doctype html><video id="v" muted autoplay><source src="{video.name}" '
                    f'type=\'{H264_MIME}\'></video>')
    with browser_or_skip() as driver:
        driver.get(page.resolve().as_uri())
        if driver.execute_script(f"return document.createElement('video').canPlayType('{H264_MIME}')") == "":
            pytest.skip("this Chromium build plays no H.264 (built without proprietary codecs)")
        state = wait_for(driver, "var v = document.getElementById('v'); return v.error ? -1 : "
                                 f"(v.readyState >= {HAVE_CURRENT_DATA} ? v.readyState : 0)")
        assert state and state >= HAVE_CURRENT_DATA, f"the overlay did not play ({state})"
        assert wait_for(driver, "return document.getElementById('v').currentTime > 0", timeout=10)  # it advances
        driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0


@needs_h264
def test_indexed_mask_on_a_later_frame_of_a_frame_folder(tmp_path, capsys):
    frames, masks = square_video(T=8, object_id=5)
    folder = frame_folder(tmp_path / "frames", frames)
    write_indexed_png(tmp_path / "m.png", masks[3])
    out = tmp_path / "out"
    run(["--video", str(folder), "--mask", str(tmp_path / "m.png"), "--mask-frame", "3", "--out", str(out)])
    assert "indexed PNG: its ids are kept; objects [5]" in capsys.readouterr().out
    predicted = [np.array(Image.open(out / "masks" / f"{t:05d}.png")) for t in range(8)]
    assert np.array_equal(predicted[3], masks[3])
    for t in range(8):
        overlap = ((predicted[t] == 5) & (masks[t] == 5)).sum() / ((predicted[t] == 5) | (masks[t] == 5)).sum()
        assert overlap > 0.6 and set(np.unique(predicted[t])) == {0, 5}
    assert video_codec(out / "overlay.mp4") == "h264"
    run(["--video", str(folder), "--mask", str(tmp_path / "m.png"), "--mask-frame", "3", "--out", str(out)])
    assert "videos" in capsys.readouterr().err               # a rerun of the same settings reuses the record


@needs_h264
def test_points_write_tracks_and_an_overlay(tmp_path, capsys):
    frames, _ = square_video(T=8)
    video = write_video(tmp_path / "clip.mp4", frames, fps=8)
    out = tmp_path / "out"
    run(["--video", str(video), "--points", "22,32;60.5,8.5", "--points-frame", "2", "--out", str(out)])
    assert f"tracks: {out / 'tracks.npz'}" in capsys.readouterr().out
    saved = np.load(out / "tracks.npz")
    assert saved["tracks"].shape == (2, 8, 2) and saved["visible"].shape == (2, 8)
    assert np.allclose(saved["tracks"][:, 2], [[22, 32], [60.5, 8.5]]) and saved["visible"][:, 2].all()
    assert abs(saved["tracks"][0, 7, 0] - (22 + 3 * 5)) < 4 and abs(saved["tracks"][0, 0, 0] - (22 - 3 * 2)) < 4
    assert np.array_equal(saved["queries"], [[2, 22, 32], [2, 60.5, 8.5]])
    assert video_codec(out / "overlay.mp4") == "h264"


def test_colour_mask_is_mapped_and_said(tmp_path, capsys):
    frames, masks = square_video(T=3)
    rgb = np.zeros(masks[0].shape + (3,), np.uint8)
    rgb[masks[0] > 0] = (0, 200, 255)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    folder = frame_folder(tmp_path / "frames", frames)
    run(["--video", str(folder), "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "out")])
    assert "(0, 200, 255) -> 1" in capsys.readouterr().out
    assert set(np.unique(np.array(Image.open(tmp_path / "out" / "masks" / "00002.png")))) == {0, 1}


def test_user_errors_are_one_line(tmp_path, capsys):
    frames, masks = square_video(T=3)
    folder = frame_folder(tmp_path / "frames", frames)
    write_indexed_png(tmp_path / "small.png", masks[0][:32, :48])
    cases = [(["--video", str(folder), "--mask", str(tmp_path / "small.png")],
              "is 48x32 (WxH) but the video's frames are 96x64"),
             (["--video", str(folder)], "needs --mask PNG or --points"),
             (["--mask", str(tmp_path / "small.png")], "needs --video"),
             (["--video", str(folder), "--points", "1,2", "--mask-frame", "1"], "--mask-frame goes with --mask"),
             (["--video", str(folder), "--points", "1,2", "--preset", "dino"], "common frame protocol"),
             (["--video", str(folder), "--points", "1,2", "--cache", str(tmp_path)], "not for --task video"),
             (["--video", str(folder), "--points", "1,2", "--report"], "--report: not for --task video"),
             (["--video", str(folder), "--points", "1,2", "--max-side", "0"], "--max-side must be >= 1")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run([*argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):
        main(["--task", "davis", "--video", str(folder)])
    assert "--video: for --task video only" in capsys.readouterr().err
