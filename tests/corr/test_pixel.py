"""Fine-grained pixel loss: optimum at the true correspondence, gradients, shapes."""
import pytest
import torch

from corr.encoders import build_encoder, encoder_features
from corr.losses.pixel import FinePixelLoss, local_correlation, soft_cross_entropy, soft_targets, window_displacements

h, w = 10, 12


def position_codes(shift_x: int = 0) -> torch.Tensor:
    """One-hot features: channel c is 1 at the cell of index c (after a shift by ``shift_x``)."""
    codes = torch.eye(h * w).reshape(h * w, h, w)
    return torch.roll(codes, shifts=shift_x, dims=-1)[None]                 # 1, C, h, w


def true_matches(shift_x: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs + shift_x, ys], dim=-1)[None]                    # 1, h, w, 2


def warp_ce(source, reference, matches, radius=3, tau=0.07, sigma=0.5):
    corr, valid = local_correlation(source, reference, radius)
    target, _ = soft_targets(matches, radius, sigma)
    used = torch.ones(1, h, w, dtype=torch.bool)
    used[..., -3:] = False                                                  # matches beyond the map
    return soft_cross_entropy(corr / tau, target, valid, used)


def test_local_correlation_shapes_and_values():
    a, b = torch.randn(2, 5, h, w), torch.randn(2, 5, h, w)
    corr, valid = local_correlation(a, b, 2)
    assert corr.shape == (2, 25, h, w) and valid.shape == (25, h, w)
    disp = window_displacements(2).tolist()
    k = disp.index([1, -2])
    assert torch.allclose(corr[:, k, 4, 6], (a[:, :, 4, 6] * b[:, :, 2, 7]).sum(1), atol=1e-6)
    assert not valid[k, 0, 0] and valid[k, 4, 6]


def test_warp_term_is_smallest_at_the_true_match():
    source, reference = position_codes(), position_codes(shift_x=2)        # content moved 2 cells right
    right, diag_right = warp_ce(source, reference, true_matches(2.0))
    wrong, diag_wrong = warp_ce(source, reference, true_matches(0.0))
    off, _ = warp_ce(source, reference, true_matches(1.0))
    assert right < off < wrong
    assert diag_right["warp_kl"] < diag_wrong["warp_kl"]


def test_soft_cross_entropy_minimum_is_the_target_itself():
    target, _ = soft_targets(true_matches(1.0), 3, 0.5)
    _, valid = local_correlation(torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w), 3)
    used = torch.ones(1, h, w, dtype=torch.bool)
    used[..., -2:] = False
    exact = torch.log((target * valid) / (target * valid).sum(1, keepdim=True)).clamp_min(-1e4)
    best, diag = soft_cross_entropy(exact, target, valid, used)
    assert abs(diag["warp_kl"]) < 1e-4
    for scale in (0.5, 2.0):
        worse, diag = soft_cross_entropy(exact * scale, target, valid, used)
        assert worse > best and diag["warp_kl"] > 1e-3


def test_reconstruction_is_exact_for_matching_features():
    loss_fn = FinePixelLoss(radius=2, temperature=0.01)
    colour = torch.rand(1, 3, h, w)
    moved = torch.roll(colour, 1, dims=-1)
    good, _ = loss_fn.reconstruction_term(position_codes(1), position_codes(), moved, colour)
    bad, _ = loss_fn.reconstruction_term(position_codes(), position_codes(), moved, colour)
    assert good < 0.2 * bad


def test_gradients_reach_the_encoder_and_the_domain_head():
    domain_weight = 0.5
    torch.manual_seed(0)
    encoder = build_encoder("resnet18-s4", out_layer="layer4")
    loss_fn = FinePixelLoss(radius=3, domain_weight=domain_weight)
    frames = torch.randn(1, 2, 3, 32, 32)
    loss, diagnostics = loss_fn(frames, encoder, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"warp_ce", "warp_kl", "warp_acc", "warp_used", "rec"} <= set(diagnostics)
    assert ("domain" in diagnostics) == (domain_weight > 0)
    grads = [p.grad for name, p in encoder.named_parameters() if name.startswith("layer3")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for name, p in encoder.named_parameters() if name.startswith("layer4"))  # layer3 trained
    if domain_weight:
        assert all(p.grad is not None for p in loss_fn.parameters())


