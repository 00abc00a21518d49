"""One box type for every lesion box, ROI box and annotation in the project.

fastMRI+ gives a box as ``x, y, width, height`` (plus a label) in pixels; kneeMRI gives its
ACL ROI the same way. :class:`Box` is that record, checked once by :meth:`Box.of`, and the
one place where a box is clipped to an image or rasterised into a mask.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

from ..errors import ParameterError


class Box(NamedTuple):
    """An axis-aligned box in image coordinates: column ``x``, row ``y``, ``width``, ``height``.

    A NamedTuple, so ``x, y, w, h, label = box`` and ``box[:4]`` work as for the plain
    tuples that fastMRI+ rows become.
    """

    x: int
    y: int
    width: int
    height: int
    label: str = ""

    @classmethod
    def of(cls, value: "Box | Sequence") -> "Box":
        """The one validator: ``(x, y, width, height[, label, ...])`` -> :class:`Box`.

        Raises :class:`ParameterError` for fewer than four numbers or a negative size.
        """
        if isinstance(value, Box):
            return value
        if len(value) < 4:
            raise ParameterError("boxes", f"a box is (x, y, width, height, ...), got {tuple(value)!r}")
        try:
            x, y, w, h = (int(v) for v in value[:4])
        except (TypeError, ValueError):
            raise ParameterError("boxes", f"a box needs integer x, y, width, height, got {tuple(value)!r}") from None
        if w < 0 or h < 0:
            raise ParameterError("boxes", f"box {tuple(value)!r} has a negative width or height")
        label = str(value[4]) if len(value) > 4 else ""
        return cls(x, y, w, h, label)

    def clip(self, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """``(y0, y1, x0, x1)`` of the part inside an ``(H, W)`` image, or ``None`` if empty."""
        y0, y1 = max(self.y, 0), min(self.y + self.height, int(shape[0]))
        x0, x1 = max(self.x, 0), min(self.x + self.width, int(shape[1]))
        return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None


def as_boxes(boxes: Iterable) -> list[Box]:
    """Every item of ``boxes`` through :meth:`Box.of`."""
    return [Box.of(b) for b in boxes]


def boxes_mask(shape: tuple[int, int], boxes: Iterable) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the union of ``boxes``, each clipped to the image."""
    h, w = (int(s) for s in shape)
    mask = np.zeros((h, w), dtype=bool)
    for box in as_boxes(boxes):
        clipped = box.clip((h, w))
        if clipped is not None:
            y0, y1, x0, x1 = clipped
            mask[y0:y1, x0:x1] = True
    return mask


def grow(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` symmetrically to at least ``size``, shifted to stay in ``[0, limit)``."""
    extra = size - (hi - lo)
    if extra > 0:
        lo, hi = lo - extra // 2, hi + extra - extra // 2
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), min(hi, limit)


def crop_around(box, shape: tuple[int, int], size: int = 24) -> tuple[slice, slice]:
    """``(rows, cols)`` slices of a ``size`` x ``size`` window (at least the box) centred on a box, inside the image."""
    b = Box.of(box)
    rows = grow(max(b.y, 0), min(b.y + b.height, shape[0]), max(size, b.height), shape[0])
    cols = grow(max(b.x, 0), min(b.x + b.width, shape[1]), max(size, b.width), shape[1])
    return slice(*rows), slice(*cols)


def foreground(image: np.ndarray) -> np.ndarray:
    """The knee rather than the air around it: pixels of a ``(H, W)`` magnitude slice above a
    tenth of its maximum, as a boolean ``(H, W)`` mask."""
    image = np.asarray(image)
    return image > 0.1 * image.max()
