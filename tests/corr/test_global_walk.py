"""Global-matching walk: label warping, the walk loss, flow chaining and occlusion."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from corr.flow_track import FlowTrackConfig, chain_tracks, flow_targets, pair_flows, track_video, video_flows
from corr.geometry import apply_affine, cell_centres, crop_box_affine
from corr.global_match import GlobalMatchConfig, GlobalMatchNet, pair_transition_logits
from corr.losses.global_walk import GlobalWalkLoss, rounded_targets
from datasets.transforms import normalize_frames

TINY = GlobalMatchConfig(feature_dim=16, num_layers=2, cnn_widths=(8, 12, 16))


# ------------------------------------------------------------------------ label warping


def test_label_warp_maps_crop_a_points_onto_crop_b_exactly():
    rng = np.random.default_rng(0)
    size = 96
    for _ in range(20):
        box_a = (*rng.integers(0, 100, 2), *rng.integers(40, 200, 2))          # top, left, h, w
        box_b = (*rng.integers(0, 100, 2), *rng.integers(40, 200, 2))
        source = rng.uniform(0, 300, size=(7, 2))                                # scene points (x, y)
        (ta, la, ha, wa), (tb, lb, hb, wb) = box_a, box_b
        in_a = (source - [la, ta]) * [size / wa, size / ha]
        in_b = (source - [lb, tb]) * [size / wb, size / hb]
        affine = crop_box_affine(torch.tensor([box_a], dtype=torch.float64), torch.tensor([box_b], dtype=torch.float64),
                                 size)
        mapped = apply_affine(affine, torch.as_tensor(in_a)[None])[0].numpy()
        np.testing.assert_allclose(mapped, in_b, atol=1e-4)


def test_rounded_targets_and_validity():
    # crop b is crop a shifted left by 0.4 cell and one cell up
    affine = torch.tensor([[[1.0, 0.0, -1.6], [0.0, 1.0, -4.0]]])
    index, valid = rounded_targets(affine, (4, 4), (4, 4), stride=4)
    i = 2 * 4 + 1                                   # cell (y=2, x=1) -> (0.6, 1.0) in cells -> cell (1, 1)
    assert int(index[0, i]) == 5 and valid[0, i]
    assert not valid[0, 0]                          # row 0 lands a cell above crop b
    assert valid[0, 4] and int(index[0, 4]) == 0    # x = -0.4: more than half inside, rounds to column 0


# --------------------------------------------------------------------------- walk loss


def _logits(q: torch.Tensor, k: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    return (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T / tau)[None]


def test_walk_loss_is_minimal_at_the_true_correspondence():
    torch.manual_seed(0)
    h = w = 6
    scene = torch.randn(h, w + 2, 32)                               # scene points seen by the crops
    frame_a = scene[:, :w].reshape(h * w, 32)                       # crop a: scene columns 0..5
    frame_b_true = scene[:, 1:w + 1].reshape(h * w, 32)             # crop b: scene columns 1..6
    affine = torch.tensor([[[1.0, 0.0, -4.0], [0.0, 1.0, 0.0]]])  # a pixel x -> x - 4 (one cell left)
    loss_fn = GlobalWalkLoss()
    true, diag = loss_fn(_logits(frame_a, frame_a), _logits(frame_a, frame_b_true), affine, (h, w), stride=4)
    # the shortcut: crop b's features equal crop a's position by position
    shortcut, _ = loss_fn(_logits(frame_a, frame_a), _logits(frame_a, frame_a), affine, (h, w), stride=4)
    random_b, _ = loss_fn(_logits(frame_a, frame_a), _logits(frame_a, torch.randn(h * w, 32)), affine, (h, w),
                          stride=4)
    assert float(true) < 0.05 and diag["acc"] == pytest.approx(1.0)
    assert float(true) < float(shortcut) - 1.0 and float(true) < float(random_b) - 1.0
    assert diag["valid"] == pytest.approx(30 / 36)                  # column 0 leaves crop b


def test_smoothness_term_ramps_and_penalises_rough_flow():
    torch.manual_seed(0)
    h = w = 5
    feats = torch.randn(h * w, 16)
    smooth_logits = _logits(feats, feats)                                            # zero flow
    rough_logits = _logits(feats, feats[torch.randperm(h * w)])                      # scrambled flow
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    images = torch.zeros(1, 2, 3, 20, 20)
    loss_fn = GlobalWalkLoss(smoothness_weight=1.0, smoothness_ramp=(10, 20))
    assert loss_fn.smoothness_at(0) == 0.0 and loss_fn.smoothness_at(15) == 0.5 and loss_fn.smoothness_at(50) == 1.0
    _, smooth = loss_fn(smooth_logits, smooth_logits, identity, (h, w), images=images, step=20)
    _, rough = loss_fn(rough_logits, rough_logits, identity, (h, w), images=images, step=20)
    assert smooth["smooth"] < 2e-3 < rough["smooth"]


def _two_step_loss(model, loss_fn, frames, affine):
    """The walk loss of ``frames (B, 3, 3, H, W) = [1a, 2a, 1b]``: pairs (1a, 2a) and (2a, 1b) through the network."""
    b = frames.shape[0]
    f_src, f_dst = model(torch.cat([frames[:, 0], frames[:, 1]]), torch.cat([frames[:, 1], frames[:, 2]]))
    logits = pair_transition_logits(f_src, f_dst, model.temperature)                       # 2B, N, N
    return loss_fn(logits[:b], logits[b:], affine, tuple(f_src.shape[-2:]), model.stride, images=frames[:, :2],
                   step=1)


def test_training_step_gives_finite_gradients_on_non_square_sizes():
    torch.manual_seed(0)
    model = GlobalMatchNet(TINY)
    frames = torch.randn(2, 3, 3, 40, 48)                                          # 10 x 12 cells
    affine = torch.tensor([[[0.8, 0.0, 3.0], [0.0, 1.1, -2.0]]]).repeat(2, 1, 1)
    loss, diag = _two_step_loss(model, GlobalWalkLoss(0.1), frames, affine)
    loss.backward()
    assert torch.isfinite(loss) and 0 < diag["valid"] <= 1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    f1, f2 = model(frames[:, 0], frames[:, 1])
    assert f1.shape == f2.shape == (2, 16, 10, 12)


# ---------------------------------------------------------------------------- tracking


def _translating_video(velocity, num_frames=6, size=40, seed=0):
    """A smooth random colour texture moving by ``velocity`` (x, y) pixels per frame: float (T, 3, size, size)."""
    rng = np.random.default_rng(seed)
    big = torch.as_tensor(rng.random((1, 3, 3 * size, 3 * size)), dtype=torch.float32)
    big = F.avg_pool2d(big, 3, stride=1, padding=1)
    frames = []
    for t in range(num_frames):
        dx, dy = velocity[0] * t, velocity[1] * t
        # frame pixel (x, y) shows texture position (x - dx + size, y - dy + size)
        ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        gx = (xs - dx + size) / (3 * size) * 2 - 1
        gy = (ys - dy + size) / (3 * size) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1)[None].float()
        frames.append(F.grid_sample(big, grid, mode="bilinear", align_corners=False)[0])
    return torch.stack(frames)


def _descriptor_flows(video: torch.Tensor, tau: float = 0.01):
    """Forward/backward flows from 7x7 colour patch descriptors at stride 1 (a stand-in feature)."""
    t, _, h, w = video.shape
    desc = F.unfold(video, 7, padding=3)                                            # T, 147, h w
    desc = F.normalize(desc - desc.mean(dim=1, keepdim=True), dim=1)
    desc = rearrange(desc, "t c (h w) -> t c h w", h=h, w=w)
    return pair_flows(desc[:-1], desc[1:], tau, stride=1, flow="weighted_argmax", window_threshold=2.5)


@pytest.mark.parametrize("velocity", [(2.0, -1.0), (1.5, 0.5)])
def test_chained_flows_recover_translation_within_a_pixel(velocity):
    video = _translating_video(velocity)
    forward, backward = _descriptor_flows(video)
    queries = np.array([[0, 20.5, 14.5], [0, 14.0, 18.0], [3, 20.0, 20.0]])         # t, y, x
    tracks, occluded = chain_tracks(forward, backward, queries, (40, 40), stride=1, occlusion_threshold=1.0)
    times = np.arange(video.shape[0])
    for q, (t0, y, x) in enumerate(queries):
        expected = np.stack([x + velocity[0] * (times - t0), y + velocity[1] * (times - t0)], axis=1)
        assert np.abs(tracks[q] - expected).max() < 1.0, (q, tracks[q], expected)
        assert not occluded[q].any()


def test_point_leaving_the_frame_is_occluded():
    h = w = 10                                                                     # 40 x 40 pixels, stride 4
    forward = torch.zeros(5, 2, h, w)
    forward[:, 0] = 3.0                                                            # everything moves 3 px right
    backward = -forward
    queries = np.array([[0, 20.0, 30.0], [2, 20.0, 10.0]])                           # t, y, x
    tracks, occluded = chain_tracks(forward, backward, queries, (40, 40), stride=4)
    np.testing.assert_allclose(tracks[0, :, 0], 30 + 3 * np.arange(6))
    assert occluded[0].tolist() == [False, False, False, False, True, True]       # x = 42, 45 >= 40
    np.testing.assert_allclose(tracks[1, :, 0], 10 + 3 * (np.arange(6) - 2))      # chained backward too
    assert not occluded[1].any()
    # forward-backward disagreement of pair (2, 3): both frames 2 and 3 fail, but the query frame is visible
    backward[2, 0] = 0.0
    _, occluded = chain_tracks(forward, backward, queries, (40, 40), stride=4, occlusion_threshold=1.0)
    assert occluded[1, 3] and not occluded[1, 2] and occluded[0, 2] and occluded[0, 3] and not occluded[0, 1]


def _track(model, frames, queries, cfg=FlowTrackConfig()):
    """Tracks and occlusion of ``queries [t, y, x]`` through ``uint8 frames (T, H, W, 3)``."""
    return track_video(model.eval(), normalize_frames(frames), queries, cfg)


def test_video_flows_chain_to_tapvid_shapes_with_the_query_frame_visible():
    torch.manual_seed(0)
    model = GlobalMatchNet(TINY)
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)
    queries = np.array([[0, 10.0, 12.0], [2, 5.5, 40.0]])
    tracks, occluded = _track(model, frames, queries, FlowTrackConfig(occlusion_threshold=8.0))
    assert tracks.shape == (2, 4, 2) and occluded.shape == (2, 4)
    np.testing.assert_allclose(tracks[0, 0], [12.0, 10.0])
    np.testing.assert_allclose(tracks[1, 2], [40.0, 5.5])
    assert not occluded[0, 0] and not occluded[1, 2]


def test_frame_loss_crops_agree_with_their_affine_exactly():
    from corr.losses.global_walk import crop_resize, random_boxes

    torch.manual_seed(0)
    height, width, size = 50, 70, 32
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    ramp = torch.stack([xs, ys, torch.zeros_like(xs)])[None].repeat(3, 1, 1, 1).double()   # value = source (x, y)
    box_a = random_boxes(3, height, width, (0.3, 0.9), (0.75, 1.33)).double()
    box_b = random_boxes(3, height, width, (0.3, 0.9), (0.75, 1.33)).double()
    crop_a, crop_b = crop_resize(ramp, box_a, size), crop_resize(ramp, box_b, size)
    affine = crop_box_affine(box_a, box_b, size)
    centre = torch.tensor([[5.5, 7.5], [20.5, 11.5], [16.0, 16.0]], dtype=torch.float64)     # crop-a pixels (x, y)
    source_a = torch.stack([crop_a[:, :2, 7, 5], crop_a[:, :2, 11, 20]], dim=1)            # at the first two centres
    mapped = apply_affine(affine, centre[:2])                                                # crop-b pixels
    # crop b shows source (left_b + x_b h_b / size, ...) at x_b: the same scene point
    top_b, left_b, h_b, w_b = box_b.unbind(1)
    source_b = torch.stack([left_b[:, None] + mapped[..., 0] * w_b[:, None] / size,
                            top_b[:, None] + mapped[..., 1] * h_b[:, None] / size], dim=-1)
    assert torch.allclose(source_a, source_b, atol=1e-4)
    assert crop_b.shape == (3, 3, size, size)


def test_frame_loss_trains_the_network_it_owns():
    from corr.losses.global_walk import GlobalWalkFrameLoss

    torch.manual_seed(0)
    loss_fn = GlobalWalkFrameLoss(GlobalMatchNet(TINY), smoothness_weight=0.1, smoothness_ramp=(0, 4))
    loss_fn(torch.randn(2, 4, 3, 32, 32))
    loss, diag = loss_fn(torch.randn(2, 4, 3, 32, 32))
    loss.backward()
    assert torch.isfinite(loss) and int(loss_fn.steps_seen) == 2 and diag["smooth_weight"] == pytest.approx(0.025)
    assert all(p.grad is not None for p in loss_fn.model.parameters())


def test_train_py_with_loss_global_walk_saves_a_network_the_tracker_loads(tmp_path):
    import cv2

    from corr.global_match import load_global_match
    from corr.train import TrainConfig, train

    rng = np.random.default_rng(0)
    (tmp_path / "frames" / "a").mkdir(parents=True)
    texture = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    for t in range(3):
        cv2.imwrite(str(tmp_path / "frames" / "a" / f"{t:05d}.jpg"), texture[:, 2 * t:2 * t + 64])
    cfg = TrainConfig(data=str(tmp_path / "frames"), out=str(tmp_path / "run"), loss="global_walk", steps=2,
                      batch_size=2, clip_len=2, frame_skip=1, clips_per_video=2, crop_size=32, walk_crop_size=0,
                      mode="dense",
                      num_workers=0, progress=False, image_every=0, checkpoint_every=1, log_every=1, device="cpu")
    result = train(cfg)
    assert len(result.losses) == 2 and all(np.isfinite(list(result.losses.values())))
    model = load_global_match(result.checkpoint)
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert any(k.startswith("losses.global_walk.model.") for k in state["heads"]["losses"])
    tracks, _ = _track(model, texture[None, :, :64].repeat(2, axis=0), np.array([[0, 10.0, 10.0]]))
    assert model.cfg == GlobalMatchConfig() and state["config"]["match_net"] == "gmflow"
    assert tracks.shape == (1, 2, 2)


def test_training_network_starts_as_the_seeded_random_network_evaluation_builds():
    """Label propagation with the untrained backbone (``--encoder global-match --seed s``) is the
    training run's own starting point, whatever was drawn before the loss was built."""
    from corr.train import TrainConfig
    from corr.train.config import resolve_config
    from corr.train.objectives import build_global_walk_loss
    from propagate.encoder_loading import load_global_match_model
    from propagate.eval_config import EvalConfig

    torch.manual_seed(123)
    torch.randn(1000)  # the run draws its encoder and data first
    trained = build_global_walk_loss(resolve_config(TrainConfig(loss="global_walk", data="clips", seed=3))).model
    after = torch.randn(3)
    torch.manual_seed(123)
    torch.randn(1000)
    assert torch.equal(after, torch.randn(3))  # the loss's draw leaves the run's stream alone
    initial, info = load_global_match_model(EvalConfig(task="tapvid", encoder="global-match", seed=3),
                                            torch.device("cpu"))
    assert info["format"] == "random-init" and info["seed"] == 3
    for (name, a), (_, b) in zip(trained.state_dict().items(), initial.state_dict().items()):
        assert torch.equal(a, b), name
    other = build_global_walk_loss(resolve_config(TrainConfig(loss="global_walk", data="clips", seed=4))).model
    assert not torch.equal(next(iter(other.parameters())), next(iter(trained.parameters())))


