"""Random warps: exact inverses, sampling convention, out-of-view masks."""
import pytest
import torch

from corr.warps import WARP_KINDS, Homography, inside, pixel_grid, random_warp, source_matches, warp_image

H, W = 48, 64


@pytest.mark.parametrize("kind", WARP_KINDS)
def test_forward_then_back_returns_within_1e4_px(kind):
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        warp = random_warp(H, W, kind, generator=generator)
        points = torch.rand(200, 2, generator=generator, dtype=torch.float64) * torch.tensor([W - 1, H - 1])
        assert (warp.to_source(warp.to_warped(points)) - points).abs().max() < 1e-4
        assert (warp.to_warped(warp.to_source(points)) - points).abs().max() < 1e-4
        moved = (warp.to_warped(points) - points).norm(dim=-1)
        assert moved.max() > 0.5                      # a real warp, not the identity


@pytest.mark.parametrize("kind", WARP_KINDS)
def test_warped_image_samples_the_source_at_to_source(kind):
    # A linear ramp is reproduced exactly by bilinear sampling: J(p) = x-coordinate of to_source(p).
    warp = random_warp(H, W, kind, generator=torch.Generator().manual_seed(5))
    ramp = pixel_grid(H, W).permute(2, 0, 1).float()                   # 2, H, W: (x, y) per pixel
    warped, in_view = warp_image(ramp, warp)
    source = warp.to_source(pixel_grid(H, W)).permute(2, 0, 1).float()
    assert in_view.any() and not in_view.all()
    assert (warped[:, in_view] - source[:, in_view]).abs().max() < 1e-3
    assert torch.equal(in_view, inside(source.permute(1, 2, 0), H, W))


def test_translation_masks_and_matches():
    shift = torch.eye(3, dtype=torch.float64)
    shift[0, 2] = 10.0                                                   # content moves 10 px right
    warp = Homography(shift)
    image = torch.rand(3, H, W)
    warped, in_view = warp_image(image, warp)
    assert not in_view[:, :10].any() and in_view[:, 10:].all()
    assert torch.allclose(warped[:, :, 10:], image[:, :, :-10], atol=1e-6)
    matches, visible = source_matches(warp, H, W, stride=4)
    centres = pixel_grid(H, W, 4)
    assert matches.shape == (H // 4, W // 4, 2)
    assert torch.allclose(matches, centres + torch.tensor([10.0, 0.0], dtype=torch.float64))
    assert visible[:, :-3].all() and not visible[:, -2:].any()


def test_identity_keeps_everything():
    warp = Homography(torch.eye(3, dtype=torch.float64))
    image = torch.rand(3, H, W)
    warped, in_view = warp_image(image, warp)
    assert in_view.all() and torch.allclose(warped, image, atol=1e-6)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown warp kind"):
        random_warp(H, W, "spiral")
