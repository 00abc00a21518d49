"""The U-Net's data path: fastMRI's ``UnetDataTransform``, on whole batches, on the device.

fastMRI prepares one slice at a time in data-loader workers: mask, inverse FFT, centre
crop, magnitude, instance normalisation, clamp to [-6, 6]; the target is normalised with
the input's mean and standard deviation. :func:`unet_inputs` does the same arithmetic on a
batch ``(B, rows, cols, 2)`` wherever the batch lives (a test checks it against
``UnetDataTransform`` slice by slice). A :class:`SliceBank` holds a split's k-space and
targets in memory, so an epoch reads no file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple, Sequence

import fastmri
import numpy as np
import torch
from fastmri.data import transforms as T
from fastmri.data.subsample import MaskFunc

from .data import fastmri_h5
from .errors import DataError
from .masking import apply_masks, file_seed, make_masks

EPS = 1e-11  # fastMRI's normalisation epsilon


class UnetBatch(NamedTuple):
    """A batch of normalised U-Net pairs (the batched ``UnetSample``).

    image, target: ``(B, h, w)``; mean, std: ``(B,)``, to undo the normalisation.
    """

    image: torch.Tensor
    target: torch.Tensor | None
    mean: torch.Tensor
    std: torch.Tensor


def unet_inputs(
    masked_kspace: torch.Tensor, crop: tuple[int, int], target: torch.Tensor | None = None
) -> UnetBatch:
    """``UnetDataTransform``'s arithmetic on a batch of already masked single-coil k-space.

    Args:
        masked_kspace: ``(B, rows, cols, 2)``.
        crop: ``(h, w)``, the target's size.
        target: ``(B, h, w)`` fully sampled targets, or ``None``.
    """
    cols = masked_kspace.shape[-2]
    if cols < crop[1]:  # fastMRI's guard for images narrower than the target
        crop = (cols, cols)
    image = fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(masked_kspace), crop))
    flat = image.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1)
    image = ((image - mean[:, None, None]) / (std[:, None, None] + EPS)).clamp(-6, 6)
    if target is not None:
        target = ((target - mean[:, None, None]) / (std[:, None, None] + EPS)).clamp(-6, 6)
    return UnetBatch(image, target, mean, std)


class SliceBank:
    """Every slice of a list of single-coil volumes, in memory (CPU or device).

    Attributes:
        kspace: ``(N, rows, cols, 2)`` float32.
        target: ``(N, h, w)`` float32 (``reconstruction_esc``).
        files: stem of each slice's volume, ``N`` strings; slice_nums: ``(N,)``.
        volumes: ``{stem: slice indices into the bank}``, in file order.
        max_value: ``{stem: the volume's attrs["max"]}``.
    """

    def __init__(self, paths: Sequence[str | Path], device: torch.device | str = "cpu"):
        ks, ts, self.files, slice_nums, self.max_value, self.volumes = [], [], [], [], {}, {}
        start = 0
        for path in paths:
            path = Path(path)
            kspace, target, attrs = fastmri_h5.read_volume(path)
            if target is None:
                raise DataError(path, "has no target; the U-Net needs fully sampled targets to train and test")
            if kspace.ndim != 3:
                raise DataError(path, "is multi-coil; the U-Net chapters use single-coil data")
            ks.append(T.to_tensor(kspace))
            ts.append(torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)))
            n = kspace.shape[0]
            self.files += [path.stem] * n
            slice_nums += list(range(n))
            self.volumes[path.stem] = list(range(start, start + n))
            self.max_value[path.stem] = float(attrs.get("max", target.max()))
            start += n
        if not ks:
            raise DataError("split", "no volumes to load")
        if len({k.shape[1:] for k in ks}) > 1 or len({t.shape[1:] for t in ts}) > 1:
            shapes = sorted({(tuple(k.shape[1:3]), tuple(t.shape[1:])) for k, t in zip(ks, ts)})
            raise DataError(Path(paths[0]).parent, f"volumes of different shapes in one split: {shapes}")
        self.kspace = torch.cat(ks).to(device)
        self.target = torch.cat(ts).to(device)
        self.slice_nums = np.array(slice_nums)
        self.crop = tuple(self.target.shape[-2:])

    def __len__(self) -> int:
        return self.kspace.shape[0]

    def batch(self, idx: Sequence[int], mask_func: MaskFunc, seeds: Sequence) -> UnetBatch:
        """Masked, normalised pairs for slices ``idx`` with one mask per seed."""
        idx = torch.as_tensor(np.asarray(idx), device=self.kspace.device)
        kspace = self.kspace[idx]
        masks = make_masks(mask_func, kspace.shape, seeds)
        return unet_inputs(apply_masks(kspace, masks), self.crop, self.target[idx])


def reconstruct(
    model: torch.nn.Module, bank: SliceBank, stem: str, mask_func: MaskFunc, batch_size: int = 16
) -> tuple[np.ndarray, float]:
    """Reconstruct one volume with the fixed per-file mask fastMRI uses for validation.

    Returns:
        ``(recon (S, h, w) in the target's units, seconds)``; the time covers masking,
        the network and un-normalising, not reading the file.
    """
    idx = bank.volumes[stem]
    seeds = [file_seed(f"{stem}.h5")] * len(idx)
    device = next(model.parameters()).device
    out = []
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(idx), batch_size):
            b = bank.batch(idx[i : i + batch_size], mask_func, seeds[i : i + batch_size])
            pred = model(b.image[:, None].to(device))[:, 0]
            out.append(pred * b.std[:, None, None].to(device) + b.mean[:, None, None].to(device))
    recon = torch.cat(out)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return recon.float().cpu().numpy(), time.perf_counter() - start


def zero_filled_volume(bank: SliceBank, stem: str, mask_func: MaskFunc) -> np.ndarray:
    """The zero-filled baseline of one volume ``(S, h, w)``, with the same fixed mask."""
    from .masking import zero_filled

    idx = bank.volumes[stem]
    masks = make_masks(mask_func, bank.kspace.shape, [file_seed(f"{stem}.h5")] * len(idx))
    return zero_filled(apply_masks(bank.kspace[idx], masks), bank.crop).cpu().numpy()
