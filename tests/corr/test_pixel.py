"""Fine-grained pixel loss: each term against the authors' formula, written out here from their
mixed tracker (mmpt) on the same small inputs, and the loss end to end."""
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr.encoders import CHECKPOINT_FORMAT, build_encoder, encoder_features, load_checkpoint, reads_lab
from corr.losses.pixel import (
    CorrelationDiscriminator,
    FinePixelLoss,
    domain_loss,
    drop_colour_channel,
    forward_backward_visible,
    local_correlation,
    normalised_lab,
    reconstruction_loss,
    soft_cross_entropy,
    teacher_targets,
    warp_flows,
    window_displacements,
)
from corr.warps import random_warp
from datasets.transforms import normalize_frames

# --------------------------------------------------------------------------- the authors' formulas


def their_correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """mmcv Correlation(max_displacement=R) flattened over its (dy, dx) output axes: one dot
    product per cell and displacement, 0 beyond the map."""
    n, c, h, w = a.shape
    size = 2 * radius + 1
    out = torch.zeros(n, size, size, h, w, dtype=a.dtype)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            for i in range(h):
                for j in range(w):
                    if 0 <= i + dy < h and 0 <= j + dx < w:
                        out[:, dy + radius, dx + radius, i, j] = (a[:, :, i, j] * b[:, :, i + dy, j + dx]).sum(1)
    return out.flatten(1, 2)


def their_warp(feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """mmpt Warp() (defaults: bilinear, zeros, align_corners False, use_mask True)."""
    n, _, h, w = flow.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([xx, yy], 0).to(flow)[None].repeat(n, 1, 1, 1) + flow
    grid[:, 0] = grid[:, 0] * 2.0 / max(w - 1, 1) - 1.0
    grid[:, 1] = grid[:, 1] * 2.0 / max(h - 1, 1) - 1.0
    grid = grid.permute(0, 2, 3, 1)
    out = F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(torch.ones_like(feat), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out * (mask > 0.9999).to(out)


def their_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor) -> torch.Tensor:
    """mmpt forward_backward_consistency (its ``occ_fw``: 1 = not occluded)."""
    warped = their_warp(flow_bw, flow_fw)
    diff = torch.sum((flow_fw + warped) ** 2, dim=1, keepdim=True)
    total = torch.sum(flow_fw * 2 + warped ** 2, dim=1, keepdim=True)
    return (diff < total * 0.01 + 0.5).to(flow_fw)


# --------------------------------------------------------------------------- parity


def test_lab_input_is_opencvs_conversion_of_the_8_bit_frames_normalised():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 2, 5, 6, 3), dtype=np.uint8)                     # B, T, H, W, 3
    clips = torch.stack([normalize_frames(clip) for clip in frames])                    # B, T, 3, H, W
    ours = normalised_lab(clips)
    for b in range(2):
        for t in range(2):                                                               # their loader: cvtColor
            lab = cv2.cvtColor(np.float32(frames[b, t]) / 255.0, cv2.COLOR_RGB2Lab)     # then (x - mean) / std
            want = (lab - np.array([50.0, 0.0, 0.0], np.float32)) / np.array([50.0, 127.0, 127.0], np.float32)
            assert torch.allclose(ours[b, t], torch.from_numpy(want).permute(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize("channel", [1, 2])
def test_channel_drop_matches_the_authors_in_place_drop(channel):
    images = [torch.randn(2, 3, 4, 5) for _ in range(2)]
    ours = [drop_colour_channel(image, channel) for image in images]
    for a in images:                                                     # their dropout2d_lab, one channel
        a[:, channel] = 0
        a *= 3 / (3 - 1)
    for got, want in zip(ours, images):
        assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="1 \\(a\\) or 2 \\(b\\)"):
        drop_colour_channel(images[0], 0)


def test_reconstruction_matches_the_authors_formula():
    torch.manual_seed(0)
    radius, stride, h, w, c = 2, 2, 4, 4, 6
    tar, ref = torch.randn(2, c, h, w, dtype=torch.float64), torch.randn(2, c, h, w, dtype=torch.float64)
    lab_ref, lab_tar = torch.randn(2, 1, h * stride, w * stride, dtype=torch.float64), torch.randn(
        2, 1, h * stride, w * stride, dtype=torch.float64)
    loss, corr = reconstruction_loss(tar, ref, lab_ref, lab_tar, radius)

    corr_target = their_correlation(tar, ref, radius)                     # B, K, h, w
    corr_rec = (corr_target / torch.sqrt(torch.tensor(c).float())).softmax(1)
    ref_gt = F.unfold(lab_ref[:, :, ::stride, ::stride], radius * 2 + 1, padding=radius)
    outputs = (corr_rec.reshape(2, -1, w ** 2) * ref_gt).sum(1).reshape(2, -1, h, w)
    outputs = F.interpolate(outputs, (h * stride, w * stride), mode="bilinear")
    expected = F.smooth_l1_loss(outputs * 20, lab_tar * 20, reduction="none").mean()
    assert torch.allclose(corr, corr_target, atol=1e-10)
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)