# ------------------------------------------------------------------ flows and AMP


def test_pair_flows_in_row_chunks_equal_flows_of_the_transition_logits():
    torch.manual_seed(0)
    f1, f2 = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 6, 5)
    logits = pair_transition_logits(f1, f2, 0.1)
    centres = rearrange(cell_centres(6, 5, 4), "h w c -> (h w) c")

    def flows(rows, method):
        return rearrange(flow_targets(rows, (6, 5), 4, method, 1.5) - centres, "b (h w) c -> b c h w", h=6, w=5)

    for method in ("weighted_sum", "weighted_argmax"):
        forward, backward = pair_flows(f1, f2, 0.1, stride=4, flow=method, window_threshold=1.5,
                                       max_logits=2 * 30 * 7)  # 7 rows
        torch.testing.assert_close(forward, flows(logits, method), atol=1e-4, rtol=0)
        torch.testing.assert_close(backward, flows(logits.transpose(1, 2), method), atol=1e-4, rtol=0)


def test_flow_arithmetic_stays_float32_under_autocast():
    """Flow expectations and flow sampling ignore autocast: bfloat16 would round pixel
    positions near 256 to steps of 1-2 pixels."""
    from corr.flow_track import sample_flow

    torch.manual_seed(0)
    grid = (64, 64)
    logits = torch.randn(1, 64 * 64, 64 * 64) * 4
    points = torch.rand(50, 2) * 256

    def as_field(targets):                                                       # (1, h w, 2) -> (2, h, w)
        return rearrange(targets[0], "(h w) c -> c h w", h=64, w=64)

    expected = flow_targets(logits, grid, 4, "weighted_argmax", 3)
    sampled = sample_flow(as_field(expected), points, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = flow_targets(logits, grid, 4, "weighted_argmax", 3)
        got_whole = flow_targets(logits, grid, 4)
        got_sampled = sample_flow(as_field(got), points, 4)
    assert got.dtype == got_sampled.dtype == torch.float32
    assert torch.equal(got, expected) and torch.equal(got_sampled, sampled)
    torch.testing.assert_close(got_whole, flow_targets(logits, grid, 4), atol=1e-4, rtol=0)


def test_walk_loss_and_tracker_under_bfloat16_autocast():
    """The network in bfloat16, logits, softmax, the walk and the flows in float32: finite and
    close to the float32 run (loose: the features themselves are rounded)."""
    from corr.losses.global_walk import GlobalWalkFrameLoss

    torch.manual_seed(0)
    model = GlobalMatchNet(TINY)
    frames = torch.randn(2, 3, 3, 40, 48)
    affine = torch.tensor([[[0.8, 0.0, 3.0], [0.0, 1.1, -2.0]]]).repeat(2, 1, 1)
    reference, _ = _two_step_loss(model, GlobalWalkLoss(0.1), frames, affine)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f1, f2 = model(frames[:, 0], frames[:, 1])
        assert f1.dtype == torch.bfloat16 and pair_transition_logits(f1, f2, 0.05).dtype == torch.float32
        loss, diag = _two_step_loss(model, GlobalWalkLoss(0.1), frames, affine)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=0.02)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    frame_loss = GlobalWalkFrameLoss(GlobalMatchNet(TINY), smoothness_weight=0.1)
    clip = torch.randn(2, 2, 3, 32, 32)
    torch.manual_seed(5)                                                            # same random crops
    reference, _ = frame_loss(clip)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = frame_loss(clip)
    assert loss.dtype == torch.float32 and float(loss.detach()) == pytest.approx(float(reference.detach()), rel=0.02)

    video = torch.randn(4, 3, 32, 48)
    cfg = FlowTrackConfig(flow_method="weighted_argmax", window_threshold=2.5)
    forward, backward = video_flows(model.eval(), video, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forward_amp, backward_amp = video_flows(model, video, cfg)
    assert forward_amp.dtype == torch.float32
    assert torch.isfinite(forward_amp).all() and torch.isfinite(backward_amp).all()
    # a random network's rows are flat, so rounding moves some argmaxes; most flows agree
    assert (forward_amp - forward).abs().median() < 0.5 and (backward_amp - backward).abs().median() < 0.5
