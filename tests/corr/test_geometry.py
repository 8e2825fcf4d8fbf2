"""corr.geometry: the one pixel/cell convention, on hand-computed values."""
import pytest
import torch
import torch.nn.functional as F

from corr.geometry import (
    apply_affine,
    cell_centre_offset,
    cell_centres,
    cell_to_pixel,
    crop_box_affine,
    denormalise_pixels,
    from_integer_centres,
    grid_size,
    normalise_cells,
    normalise_pixels,
    pixel_to_cell,
    to_integer_centres,
)


def test_grid_size_is_the_ceiling_of_size_over_stride():
    assert grid_size(32, 40, 8) == (4, 5)
    assert grid_size(33, 41, 8) == (5, 6)
    assert grid_size(7, 1, 4) == (2, 1)


def test_cell_centres_are_at_c_plus_a_half_times_the_stride():
    centres = cell_centres(2, 3, 8)
    assert centres.shape == (2, 3, 2) and centres.dtype == torch.float32
    assert centres[0, 0].tolist() == [4.0, 4.0]
    assert centres[0, 2].tolist() == [20.0, 4.0]                   # (x, y) of cell (row 0, column 2)
    assert centres[1, 1].tolist() == [12.0, 12.0]
    assert cell_centres(1, 2, 1, dtype=torch.float64)[0].tolist() == [[0.5, 0.5], [1.5, 0.5]]


def test_pixel_and_cell_coordinates_convert_both_ways():
    assert cell_centre_offset(4) == 2.0
    assert cell_to_pixel(torch.tensor([0.0, 1.0, 2.5]), 4).tolist() == [2.0, 6.0, 12.0]
    assert pixel_to_cell(torch.tensor([2.0, 6.0, 0.0, 8.0]), 4).tolist() == [0.0, 1.0, -0.5, 1.5]
    points = torch.tensor([[3.25, 17.5], [0.0, 31.75]])
    assert torch.equal(cell_to_pixel(pixel_to_cell(points, 8), 8), points)


def test_integer_centres_are_the_same_points_minus_a_half():
    assert to_integer_centres(10.5) == 10.0 and from_integer_centres(10.0) == 10.5
    offset = to_integer_centres(cell_centre_offset(8))
    assert offset == 3.5                                            # (s - 1) / 2
    # cell 2 of stride 8 is centred on pixel 20 (corners) = 19.5 (integer centres)
    assert cell_to_pixel(2.0, 8, offset) == 19.5 and pixel_to_cell(19.5, 8, offset) == 2.0
    assert pixel_to_cell(23.5, 8, offset) == pixel_to_cell(from_integer_centres(23.5), 8) == 2.5


def test_grid_sample_coordinates_of_pixels_and_cells():
    # align_corners=False: -1 and 1 are the outer edges; pixel 0's centre of a 4-pixel axis is -0.75
    assert normalise_pixels(torch.tensor([0.0, 0.5, 2.0, 4.0]), 4).tolist() == [-1.0, -0.75, 0.0, 1.0]
    assert denormalise_pixels(torch.tensor([-1.0, -0.75, 1.0]), 4).tolist() == [0.0, 0.5, 4.0]
    # align_corners=True: -1 and 1 are the centres of the first and last cells
    assert normalise_cells(torch.tensor([0.0, 1.5, 3.0]), 4).tolist() == [-1.0, 0.0, 1.0]
    assert normalise_cells(torch.tensor([0.0]), 1).tolist() == [-1.0]


def test_grid_sample_reads_the_value_at_the_normalised_pixel():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)                 # value = 4 row + column
    point = torch.tensor([2.5, 1.5])                                # centre of pixel (row 1, column 2)
    grid = torch.stack([normalise_pixels(point[0], 4), normalise_pixels(point[1], 3)]).view(1, 1, 1, 2)
    assert F.grid_sample(image, grid, align_corners=False).item() == pytest.approx(6.0)
    cells = torch.stack([normalise_cells(torch.tensor(2.0), 4), normalise_cells(torch.tensor(1.0), 3)])
    assert F.grid_sample(image, cells.view(1, 1, 1, 2), align_corners=True).item() == pytest.approx(6.0)


def test_apply_affine_maps_points_through_the_2x3_matrix():
    affine = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.5, -3.0]], [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    points = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    out = apply_affine(affine, points)                              # (N, 2) points shared by the batch
    assert out.shape == (2, 2, 2)
    assert out[0].tolist() == [[3.0, -2.0], [1.0, -1.0]]
    assert out[1].tolist() == [[-2.0, 1.0], [-4.0, 0.0]]            # a quarter turn
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert apply_affine(affine, points + 250.25).dtype == torch.float32
    with pytest.raises(ValueError, match="affine"):
        apply_affine(torch.zeros(2, 3), points)


def test_crop_box_affine_maps_crop_a_pixels_onto_crop_b_pixels():
    # box a: top 10, left 20, 40 x 80 px; box b: top 0, left 40, 20 x 40 px; both resized to 16 x 16
    box_a = torch.tensor([[10.0, 20.0, 40.0, 80.0]])
    box_b = torch.tensor([[0.0, 40.0, 20.0, 40.0]])
    affine = crop_box_affine(box_a, box_b, 16)
    assert affine[0].tolist() == [[2.0, 0.0, -8.0], [0.0, 2.0, 8.0]]
    # source point (60, 20): crop a pixel ((60-20) 16/80, (20-10) 16/40) = (8, 4);
    # crop b pixel ((60-40) 16/40, (20-0) 16/20) = (8, 16)
    assert apply_affine(affine, torch.tensor([[8.0, 4.0]]))[0].tolist() == [[8.0, 16.0]]