def test_local_correlation_is_differentiable_and_uses_dy_major_order():
    a = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: local_correlation(x, y, 2), (a, b))
    assert window_displacements(1).tolist()[:3] == [[-1, -1], [0, -1], [1, -1]]


def test_teacher_targets_and_occlusion_match_the_authors_formula():
    torch.manual_seed(1)
    radius, stride, h, w = 2, 2, 5, 6
    feats = torch.randn(2, 4, h, w, dtype=torch.float64)
    flow = torch.randn(2, 2, h * stride, w * stride, dtype=torch.float64) * 2.5
    flow_back = -flow + torch.randn_like(flow) * torch.rand(2, 1, h * stride, w * stride, dtype=torch.float64) * 3
    logits, used = teacher_targets(feats, flow, flow_back, radius, temperature=0.07)

    occ = their_occlusion(flow, flow_back)
    assert torch.equal(forward_backward_visible(flow, flow_back), occ[:, 0].bool())
    assert 0 < occ.mean() < 1                                              # both cases occur
    self_f = F.normalize(feats, dim=2)                                    # as their code writes it
    mask = occ[:, :, ::stride, ::stride].reshape(-1)
    flow_ = flow[:, :, ::stride, ::stride] / 2
    flow_d = flow_ + radius
    valid = ((flow_d[:, 0] >= 0) & (flow_d[:, 0] <= radius * 2) & (flow_d[:, 1] >= 0)
             & (flow_d[:, 1] <= radius * 2)).view(-1) * mask.bool()
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = (torch.stack([xx, yy], 0).double()[None].repeat(2, 1, 1, 1) + flow_).permute(0, 2, 3, 1).clone()
    grid[..., 0] = grid[..., 0] * 2.0 / max(w - 1, 1) - 1.0
    grid[..., 1] = grid[..., 1] * 2.0 / max(h - 1, 1) - 1.0
    warp_feats = F.grid_sample(self_f, grid, "bilinear", "zeros", True)
    att = their_correlation(warp_feats, self_f, radius) / 0.07
    assert torch.equal(used.reshape(-1), valid)
    assert 0 < valid.sum() < valid.numel()
    assert torch.allclose(logits, att, atol=1e-10)

    student = torch.randn_like(att)
    pred = student.permute(0, 2, 3, 1).reshape(-1, (2 * radius + 1) ** 2)[valid]
    gt = att.permute(0, 2, 3, 1).reshape(-1, (2 * radius + 1) ** 2)[valid]
    expected = torch.sum(-F.log_softmax(pred, dim=-1) * gt.softmax(dim=-1)) / pred.shape[0]   # Soft_Ce_Loss
    assert float(soft_cross_entropy(student, logits, used)) == pytest.approx(float(expected), abs=1e-5)
    assert float(soft_cross_entropy(student, logits, torch.zeros_like(used))) == 0.0


def test_discriminator_has_the_released_shape_and_reverses_gradients():
    torch.manual_seed(0)
    disc = CorrelationDiscriminator(49)
    linears = [m for m in disc.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(49, 24), (24, 12), (12, 1)]
    synthetic = torch.randn(2, 49, 3, 4, requires_grad=True)
    real = torch.randn(2, 49, 3, 4, requires_grad=True)
    loss, accuracy = domain_loss(disc, synthetic, real)

    def plain(x):                                                          # their GradReverseDiscriminator, no reversal
        return disc.layers(x.permute(0, 2, 3, 1).flatten(0, 2))
    preds = torch.cat([plain(synthetic), plain(real)], 0)
    labels = torch.cat([torch.zeros(24), torch.ones(24)], 0)[:, None]
    expected = F.binary_cross_entropy_with_logits(preds, labels)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), abs=1e-6) and 0 <= accuracy <= 1
    got = torch.autograd.grad(loss, synthetic, retain_graph=True)[0]
    want = torch.autograd.grad(expected, synthetic)[0]
    assert torch.allclose(got, -want, atol=1e-7)


# --------------------------------------------------------------------------- end to end


def test_warp_flows_are_exact_and_pass_the_occlusion_check():
    warp = random_warp(24, 32, "affine", generator=torch.Generator().manual_seed(0))
    flow, back = warp_flows([warp], 24, 32)
    assert flow.shape == back.shape == (1, 2, 24, 32)
    q = torch.tensor([[7.0, 5.0]], dtype=torch.float64)
    assert torch.allclose(flow[0, :, 5, 7].double(), (warp.to_warped(q) - q)[0].to(torch.float32).double(), atol=1e-5)
    assert forward_backward_visible(flow, back)[0, 8:16, 10:22].all()      # bijective: visible away from the border