def test_stride4_features_and_bad_input():
    encoder = build_encoder("resnet18-s4")
    assert encoder_features(encoder, torch.randn(1, 3, 32, 40), "layer3").shape == (1, 256, 8, 10)
    assert encoder_features(encoder, torch.randn(1, 3, 32, 40), "layer1").shape == (1, 64, 8, 10)
    with pytest.raises(ValueError, match="frames must be"):
        FinePixelLoss()(torch.randn(2, 3, 32, 32), encoder)
    with pytest.raises(ValueError, match="needs a ResNet"):
        encoder_features(build_encoder("pixel"), torch.randn(1, 3, 32, 32), "layer3")


@pytest.mark.parametrize("name,stride", [("resnet18-s4", 4), ("resnet18-s2", 2)])
def test_high_resolution_encoders_round_trip_through_load_checkpoint(tmp_path, name, stride):
    from corr.encoders import CHECKPOINT_FORMAT, load_checkpoint

    torch.manual_seed(0)
    trained = build_encoder(name, out_layer="layer4")
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "encoder": {"name": name, "kwargs": {"out_layer": "layer4"},
                                                         "state_dict": trained.state_dict()}}, path)
    encoder, info = load_checkpoint(path)
    images = torch.randn(1, 3, 24, 32)
    assert info["encoder"] == name and encoder.stride == stride and encoder.out_layer == "layer3"
    with torch.no_grad():
        assert torch.allclose(encoder(images), encoder_features(trained.eval(), images, "layer3"), atol=1e-5)
    assert encoder(images).shape == (1, 256, 24 // stride, 32 // stride)


def test_pixel_loss_trains_a_stride2_map():
    torch.manual_seed(0)
    encoder = build_encoder("resnet18-s2", out_layer="layer4")
    frames = torch.randn(1, 2, 3, 24, 32)
    loss, diagnostics, visuals = FinePixelLoss(radius=3)(frames, encoder, generator=torch.Generator().manual_seed(0),
                                                         visuals=True)
    assert visuals["matches"].shape == (1, 12, 16, 2)              # cells of the stride-2 map
    loss.backward()
    assert torch.isfinite(loss) and encoder.conv1.weight.grad.abs().sum() > 0


def test_visuals_hold_the_pair_matches_and_predictions():
    loss_fn = FinePixelLoss(radius=3)
    logits = torch.full((1, 49, h, w), -5.0)
    disp = window_displacements(3).tolist()
    logits[:, disp.index([2, -1])] = 5.0                                  # every cell prefers (dx, dy) = (2, -1)
    predicted = loss_fn.predicted_matches(logits)
    assert predicted.shape == (1, h, w, 2)
    assert predicted[0, 4, 5].tolist() == [7.0, 3.0]
    assert predicted[0, 0, 0].tolist() != [2.0, -1.0]                    # leaving the map is excluded

    torch.manual_seed(0)
    encoder = build_encoder("resnet18-s4", out_layer="layer4")
    frames = torch.randn(2, 2, 3, 32, 40)
    loss, diagnostics, visuals = loss_fn(frames, encoder, generator=torch.Generator().manual_seed(1), visuals=True)
    assert visuals["warped"].shape == (2, 3, 32, 40) and visuals["in_view"].shape == (2, 32, 40)
    assert visuals["in_view"].dtype == torch.bool and visuals["in_view"].any()
    assert visuals["matches"].shape == visuals["predicted"].shape == (2, 8, 10, 2)
    assert abs(float(visuals["used"].float().mean()) - diagnostics["warp_used"]) < 1e-6
    assert not visuals["warped"].requires_grad and loss.requires_grad
    # the pair is the warp of frame 0 (same warp with the same generator)
    warped, _, in_view = loss_fn.make_pairs(frames[:, 0], torch.Generator().manual_seed(1))
    assert torch.allclose(warped, visuals["warped"]) and torch.equal(in_view, visuals["in_view"])
