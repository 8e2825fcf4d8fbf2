"""The DAVIS / PASCAL-VOC colour palette and indexed ("palette") PNG files.

Segmentation labels in DAVIS are *indexed* PNGs: every pixel stores an id (0 background,
1..N objects, 255 void) and the file's palette only says how to colour it. The official
scorer reads ``np.array(Image.open(path))``, which gives the ids of a mode-"P" image.

Usual mistake: converting such a PNG to RGB (``Image.open(p).convert("RGB")``, or
``cv2.imread``) turns ids into colours, e.g. id 1 into (128, 0, 0); the ids are then lost.
Read with :func:`read_indexed_png` and write with :func:`write_indexed_png`.

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