def test_lab_encoder_has_the_released_layout_and_round_trips(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18-fgvc", out_layer="layer4")
    assert isinstance(encoder.maxpool, torch.nn.Identity) and encoder.conv1.stride == (2, 2)
    assert encoder.layer2[0].conv1.stride == encoder.layer3[0].conv1.stride == (1, 1)
    assert encoder.layer4[0].conv1.stride == encoder.layer4[0].downsample[0].stride == (4, 4)
    assert encoder.conv1.padding_mode == "zeros" and float(encoder.layer1[0].bn2.weight.abs().sum()) == 0
    images = torch.randn(1, 3, 22, 30)
    assert encoder(images).shape == (1, 512, 3, 4) and encoder.stride == 8        # ceil(22 / 8), ceil(30 / 8)
    with torch.no_grad():
        lab = encoder_features(encoder.eval(), encoder.prepare(images), "layer3", prepared=True)
        assert torch.allclose(lab, encoder_features(encoder, images, "layer3"), atol=1e-6)
    assert lab.shape == (1, 256, 11, 15)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "encoder": {"name": "resnet18-fgvc", "kwargs": {"out_layer": "layer4"},
                                                         "state_dict": encoder.state_dict()}}, path)
    loaded, info = load_checkpoint(path)
    assert reads_lab(loaded) and loaded.stride == 2 and info["encoder"] == "resnet18-fgvc"
    with torch.no_grad():
        assert torch.allclose(loaded(images), lab, atol=1e-5)


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 1.0, 0.0)])
def test_pixel_loss_trains_the_encoder_with_each_term(weights):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18-fgvc", out_layer="layer4")
    loss_fn = FinePixelLoss(2, *weights)
    frames = torch.randn(2, 2, 3, 16, 20)
    loss, diagnostics, visuals = loss_fn(frames, encoder, generator=torch.Generator().manual_seed(0), visuals=True)
    loss.backward()
    assert torch.isfinite(loss) and encoder.conv1.weight.grad.abs().sum() > 0
    assert ("rec" in diagnostics) == (weights[0] > 0 or weights[2] > 0)
    assert ("sup" in diagnostics) == (weights[1] > 0) and ("domain" in diagnostics) == (weights[2] > 0)
    if weights[1] > 0:
        assert visuals["matches"].shape == (2, 8, 10, 2) and visuals["used"].any()
        assert loss_fn.domain_classifier is None or loss_fn.domain_classifier.layers[0].weight.grad is not None
    with pytest.raises(ValueError, match="LAB encoder"):
        loss_fn(frames, build_encoder("resnet18-s4"))


def test_a_teacher_gives_the_targets_and_stays_frozen():
    torch.manual_seed(0)
    teacher = build_encoder("resnet18-fgvc")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss_fn = FinePixelLoss(2, 0.0, 1.0, 0.0, teacher=teacher)
    assert not list(loss_fn.parameters()) and "teacher" not in str(list(loss_fn.state_dict()))
    encoder = build_encoder("resnet18-fgvc", out_layer="layer4")
    frames = torch.randn(1, 2, 3, 16, 20)
    loss, _ = loss_fn(frames, encoder, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    own, _ = FinePixelLoss(2, 0.0, 1.0, 0.0)(frames, encoder, generator=torch.Generator().manual_seed(0))
    assert not math.isclose(float(own), float(loss))                   # the teacher's targets differ from self-targets


def test_predicted_matches_stay_in_the_map():
    logits = torch.full((1, 25, 4, 5), -5.0)
    logits[:, window_displacements(2).tolist().index([2, -1])] = 5.0
    predicted = FinePixelLoss(2).predicted_matches(logits)
    assert predicted[0, 2, 1].tolist() == [3.0, 1.0]
    assert predicted[0, 0, 0].tolist() != [2.0, -1.0]
    assert np.isfinite(predicted.numpy()).all()


def test_flow_pairs_replace_the_warped_pairs_with_their_own_flows():
    """A FlyingThings3D-style pair: J = I shifted 2 px right, flow on I's pixels = +2 px in x."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet18-fgvc", out_layer="layer4")
    loss_fn = FinePixelLoss(2, 0.0, 1.0, 0.0)
    frames = torch.randn(1, 2, 3, 16, 20)
    target = torch.randn(1, 3, 16, 20)
    reference = torch.roll(target, 2, dims=-1)
    flow = torch.zeros(1, 2, 16, 20)
    flow[:, 0] = 2.0
    pairs = {"frames": torch.stack([reference, target], dim=1), "flow": flow, "flow_back": -flow}
    loss, diagnostics, visuals = loss_fn(frames, encoder, generator=torch.Generator().manual_seed(0), visuals=True,
                                         flow_pairs=pairs)
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(10), indexing="ij")
    assert torch.equal(visuals["matches"][0], torch.stack([xs + 1.0, ys.float()], dim=-1))   # 2 px = 1 cell at s=2
    assert visuals["in_view"].all() and torch.isfinite(loss) and diagnostics["sup_used"] > 0.5
    warped, _ = loss_fn(frames, encoder, generator=torch.Generator().manual_seed(0))
    assert not math.isclose(float(warped), float(loss))                # not the warp of frame 0
