"""Cartesian undersampling masks, on top of :mod:`fastmri.data.subsample`.

fastMRI draws one 1-D mask over the phase-encode columns per slice. This module keeps
that (the mask functions are fastMRI's own), describes a masking choice as a small
serialisable :class:`MaskSpec`, and applies masks to a whole batch of k-space at once on
whatever device the batch lives on, instead of slice by slice in a data-loader worker.

Shapes follow fastMRI: k-space is a real tensor with a trailing complex dimension,
``(..., rows, cols, 2)``; a mask is ``(..., 1, cols, 1)`` and broadcasts over the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import fastmri
import torch
from fastmri.data import transforms as T
from fastmri.data.subsample import MaskFunc, create_mask_for_mask_type

from .errors import ParameterError

MASK_TYPES = ("random", "equispaced", "equispaced_fraction")


def file_seed(fname: str) -> tuple[int, ...]:
    """The fixed per-file mask seed fastMRI uses for validation data (``ord`` of each character)."""
    return tuple(map(ord, fname))


@dataclass(frozen=True)
class MaskSpec:
    """A masking choice: one mask type, and acceleration/centre-fraction pairs.

    ``accelerations[i]`` goes with ``center_fractions[i]`` (4x keeps 8 % of the centre,
    8x keeps 4 %, as in the fastMRI challenge).
    """

    mask_type: str = "random"
    accelerations: tuple[int, ...] = (4, 8)
    center_fractions: tuple[float, ...] = (0.08, 0.04)

    def __post_init__(self) -> None:
        object.__setattr__(self, "accelerations", tuple(self.accelerations))
        object.__setattr__(self, "center_fractions", tuple(self.center_fractions))
        if self.mask_type not in MASK_TYPES:
            raise ParameterError(
                "mask_type", f"unknown mask type {self.mask_type!r}; choose one of {', '.join(MASK_TYPES)}"
            )
        if not self.accelerations or len(self.accelerations) != len(self.center_fractions):
            raise ParameterError(
                "accelerations", "give one centre fraction per acceleration "
                f"(got {len(self.accelerations)} accelerations and {len(self.center_fractions)} centre fractions)"
            )
        for acc in self.accelerations:
            if isinstance(acc, bool) or not isinstance(acc, int) or acc < 1:
                raise ParameterError("accelerations", f"{acc!r} is not an integer >= 1")
        for cf in self.center_fractions:
            if isinstance(cf, bool) or not isinstance(cf, (int, float)) or not 0 < cf < 1:
                raise ParameterError("center_fractions", f"{cf!r} is not a fraction between 0 and 1")

    def center_fraction(self, acceleration: int) -> float:
        """The centre fraction paired with ``acceleration``."""
        if acceleration not in self.accelerations:
            raise ParameterError(
                "acceleration", f"{acceleration}x is not in this mask spec ({list(self.accelerations)})"
            )
        return self.center_fractions[self.accelerations.index(acceleration)]

    def mask_func(self, acceleration: int | None = None) -> MaskFunc:
        """fastMRI's mask function for one acceleration, or drawing among all of them."""
        if acceleration is None:
            return create_mask_for_mask_type(self.mask_type, self.center_fractions, self.accelerations)
        cf = self.center_fraction(acceleration)
        return create_mask_for_mask_type(self.mask_type, [cf], [acceleration])

    def check_columns(self, n_cols: int, where: str = "k-space") -> None:
        """Raise :class:`ParameterError` if a mask of ``n_cols`` columns cannot reach an acceleration.

        The fully sampled centre alone must not already exceed the target sampling rate,
        and at least one centre column must be kept.
        """
        for acc, cf in zip(self.accelerations, self.center_fractions):
            n_low = round(n_cols * cf)
            if n_low < 1:
                raise ParameterError(
                    where, f"centre fraction {cf} of {n_cols} columns keeps no centre line at {acc}x"
                )
            if acc > n_cols or n_low > n_cols / acc:
                raise ParameterError(
                    where, f"{acc}x cannot be made on {n_cols} phase-encode columns with centre "
                    f"fraction {cf}: the centre alone keeps {n_low} columns > {n_cols / acc:.1f}"
                )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accelerations"] = list(self.accelerations)
        d["center_fractions"] = list(self.center_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MaskSpec":
        return cls(d["mask_type"], tuple(d["accelerations"]), tuple(d["center_fractions"]))


def make_masks(
    mask_func: MaskFunc,
    kspace_shape: Sequence[int],
    seeds: Sequence[int | tuple[int, ...] | None],
) -> torch.Tensor:
    """Draw one fastMRI mask per seed.

    Args:
        mask_func: a fastMRI mask function.
        kspace_shape: shape of one k-space slice, ``(..., rows, cols, 2)``.
        seeds: one seed per mask (``None`` draws from the function's own generator).

    Returns:
        float32 tensor ``(len(seeds), 1, cols, 1)`` on the CPU.
    """
    shape = (1, int(kspace_shape[-2]), 1)
    masks = [mask_func(shape, None, seed)[0].reshape(1, -1, 1) for seed in seeds]
    return torch.stack(masks).float()


def apply_masks(kspace: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Multiply a batch of k-space by a batch of masks, on the k-space's device.

    Args:
        kspace: ``(B, rows, cols, 2)`` single-coil or ``(B, coils, rows, cols, 2)``.
        masks: ``(B, 1, cols, 1)``.

    Returns:
        masked k-space, same shape and device as ``kspace``.
    """
    masks = masks.to(device=kspace.device, dtype=kspace.dtype)
    if kspace.ndim == 5:
        masks = masks.unsqueeze(1)
    return kspace * masks + 0.0  # + 0.0 clears the sign of zeros, as fastMRI does


def mask_batch(
    kspace: torch.Tensor,
    mask_func: MaskFunc,
    seeds: Sequence[int | tuple[int, ...] | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw masks and apply them to a batch on its device.

    Args:
        kspace: ``(B, rows, cols, 2)`` or ``(B, coils, rows, cols, 2)``, any device.
        mask_func: a fastMRI mask function.
        seeds: ``B`` seeds (e.g. :func:`file_seed` for fixed validation masks); ``None``
            draws fresh masks.

    Returns:
        ``(masked_kspace, masks)`` with masks ``(B, 1, cols, 1)`` on the same device.
    """
    seeds = [None] * kspace.shape[0] if seeds is None else list(seeds)
    if len(seeds) != kspace.shape[0]:
        raise ParameterError("seeds", f"{len(seeds)} seeds for a batch of {kspace.shape[0]}")
    masks = make_masks(mask_func, kspace.shape, seeds).to(kspace.device)
    return apply_masks(kspace, masks), masks


def zero_filled(kspace: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Zero-filled magnitude reconstruction of (masked) k-space, batched.

    Args:
        kspace: ``(B, rows, cols, 2)`` single-coil or ``(B, coils, rows, cols, 2)``.
        crop: the target image size ``(h, w)``.

    Returns:
        ``(B, h, w)`` magnitude images (root-sum-of-squares over coils for multi-coil).
    """
    image = T.complex_center_crop(fastmri.ifft2c(kspace), crop)
    image = fastmri.complex_abs(image)
    return fastmri.rss(image, dim=1) if kspace.ndim == 5 else image


def sampling_rate(masks: torch.Tensor) -> torch.Tensor:
    """Fraction of phase-encode columns kept by each mask ``(B, 1, cols, 1)`` -> ``(B,)``."""
    return masks.flatten(1).mean(dim=1)
