"""propagate.track: the streaming video API on generated arrays (pixel encoder, small frames)."""
import numpy as np
import pytest
import torch

from corr.encoders import build_encoder
from corr.errors import OptionError
from datasets.transforms import normalize_frames
from propagate import PropagationConfig, Propagator, track
from propagate.labels import track_points
from propagate.track import framing_for, parse_points

H, W, SIDE, STEP = 64, 96, 16, 3


def square_video(T=12, object_id=3):
    """A red square moving right by STEP pixels a frame over a smooth gradient; its masks (T, H, W)."""
    yy, xx = np.mgrid[0:H, 0:W]
    background = np.stack([40 + 100 * xx / W, 60 + 120 * yy / H, np.full((H, W), 200.0)], -1)
    frames, masks = [], []
    for t in range(T):
        frame, mask = background.copy(), np.zeros((H, W), np.uint8)
        y, x = 24, 8 + STEP * t
        frame[y:y + SIDE, x:x + SIDE] = (230, 40, 30)
        mask[y:y + SIDE, x:x + SIDE] = object_id
        frames.append(frame.astype(np.uint8))
        masks.append(mask)
    return np.stack(frames), np.stack(masks)


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_mask_keeps_its_id_and_follows_the_square():
    frames, masks = square_video()
    out = list(track(frames, first_mask=masks[0], encoder="pixel", context=4))
    assert [f.index for f in out] == list(range(len(frames)))
    assert all(f.mask.shape == (H, W) and f.mask.dtype == np.uint8 for f in out)
    assert all(set(np.unique(f.mask)) == {0, 3} for f in out)            # the mask's own id, nothing else
    assert min(iou(f.mask == 3, masks[f.index] == 3) for f in out) > 0.6
    last = np.argwhere(out[-1].mask == 3)[:, 1].mean()
    assert abs(last - (8 + STEP * 11 + SIDE / 2 - 0.5)) < 3              # its centre moved with the square
    assert np.array_equal(out[5].frame, frames[5])


def test_mask_on_a_later_frame_goes_forward_then_backward():
    frames, masks = square_video()
    out = list(track(frames, first_mask=masks[6], mask_frame=6, encoder="pixel", context=4))
    assert [f.index for f in out] == [6, 7, 8, 9, 10, 11, 5, 4, 3, 2, 1, 0]
    assert np.array_equal(out[0].mask, masks[6])
    assert min(iou(f.mask == 3, masks[f.index] == 3) for f in out) > 0.6


def test_backward_pass_equals_propagation_on_the_reversed_video():
    """Frames N-1..0 are the forward algorithm run on the reversed video from frame N."""
    frames, masks = square_video(T=9)
    later = {f.index: f.mask for f in track(frames, first_mask=masks[5], mask_frame=5, encoder="pixel")}
    reversed_run = {f.index: f.mask for f in track(frames[5::-1].copy(), first_mask=masks[5], encoder="pixel")}
    for t in range(6):
        assert np.array_equal(later[t], reversed_run[5 - t])


def test_points_follow_a_moving_blob():
    frames, _ = square_video()
    start = np.array([[16.0, 32.0], [60.5, 8.5]])   # the square's centre; a background point
    out = list(track(frames, points=start, encoder="pixel", context=4))
    tracks = np.stack([f.points for f in out])      # (T, Q, 2)
    expected = 16.0 + STEP * np.arange(len(frames))
    assert np.abs(tracks[:, 0, 0] - expected).max() < 4
    assert np.abs(tracks[:, 0, 1] - 32.0).max() < 2
    assert out[0].visible.all() and np.array_equal(out[0].points, start)
    assert np.stack([f.visible for f in out])[:, 0].all()


def test_points_match_the_tapvid_tracker_on_the_same_features():
    """The streaming point tracker decodes like :func:`propagate.labels.track_points` (TAP-Vid)."""
    frames, _ = square_video(T=6)
    points = np.array([[16.0, 32.0], [40.5, 12.5]])
    out = list(track(frames, points=points, encoder="pixel", radius=float("inf"), pad_with_first=False))
    encoder = build_encoder("pixel")
    feats = encoder(normalize_frames(frames, device="cpu")).float()
    prop = Propagator(PropagationConfig.preset("crw", radius=None, pad_with_first=False))
    queries = np.concatenate([np.zeros((2, 1)), points[:, ::-1]], axis=1)   # (t, y, x)
    tracks, occluded = track_points(prop.propagate, feats, queries, encoder.stride, backward=False)
    assert np.allclose(np.stack([f.points for f in out], axis=1), tracks, atol=1e-4)
    assert np.array_equal(~np.stack([f.visible for f in out], axis=1), occluded)


def test_downscaling_keeps_outputs_at_the_video_size():
    frames, masks = square_video(T=4)
    out = list(track(frames, first_mask=masks[0], encoder="pixel", max_side=48))
    assert all(f.mask.shape == (H, W) for f in out)
    assert framing_for((H, W), 8, max_side=48).input_size == (32, 48)
    assert framing_for((H, W), 8).input_size == (H, W)                   # never upscaled
    points = list(track(frames, points=[(16.0, 32.0)], encoder="pixel", max_side=48))
    assert np.allclose(points[0].points, [[16.0, 32.0]])                 # given in video pixels


def test_a_mask_of_another_size_is_an_error_naming_both_sizes():
    frames, masks = square_video(T=3)
    with pytest.raises(OptionError, match=r"is 48x32 \(WxH\) but the video's frames are 96x64"):
        track(frames, first_mask=masks[0][:32, :48], encoder="pixel")


def test_bad_requests_are_option_errors():
    frames, masks = square_video(T=3)
    with pytest.raises(OptionError, match="first_mask or points"):
        track(frames, encoder="pixel")
    with pytest.raises(OptionError, match="holds no object"):
        track(frames, first_mask=np.zeros((H, W), np.uint8), encoder="pixel")
    with pytest.raises(OptionError, match="the video has 3 frames"):
        track(frames, first_mask=masks[0], mask_frame=3, encoder="pixel")
    with pytest.raises(OptionError, match="unknown option"):
        track(frames, first_mask=masks[0], encoder="pixel", top_k=3)
    with pytest.raises(OptionError, match="outside the 96x64 frame"):
        track(frames, points=[(100.0, 3.0)], encoder="pixel")
    with pytest.raises(OptionError, match="max-side does not apply"):
        track(frames, first_mask=masks[0], encoder="pixel", preset="dino", max_side=64)


def test_parse_points():
    assert np.array_equal(parse_points("1,2; 3.5,4", (10, 10)), [[1.0, 2.0], [3.5, 4.0]])
    with pytest.raises(OptionError, match="x,y;x,y"):
        parse_points("1;2", (10, 10))


def test_a_given_module_is_used_and_frames_are_encoded_in_batches():
    frames, masks = square_video(T=5)
    pixel, batches = build_encoder("pixel"), []

    class Counting(torch.nn.Module):
        stride = pixel.stride

        def forward(self, x):
            batches.append(x.shape[0])
            return pixel(x)

    out = list(track(frames, first_mask=masks[0], encoder=Counting(), batch_size=2))
    assert batches == [2, 2, 1] and len(out) == 5
