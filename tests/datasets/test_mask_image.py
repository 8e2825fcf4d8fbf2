"""datasets.palette.read_mask_image: masks as people save them -> ids."""
import cv2
import numpy as np
import pytest
from PIL import Image

from datasets.palette import davis_palette, read_mask_image, write_indexed_png


def ellipse(h=40, w=60, value=255):
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (30, 20), (15, 10), 0, 0, 360, value, -1)
    return mask


def test_indexed_png_keeps_its_ids(tmp_path):
    ids = np.zeros((40, 60), np.uint8)
    ids[5:15, 5:20], ids[20:30, 30:50] = 2, 7
    write_indexed_png(tmp_path / "m.png", ids)
    read, how = read_mask_image(tmp_path / "m.png")
    assert np.array_equal(read, ids) and "indexed" in how


def test_binary_anti_aliased_mask_is_thresholded_at_half(tmp_path):
    soft = cv2.GaussianBlur(ellipse(), (7, 7), 0)
    assert len(np.unique(soft)) > 10                       # anti-aliased edges
    cv2.imwrite(str(tmp_path / "m.png"), soft)
    read, how = read_mask_image(tmp_path / "m.png")
    assert np.array_equal(read, (soft >= 128).astype(np.uint8)) and "thresholded at half" in how
    cv2.imwrite(str(tmp_path / "rgb.png"), np.repeat(soft[..., None], 3, axis=2))   # grey saved as RGB
    assert np.array_equal(read_mask_image(tmp_path / "rgb.png")[0], read)
    Image.fromarray(ellipse() > 0).save(tmp_path / "bits.png")                       # mode "1"
    assert np.array_equal(read_mask_image(tmp_path / "bits.png")[0], (ellipse() > 0).astype(np.uint8))


def test_grey_ids_below_128_are_kept(tmp_path):
    ids = ellipse(value=3)
    Image.fromarray(ids).save(tmp_path / "m.png")
    read, how = read_mask_image(tmp_path / "m.png")
    assert np.array_equal(read, ids) and "kept as ids" in how


def test_colour_masks_map_each_colour_to_an_id(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[5:15, 5:20], rgb[20:30, 30:50] = (0, 200, 255), (250, 10, 10)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    read, how = read_mask_image(tmp_path / "m.png")
    assert read[10, 10] == 1 and read[25, 40] == 2 and read[0, 0] == 0   # increasing (r, g, b)
    assert "(0, 200, 255) -> 1" in how
    palette_rgb = davis_palette()[np.where(read == 2, 5, read)]         # a DAVIS mask saved as RGB
    Image.fromarray(palette_rgb).save(tmp_path / "davis.png")
    assert set(np.unique(read_mask_image(tmp_path / "davis.png")[0])) == {0, 1, 5}


def test_a_photo_is_refused(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "m.png")
    with pytest.raises(ValueError, match="indexed PNG"):
        read_mask_image(tmp_path / "m.png")
    with pytest.raises(ValueError, match="file not found"):
        read_mask_image(tmp_path / "none.png")
