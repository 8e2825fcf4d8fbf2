"""The DAVIS / PASCAL-VOC colour palette and indexed ("palette") PNG files.

Segmentation labels in DAVIS are *indexed* PNGs: every pixel stores an id (0 background,
1..N objects, 255 void) and the file's palette only says how to colour it. The official
scorer reads ``np.array(Image.open(path))``, which gives the ids of a mode-"P" image.

Usual mistake: converting such a PNG to RGB (``Image.open(p).convert("RGB")``, or
``cv2.imread``) turns ids into colours, e.g. id 1 into (128, 0, 0); the ids are then lost.
Read with :func:`read_indexed_png` and write with :func:`write_indexed_png`. A mask someone
drew (binary, grey, anti-aliased, colours) is read by :func:`read_mask_image`.

Palette rule (PASCAL VOC): the bits of id ``i`` are dealt out, most significant first,
to R, G, B in turn: bit ``3k`` of ``i`` sets bit ``7-k`` of R, bit ``3k+1`` of G, bit
``3k+2`` of B. So 0 -> (0, 0, 0), 1 -> (128, 0, 0), 2 -> (0, 128, 0), 3 -> (128, 128, 0).
DAVIS files colour the void id 255 as (224, 224, 192), as VOC does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from corr.io import atomic_write

VOID_ID = 255
VOID_COLOR = (224, 224, 192)

#: PIL modes whose pixel values are label ids: "P" (palette indices) and "L" (grey = id).
ID_MODES = ("P", "L")


def davis_palette() -> np.ndarray:
    """The 256-entry DAVIS / PASCAL-VOC palette as ``uint8 (256, 3)`` RGB."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        bits = index
        for k in range(8):
            r |= ((bits >> 0) & 1) << (7 - k)
            g |= ((bits >> 1) & 1) << (7 - k)
            b |= ((bits >> 2) & 1) << (7 - k)
            bits >>= 3
        palette[index] = (r, g, b)
    palette[VOID_ID] = VOID_COLOR
    return palette


_PALETTE_BYTES = davis_palette().tobytes()


def ids_to_image(ids: np.ndarray) -> Image.Image:
    """An integer id map ``(H, W)`` with values in ``[0, 255]`` -> mode-"P" PIL image."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"an id map must be 2-D (H, W), got shape {ids.shape}")
    if ids.dtype == bool:
        ids = ids.astype(np.uint8)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"an id map must hold integer ids, got dtype {ids.dtype} "
                         "(take the argmax of soft labels first)")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > 255):
        raise ValueError(f"ids must lie in [0, 255], got [{int(ids.min())}, {int(ids.max())}]")
    image = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8))  # mode "L"
    image.putpalette(_PALETTE_BYTES)  # "L" + palette -> mode "P", same pixel values
    return image


def write_indexed_png(path: str | Path, ids: np.ndarray) -> Path:
    """Write an id map ``(H, W)`` as an indexed PNG with the DAVIS palette (atomically).

    ``np.array(Image.open(path))`` gives back ``ids`` exactly (as ``uint8``).
    """
    image = ids_to_image(ids)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def read_indexed_png(path: str | Path) -> np.ndarray:
    """Read the ids of an indexed (mode "P") or grey-id (mode "L") PNG -> ``uint8 (H, W)``.

    Raises ``ValueError`` naming the file when it is missing, unreadable, or holds colours
    instead of ids (RGB, RGBA, ...).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ID_MODES:
                raise ValueError(f"{path}: mode {image.mode!r} is not an id map; expected an "
                                 "indexed palette PNG (mode 'P') or grey ids (mode 'L')")
            ids = np.array(image)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot read image ({error})") from error
    return ids.astype(np.uint8, copy=False)


#: A colour mask with more distinct colours than this is taken to be anti-aliased or a photo.
MAX_MASK_COLOURS = 32


def read_mask_image(path: str | Path) -> tuple[np.ndarray, str]:
    """A mask as people save them -> (ids ``uint8 (H, W)``, how they were read, in words).

    * indexed (mode "P"): the pixel values are the ids and are kept (DAVIS masks);
    * grey (modes "L", "1", "I", "I;16", "LA", or RGB whose three channels are equal): a map
      whose values are all below 128 holds grey ids and is kept; otherwise it is a binary
      mask (0/255, possibly with anti-aliased edges) thresholded at half: ``value >= 128``
      (of 255) -> object 1;
    * colour (RGB, RGBA: alpha is ignored): every distinct non-black colour becomes one object,
      its DAVIS palette index when it is a palette colour (an indexed mask saved as RGB keeps
      its ids), else ids 1, 2, ... in increasing order of ``(r, g, b)``; more than
      :data:`MAX_MASK_COLOURS` colours is an error (save the mask as an indexed PNG).

    Raises ``ValueError`` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode == "P":
                return np.array(image).astype(np.uint8), "indexed PNG: its ids are kept"
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
                rgb = np.asarray(image.convert("RGB"))
                grey = None if (rgb != rgb[..., :1]).any() else rgb[..., 0]
            else:
                grey = np.asarray(image.convert("L") if mode not in ("I", "I;16") else image)
                if mode in ("I", "I;16"):
                    grey = (grey.astype(np.float64) * 255 / max(int(grey.max()), 255)).round().astype(np.uint8)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot read image ({error})") from error
    if grey is not None:
        if int(grey.max()) < 128:
            return grey.astype(np.uint8), "grey image with values below 128: its values are kept as ids"
        return (grey >= 128).astype(np.uint8), "binary/grey mask thresholded at half (>= 128 -> object 1)"
    return _colours_to_ids(rgb, path)


def _colours_to_ids(rgb: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """RGB (H, W, 3) -> ids: one id per distinct non-black colour (see :func:`read_mask_image`)."""
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    objects = [tuple(int(v) for v in c) for c in colours if c.any()]
    if len(objects) > MAX_MASK_COLOURS:
        raise ValueError(f"{path}: {len(objects)} colours (an anti-aliased colour mask or a photo?); save the "
                         f"mask as an indexed PNG, or as a 0/255 grey image for one object")
    palette = {tuple(int(v) for v in c): i for i, c in enumerate(davis_palette()) if i > 0}
    if all(c in palette for c in objects):
        ids = {c: palette[c] for c in objects}
        how = "DAVIS palette colours"
    else:
        ids = {c: i for i, c in enumerate(objects, start=1)}
        how = "colours"
    lookup = np.array([ids.get(tuple(int(v) for v in c), 0) for c in colours], dtype=np.uint8)
    pairs = ", ".join(f"{c} -> {i}" for c, i in ids.items())
    return lookup[inverse.reshape(-1)].reshape(rgb.shape[:2]), f"RGB mask, {how} mapped to ids: {pairs}"
