"""Mask <-> soft label codec: geometry, void handling, round trips."""

import numpy as np
import torch

from propagate.labels import downsample_to_grid, grid_size, labels_to_masks, masks_to_labels, upsample_to_image


def test_grid_size_rounds_up():
    assert grid_size(480, 854, 8) == (60, 107)
    assert grid_size(480, 910, 8) == (60, 114)
    assert grid_size(17, 16, 8) == (3, 2)


def test_cell_centres_are_consistent():
    # A linear ramp in x: cell j of stride 8 is centred on pixel 8j + 3.5.
    W = 40
    ramp = torch.arange(W, dtype=torch.float32).expand(1, 16, W)
    grid = downsample_to_grid(ramp, (2, 5), 8)
    torch.testing.assert_close(grid[0, 0], torch.tensor([3.5, 11.5, 19.5, 27.5, 35.5]))
    back = upsample_to_image(grid, (16, W), 8)
    torch.testing.assert_close(back[0, 0, 4:36], ramp[0, 0, 4:36])  # exact away from the border


def test_one_hot_round_trip_and_void():
    ids = np.zeros((64, 80), np.uint8)
    ids[8:40, 16:56] = 2
    ids[44:60, 4:30] = 1
    ids[0:4, :] = 255  # void -> background
    labels = masks_to_labels(ids, [1, 2], grid_size(64, 80, 8), 8)
    assert labels.shape == (3, 8, 10)
    torch.testing.assert_close(labels.sum(0), torch.ones(8, 10))
    back = labels_to_masks(labels, [1, 2], (64, 80), 8)
    assert back.dtype == np.uint8 and back.shape == (64, 80)
    expected = np.where(ids == 255, 0, ids)
    assert (back == expected).mean() > 0.9
    assert set(np.unique(back)) <= {0, 1, 2}


def test_channel_to_object_id_mapping():
    labels = torch.zeros(3, 2, 2)
    labels[2] = 1  # channel 2 wins everywhere
    assert (labels_to_masks(labels, [3, 7], (16, 16), 8) == 7).all()


def test_real_davis_first_frame_round_trip(davis_mini):
    ann = davis_mini / "Annotations" / "480p" / "dog-agility" / "00000.png"
    from datasets.palette import read_indexed_png

    ids = read_indexed_png(ann)
    labels = masks_to_labels(ids, [1], grid_size(*ids.shape, 8), 8)
    back = labels_to_masks(labels, [1], ids.shape, 8)
    gt, pred = ids == 1, back == 1
    assert (gt & pred).sum() / (gt | pred).sum() > 0.9
