"""Run-length encoding of binary masks, the one encoder behind both CVAT mask formats.

Both formats alternate runs of 0s and 1s starting with a (possibly empty) run of 0s; they differ
in the pixel order only:

* COCO's uncompressed RLE (CVAT's COCO 1.0 brush masks): column-major over the whole image,
  ``{"size": [h, w], "counts": [ints]}``;
* CVAT's XML 1.1 ``<mask rle="...">``: row-major inside the mask's box.
"""

from __future__ import annotations

import numpy as np


def run_lengths(flat: np.ndarray) -> list[int]:
    """Alternating 0/1 run lengths of a 1-D binary array, starting with a run of 0s.

    Args:
        flat: ``(N,)`` bool or 0/1 array.

    Returns:
        Run lengths summing to ``N``; the first is 0 when ``flat[0]`` is set.
    """
    values = np.asarray(flat).astype(np.int8)
    changes = np.flatnonzero(np.diff(values)) + 1
    runs = np.diff(np.concatenate([[0], changes, [values.size]])).tolist()
    if values.size and values[0] == 1:
        runs = [0, *runs]
    return [int(r) for r in runs]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE, as CVAT's COCO 1.0 export writes brush masks.

    Args:
        mask: ``(H, W)`` bool.

    Returns:
        ``{"size": [H, W], "counts": [ints]}``, column-major runs from a run of 0s.
    """
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": run_lengths(mask.ravel(order="F"))}


def cvat_mask_rle(mask: np.ndarray) -> list[int]:
    """CVAT XML 1.1 mask runs: row-major over ``mask`` (the mask's box), from a run of 0s.

    Args:
        mask: ``(h, w)`` bool, the pixels inside the box.
    """
    return run_lengths(mask.ravel(order="C"))
