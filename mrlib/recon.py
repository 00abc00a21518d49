"""The U-Net's data path: fastMRI's ``UnetDataTransform``, on whole batches, on the device.

fastMRI prepares one slice at a time in data-loader workers: mask, inverse FFT, centre
crop, magnitude, instance normalisation, clamp to [-6, 6]; the target is normalised with
the input's mean and standard deviation. :func:`unet_inputs` does the same arithmetic on a
batch ``(B, rows, cols, 2)`` wherever the batch lives (a test checks it against
``UnetDataTransform`` slice by slice). A :class:`SliceBank` holds a split's k-space and
targets in memory (the device's, or pinned host memory on CUDA), so an epoch reads no
file; a :class:`StreamingBank` serves the same batches from disk with chunk-aware reads
when a split does not fit. :func:`load_bank` picks one of the two and says why.

**Mixed k-space shapes.** Real fastMRI files of one split differ in k-space width (368,
372, 356, ... phase encodes) and height. A bank keeps one k-space tensor per shape and
forms each batch per shape: masks at the slice's native width, the inverse FFT at its
native size, the crop to the common target size in the image domain, then the cropped
images are stacked in the batch's order. k-space is never zero-padded to a common width:
that would change the pixel size along the phase-encode axis, and the crop would no
longer match the target.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Protocol, Sequence

import h5py

import fastmri
import numpy as np
import torch
from fastmri.data import transforms as T
from fastmri.data.subsample import MaskFunc

from .data import fastmri_h5
from .errors import DataError, ParameterError
from .masking import apply_masks, file_seed, make_masks, zero_filled
from .runtime import canonical_device, use_bf16

EPS = 1e-11  # fastMRI's normalisation epsilon


class UnetBatch(NamedTuple):
    """A batch of normalised U-Net pairs (the batched ``UnetSample``).

    image, target: ``(B, h, w)``; mean, std: ``(B,)``, to undo the normalisation;
    fname: each slice's file stem (``B`` strings) and slice_num: ``(B,)`` its slice
    number, as fastMRI's samples carry them (``None`` for a batch made outside a bank).
    """

    image: torch.Tensor
    target: torch.Tensor | None
    mean: torch.Tensor
    std: torch.Tensor
    fname: tuple[str, ...] | None = None
    slice_num: torch.Tensor | None = None


class Bank(Protocol):
    """What the training loop and evaluation need of a split, in memory or streamed.

    :class:`SliceBank` and :class:`StreamingBank` both satisfy it.
    """

    device: torch.device
    files: list[str]  # each slice's file stem, N strings
    slice_nums: np.ndarray  # (N,)
    volumes: dict[str, list[int]]  # stem -> indices into the bank
    max_value: dict[str, float]
    crop: tuple[int, int]  # (h, w) of the targets

    def __len__(self) -> int: ...

    def batch(self, idx: Sequence[int], mask_func: MaskFunc, seeds: Sequence) -> UnetBatch: ...

    def kspace_of(self, idx: Sequence[int]) -> torch.Tensor: ...


def normalize_pair(image: torch.Tensor, target: torch.Tensor | None) -> UnetBatch:
    """fastMRI's instance normalisation of a batch ``(B, h, w)``, the target by the image's
    mean and standard deviation, both clamped to [-6, 6]."""
    flat = image.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1)
    image = ((image - mean[:, None, None]) / (std[:, None, None] + EPS)).clamp(-6, 6)
    if target is not None:
        target = ((target - mean[:, None, None]) / (std[:, None, None] + EPS)).clamp(-6, 6)
    return UnetBatch(image, target, mean, std)


def unet_inputs(
    masked_kspace: torch.Tensor, crop: tuple[int, int], target: torch.Tensor | None = None
) -> UnetBatch:
    """``UnetDataTransform``'s arithmetic on a batch of already masked k-space.

    Multi-coil k-space gives the root-sum-of-squares of the cropped zero-filled coil
    images, as fastMRI's multi-coil U-Net baseline takes it.

    Args:
        masked_kspace: ``(B, rows, cols, 2)`` single-coil or ``(B, coils, rows, cols, 2)``.
        crop: ``(h, w)``, the target's size.
        target: ``(B, h, w)`` fully sampled targets, or ``None``.
    """
    cols = masked_kspace.shape[-2]
    if cols < crop[1]:  # fastMRI's guard for images narrower than the target
        crop = (cols, cols)
    image = fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(masked_kspace), crop))
    if masked_kspace.ndim == 5:
        image = fastmri.rss(image, dim=1)
    return normalize_pair(image, target)


#: Intra-op threads for the batched transform on the CPU (``None``: torch's setting). Its
#: operations are small (a batch is ~1 M numbers), so with several threads each one ends
#: in a barrier, and on a loaded machine a barrier waits for a descheduled thread: on
#: 2 busy cores, 2 threads made it 20x slower than 1. The U-Net keeps torch's setting.
DATA_THREADS: int | None = 1


@contextlib.contextmanager
def data_threads(device: torch.device):
    """Run the block with :data:`DATA_THREADS` intra-op threads when ``device`` is the CPU."""
    if device.type != "cpu" or DATA_THREADS is None or torch.get_num_threads() == DATA_THREADS:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(DATA_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _alternating(n: int, device) -> torch.Tensor:
    """``(-1)^k`` for ``k < n``: multiplying k-space by it centres the inverse FFT's output."""
    return 1.0 - 2.0 * (torch.arange(n, device=device) % 2).float()


def masked_unet_inputs(
    kspace: torch.Tensor, masks: torch.Tensor, crop: tuple[int, int], target: torch.Tensor | None = None,
    sparse: bool | None = None,
) -> UnetBatch:
    """:func:`unet_inputs` of ``apply_masks(kspace, masks)``, computed with less work.

    The same numbers (to float rounding) from cheaper arithmetic:

    * the centring shifts of ``ifft2c`` are folded into the k-space as ``(-1)^(row + col)``
      (for even sizes a shift by half the length is that modulation; the other shift only
      flips signs, which the magnitude removes), so no ``roll`` copies are made;
    * the inverse FFT runs along the readout first and the image is cropped to the target's
      rows before the phase-encode FFT (half the rows at fastMRI's 2x oversampling);
    * ``sparse`` (default: on the CPU) transforms along the readout only the columns the
      mask keeps (a quarter at 4x, an eighth at 8x): a masked column stays zero.

    Multi-coil k-space is transformed coil by coil (the coils folded into the batch, each
    with its slice's mask) and combined by root-sum-of-squares, as :func:`unet_inputs`.

    Args:
        kspace: fully sampled ``(B, rows, cols, 2)`` or ``(B, coils, rows, cols, 2)``;
            masks: ``(B, 1, cols, 1)``.
    """
    B, rows, cols = kspace.shape[0], kspace.shape[-3], kspace.shape[-2]
    if cols < crop[1]:
        crop = (cols, cols)
    if rows % 2 or cols % 2 or kspace.dtype != torch.float32:
        return unet_inputs(apply_masks(kspace, masks), crop, target)
    device = kspace.device
    sparse = device.type == "cpu" if sparse is None else sparse
    with data_threads(device):
        if kspace.ndim == 5:
            coils = kspace.shape[1]
            images = _masked_images(kspace.flatten(0, 1), masks.repeat_interleave(coils, dim=0), crop, sparse)
            return normalize_pair(fastmri.rss(images.unflatten(0, (B, coils)), dim=1), target)
        return normalize_pair(_masked_images(kspace, masks, crop, sparse), target)


def _masked_images(kspace, masks, crop, sparse) -> torch.Tensor:
    """Magnitude images ``(B, h, w)`` of single-coil ``kspace`` ``(B, rows, cols, 2)`` under
    ``masks``, by :func:`masked_unet_inputs`' cheaper arithmetic."""
    B, rows, cols, _ = kspace.shape
    h, w = crop
    device = kspace.device
    kc = torch.view_as_complex(kspace.contiguous())
    m = masks.to(device=device, dtype=torch.float32).reshape(B, cols)
    row_sign, col_sign = _alternating(rows, device), _alternating(cols, device)
    r0, c0 = (rows - h) // 2, (cols - w) // 2
    if sparse:
        half = torch.zeros(B, h, cols, dtype=kc.dtype, device=device)
        for b in range(B):
            keep = m[b].nonzero()[:, 0]
            if keep.numel() == 0:
                continue
            sub = kc[b].index_select(1, keep) * (row_sign[:, None] * (col_sign[keep] * m[b, keep])[None])
            half[b].index_copy_(1, keep, torch.fft.ifft(sub, dim=0, norm="ortho")[r0: r0 + h])
    else:
        mod = kc * (row_sign[None, :, None] * (col_sign * m)[:, None, :])
        half = torch.fft.ifft(mod, dim=1, norm="ortho")[:, r0: r0 + h]
    return torch.fft.ifft(half, dim=2, norm="ortho")[:, :, c0: c0 + w].abs()


class SliceBank:
    """Every slice of a list of volumes, in memory (CPU or device).

    Attributes:
        kspace_groups: one float32 tensor ``(n_g, rows_g, cols_g, 2)`` (multi-coil:
            ``(n_g, coils, rows_g, cols_g, 2)``) per k-space shape ``shapes[g]`` (one group
            when every file has the same shape).
        target: ``(N, h, w)`` float32 (``reconstruction_esc``, multi-coil
            ``reconstruction_rss``); one size for all files.
        files: stem of each slice's volume, ``N`` strings; slice_nums: ``(N,)``.
        volumes: ``{stem: slice indices into the bank}``, in file order.
        max_value: ``{stem: the volume's attrs["max"]}``.
    """

    def __init__(self, paths: Sequence[str | Path], device: torch.device | str = "cpu",
                 pin_memory: bool = False):
        """Read every volume of ``paths`` once.

        Args:
            device: where batches are computed. The bank lives there too, unless
                ``pin_memory`` is set on CUDA: then it stays in pinned host memory and each
                batch is copied to the device asynchronously.
        """
        self.device = canonical_device(device)
        self.paths = [Path(p) for p in paths]
        infos = _bank_infos(self.paths)
        crop = infos[0][2]
        self.shapes, group_of_file = _shape_groups(infos)
        self._group, self._local = _slice_groups(infos, group_of_file)
        pin = bool(pin_memory) and self.device.type == "cuda"
        groups = [_host_buffer((int((self._group == g).sum()), *shape, 2), pin) for g, shape in enumerate(self.shapes)]
        target = _host_buffer((len(self._group), *crop), pin)
        self.files, slice_nums, self.max_value, self.volumes = [], [], {}, {}
        start = 0
        for path, (n, _, _), g in zip(self.paths, infos, group_of_file):
            stop = start + n
            first = int(self._local[start])
            dest = torch.view_as_complex(groups[g][first: first + n])
            attrs = read_slices(path, range(n), dest, target[start:stop])
            self.files += [path.stem] * n
            slice_nums += list(range(n))
            self.volumes[path.stem] = list(range(start, stop))
            self.max_value[path.stem] = float(attrs["max"]) if "max" in attrs else float(target[start:stop].max())
            start = stop
        self.pinned = pin
        store = torch.device("cpu") if pin else self.device
        self.kspace_groups = [k.to(store) for k in groups]
        self.target = target.to(store)
        self.slice_nums = np.array(slice_nums)
        self.crop = tuple(self.target.shape[-2:])

    def __len__(self) -> int:
        return self.target.shape[0]

    def batch(self, idx: Sequence[int], mask_func: MaskFunc, seeds: Sequence) -> UnetBatch:
        """Masked, normalised pairs for slices ``idx`` with one mask per seed, on ``self.device``."""
        with data_threads(self.target.device):
            return self._batch(idx, mask_func, seeds)

    def _fetch(self, g: int, idx: np.ndarray) -> torch.Tensor:
        """k-space ``(len(idx), *shapes[g], 2)`` of bank slices ``idx`` (all of shape group ``g``)."""
        store = self.kspace_groups[g]
        kspace = store[torch.as_tensor(self._local[idx], device=store.device)]
        if kspace.device != self.device:  # pinned host bank: gather on the host, copy asynchronously
            kspace = kspace.pin_memory().to(self.device, non_blocking=True)
        return kspace

    def _batch(self, idx: Sequence[int], mask_func: MaskFunc, seeds: Sequence) -> UnetBatch:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        target = self.target[torch.as_tensor(idx, device=self.target.device)]
        if target.device != self.device:
            target = target.pin_memory().to(self.device, non_blocking=True)
        batch = _grouped_inputs(idx, self._group, self._fetch, self.crop, target, mask_func, seeds)
        return _identified(batch, self, idx)

    def kspace_of(self, idx: Sequence[int]) -> torch.Tensor:
        """Fully sampled k-space ``(len(idx), rows, cols, 2)`` (multi-coil ``(len(idx), coils,
        rows, cols, 2)``) of slices ``idx`` of one shape (e.g. one volume), on ``self.device``."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self._fetch(_one_group(self._group, idx), idx).to(self.device)


def _shape_groups(infos) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct per-slice k-space shapes of ``infos`` (first-seen order) and each file's group."""
    shapes: list[tuple[int, ...]] = []
    group_of_file = []
    for _, shape, _ in infos:
        if shape not in shapes:
            shapes.append(shape)
        group_of_file.append(shapes.index(shape))
    return shapes, group_of_file


def _slice_groups(infos, group_of_file) -> tuple[np.ndarray, np.ndarray]:
    """Each bank slice's shape group ``(N,)`` and its index within that group ``(N,)``."""
    group = np.concatenate([np.full(n, g, dtype=np.int64) for (n, _, _), g in zip(infos, group_of_file)])
    local = np.zeros_like(group)
    for g in np.unique(group):
        where = group == g
        local[where] = np.arange(int(where.sum()))
    return group, local


def _one_group(group: np.ndarray, idx: np.ndarray) -> int:
    found = np.unique(group[idx])
    if len(found) != 1:
        raise ValueError(f"slices {idx.tolist()[:8]} have {len(found)} k-space shapes; ask for one shape at a time")
    return int(found[0])


def _grouped_inputs(idx: np.ndarray, group: np.ndarray, fetch, crop: tuple[int, int], target: torch.Tensor,
                    mask_func: MaskFunc, seeds: Sequence) -> UnetBatch:
    """:func:`masked_unet_inputs` of bank slices ``idx`` whose k-space shapes may differ.

    Each shape group is masked and transformed at its native size and cropped to ``crop``;
    the cropped images are put back in ``idx``'s order. ``fetch(g, idx_g)`` returns the
    k-space ``(len(idx_g), *shapes[g], 2)`` of group ``g``'s slices on the device.
    """
    groups = group[idx]
    first = int(groups[0])
    if (groups == first).all():  # the common case: one shape, no reordering
        kspace = fetch(first, idx)
        return masked_unet_inputs(kspace, make_masks(mask_func, kspace.shape, seeds), crop, target)
    image = torch.empty((len(idx), *crop), dtype=torch.float32, device=target.device)
    out_target = torch.empty_like(image)
    mean = torch.empty(len(idx), dtype=torch.float32, device=target.device)
    std = torch.empty_like(mean)
    for g in np.unique(groups):
        pos = np.flatnonzero(groups == g)
        kspace = fetch(int(g), idx[pos])
        pos_t = torch.as_tensor(pos, device=target.device)
        part = masked_unet_inputs(kspace, make_masks(mask_func, kspace.shape, [seeds[p] for p in pos]), crop,
                                  target[pos_t])
        image[pos_t], out_target[pos_t], mean[pos_t], std[pos_t] = part.image, part.target, part.mean, part.std
    return UnetBatch(image, out_target, mean, std)


def _identified(batch: UnetBatch, bank: "Bank", idx) -> UnetBatch:
    """``batch`` with each slice's file stem and slice number from ``bank``."""
    idx = [int(i) for i in np.asarray(torch.as_tensor(idx).cpu()).reshape(-1)]
    return batch._replace(fname=tuple(bank.files[i] for i in idx),
                          slice_num=torch.as_tensor(np.asarray(bank.slice_nums)[idx]))


def _predict(model: torch.nn.Module, b: UnetBatch, device: torch.device) -> torch.Tensor:
    """The network's output for a batch, un-normalised to the target's units ``(B, h, w)``
    in float32 (also when the network ran under bf16 autocast)."""
    pred = model(b.image[:, None].to(device))[:, 0].float()
    return pred * b.std[:, None, None].to(device) + b.mean[:, None, None].to(device)


def _timed(device: torch.device, work, precision: str = "fp32") -> tuple[np.ndarray, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(precision, device)):
        out = work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out.float().cpu().numpy(), time.perf_counter() - start


def reconstruct(
    model: torch.nn.Module, bank: "Bank", stem: str, mask_func: MaskFunc, batch_size: int = 16,
    precision: str = "fp32",
) -> tuple[np.ndarray, float]:
    """Reconstruct one volume with the fixed per-file mask fastMRI uses for validation.

    ``precision`` is the network's arithmetic (:func:`mrlib.runtime.use_bf16`): a U-Net
    trained under bf16 autocast infers under it too (on a CPU with AMX about three times
    faster than fp32); the output is float32 either way, and so are the metrics.

    Returns:
        ``(recon (S, h, w) in the target's units, seconds)``; the time covers masking,
        the network and un-normalising, not reading the file.
    """
    idx = bank.volumes[stem]
    seeds = [file_seed(f"{stem}.h5")] * len(idx)
    device = next(model.parameters()).device
    model.eval()
    return _timed(device, lambda: torch.cat([
        _predict(model, bank.batch(idx[i: i + batch_size], mask_func, seeds[i: i + batch_size]), device)
        for i in range(0, len(idx), batch_size)]), precision)


def reconstruct_kspace(
    model: torch.nn.Module, kspace: torch.Tensor, masks: torch.Tensor, crop: tuple[int, int], batch_size: int = 16,
    precision: str = "fp32",
) -> tuple[np.ndarray, float]:
    """Reconstruct one volume from its k-space and masks, e.g. a real test file's
    already undersampled k-space and its stored mask.

    Args:
        kspace: ``(S, rows, cols, 2)`` or ``(S, coils, rows, cols, 2)``; masks:
            ``(S, 1, cols, 1)``; crop: ``(h, w)``.

    Returns:
        ``(recon (S, h, w), seconds)``, as :func:`reconstruct` (and ``precision`` too).
    """
    device = next(model.parameters()).device
    kspace = kspace.to(device)
    model.eval()
    return _timed(device, lambda: torch.cat([
        _predict(model, masked_unet_inputs(kspace[i: i + batch_size], masks[i: i + batch_size], crop), device)
        for i in range(0, kspace.shape[0], batch_size)]), precision)


def zero_filled_volume(bank: "Bank", stem: str, mask_func: MaskFunc) -> np.ndarray:
    """The zero-filled baseline of one volume ``(S, h, w)``, with the same fixed mask."""
    idx = bank.volumes[stem]
    kspace = bank.kspace_of(idx)
    masks = make_masks(mask_func, kspace.shape, [file_seed(f"{stem}.h5")] * len(idx))
    return zero_filled(apply_masks(kspace, masks), bank.crop).cpu().numpy()


# --------------------------------------------------------------------------- reading, storage, streaming

#: Bytes read per HDF5 call when a dataset is stored contiguously (no chunks): whole
#: slabs of slices, so a read is one large sequential request.
SLAB_BYTES = 16 << 20


def _bank_infos(paths: Sequence[Path]) -> list[tuple[int, tuple[int, ...], tuple[int, int]]]:
    """Validate the files' structure (not their values: those are checked as they are read).

    Returns ``[(n_slices, slice shape, (h, w))]`` per file, the slice shape ``(rows, cols)``
    or, multi-coil, ``(coils, rows, cols)``. k-space shapes may differ between files;
    targets must share one size (fastMRI knee targets are all 320 x 320). Raises
    :class:`DataError` for a file without target, single- and multi-coil files in one
    split, targets of different sizes, or k-space narrower than the target when shapes
    are mixed.
    """
    if not paths:
        raise DataError("split", "no volumes to load")
    infos = []
    for path in paths:
        info = fastmri_h5.validate_h5(path, require_target=False, check_finite=False)
        if info.target_key is None:
            raise DataError(path, "has no target; the U-Net needs fully sampled targets to train and to be scored "
                                  "(a file without one is for inference only: split_policy=fastmri)")
        if infos and len(info.kspace_shape) - 1 != len(infos[0][1]):
            raise DataError(path, f"is {info.challenge} but {Path(paths[0]).name} of the same split is not")
        infos.append((info.n_slices, tuple(info.kspace_shape[1:]), tuple(info.target_shape[-2:])))
    crops = sorted({i[2] for i in infos})
    if len(crops) > 1:
        raise DataError(Path(paths[0]).parent, f"targets of different sizes in one split: {crops}")
    if len({i[1] for i in infos}) > 1:
        narrow = next((p for p, i in zip(paths, infos) if i[1][-1] < i[2][1]), None)
        if narrow is not None:
            raise DataError(narrow, "k-space is narrower than its target, and the split mixes k-space widths")
    return infos


def _host_buffer(shape: Sequence[int], pin: bool) -> torch.Tensor:
    """An uninitialised float32 host tensor, page-locked when ``pin`` (CUDA only)."""
    return torch.empty(tuple(shape), dtype=torch.float32, pin_memory=bool(pin) and torch.cuda.is_available())


def _runs(slices: Sequence[int]) -> list[tuple[int, int, int]]:
    """Sorted slice numbers as ``(first, stop, position in the request)`` runs of consecutive numbers."""
    runs, pos = [], 0
    slices = list(slices)
    while pos < len(slices):
        end = pos + 1
        while end < len(slices) and slices[end] == slices[end - 1] + 1:
            end += 1
        runs.append((slices[pos], slices[end - 1] + 1, pos))
        pos = end
    return runs


def read_slices(path: str | Path, slices: Sequence[int], kspace_out: torch.Tensor,
                target_out: torch.Tensor | None = None) -> dict:
    """Read slices of one volume straight into host tensors, chunk by chunk.

    Consecutive slices are read as slabs aligned to the dataset's HDF5 chunks (or of
    :data:`SLAB_BYTES` when it is contiguous) with ``read_direct``, so each byte is read
    once with no intermediate copy; the slab just read is checked for NaN/Inf.

    Args:
        slices: increasing slice numbers.
        kspace_out: complex64 ``(len(slices), rows, cols)``, multi-coil ``(len(slices), coils,
            rows, cols)`` (e.g. ``view_as_complex`` of a bank).
        target_out: float32 ``(len(slices), h, w)`` or ``None``.

    Returns:
        the file's attributes (bytes decoded to str).
    """
    path = Path(path)
    slices = [int(i) for i in slices]
    try:
        with h5py.File(path, "r") as hf:
            ks = hf["kspace"]
            tkey = "reconstruction_esc" if "reconstruction_esc" in hf else "reconstruction_rss"
            per_slice = int(np.prod(ks.shape[1:])) * ks.dtype.itemsize
            step = ks.chunks[0] if ks.chunks else max(1, SLAB_BYTES // per_slice)
            k_np = kspace_out.numpy()
            t_np = target_out.numpy() if target_out is not None else None
            for first, stop, pos in _runs(slices):
                for a in range(first, stop, step):
                    b = min(stop, (a // step + 1) * step)  # stop at the next chunk boundary
                    dest = np.s_[pos + a - first: pos + b - first]
                    ks.read_direct(k_np, source_sel=np.s_[a:b], dest_sel=dest)
                    if not np.isfinite(k_np[dest].view(np.float32)).all():
                        bad = next(i for i in range(a, b) if not np.isfinite(k_np[pos + i - first].view(np.float32)).all())
                        raise DataError(path, f"kspace slice {bad} holds NaN/Inf value(s)")
                    if t_np is not None:
                        hf[tkey].read_direct(t_np, source_sel=np.s_[a:b], dest_sel=dest)
                        if not np.isfinite(t_np[dest]).all():
                            raise DataError(path, f"{tkey} slices {a}-{b - 1} hold NaN/Inf value(s)")
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in hf.attrs.items()}
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot read k-space ({type(exc).__name__}: {exc})") from None


class StreamingBank:
    """A split served from disk: :class:`SliceBank`'s interface without holding the k-space.

    For splits larger than memory. Each batch reads just its slices (chunk-aligned slabs,
    :func:`read_slices`) into a host buffer (pinned on CUDA), copies it to the device and
    runs the same batched transform; a small cache keeps the most recently read slabs, so
    a volume-ordered pass (:meth:`iter_batches`, inference) reads each slice once.
    Targets (16 % of the bytes at fastMRI's geometry) are kept in host memory.
    """

    def __init__(self, paths: Sequence[str | Path], device: torch.device | str = "cpu",
                 cache_bytes: int = 256 << 20):
        self.device = canonical_device(device)
        self.paths = [Path(p) for p in paths]
        infos = _bank_infos(self.paths)
        self.crop = infos[0][2]
        self.shapes, group_of_file = _shape_groups(infos)
        self._group, _ = _slice_groups(infos, group_of_file)
        n_total = len(self._group)
        self.pinned = self.device.type == "cuda"
        self.target = torch.empty((n_total, *self.crop), dtype=torch.float32)
        self.files, slice_nums, self.max_value, self.volumes, self._path_of = [], [], {}, {}, {}
        start = 0
        for path, (n, _, _) in zip(self.paths, infos):
            stop = start + n
            with h5py.File(path, "r") as hf:
                tkey = "reconstruction_esc" if "reconstruction_esc" in hf else "reconstruction_rss"
                hf[tkey].read_direct(self.target[start:stop].numpy())
                attrs = dict(hf.attrs)
            self.files += [path.stem] * n
            slice_nums += list(range(n))
            self.volumes[path.stem] = list(range(start, stop))
            self._path_of[path.stem] = path
            self.max_value[path.stem] = float(attrs["max"]) if "max" in attrs else float(self.target[start:stop].max())
            start = stop
        self.slice_nums = np.array(slice_nums)
        self._start = {stem: idx[0] for stem, idx in self.volumes.items()}
        self._nbytes = sum(n * math.prod(shape) * 8 for n, shape, _ in infos)
        slice_bytes = max(math.prod(shape) for shape in self.shapes) * 8
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()  # bank index -> complex slice
        self._cache_slices = max(1, cache_bytes // slice_bytes)
        self.reads = 0  # slices read from disk (for tests and the benchmark)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def nbytes(self) -> int:
        """Bytes of k-space the bank serves (what a :class:`SliceBank` would hold)."""
        return self._nbytes

    def _read(self, g: int, idx: Sequence[int]) -> torch.Tensor:
        """Complex k-space ``(len(idx), *shapes[g])`` of bank slices ``idx`` (all of shape
        group ``g``) in a host buffer."""
        idx = [int(i) for i in idx]
        shape = self.shapes[g]
        out = torch.view_as_complex(_host_buffer((len(idx), *shape, 2), self.pinned))
        missing: dict[str, list[int]] = {}
        for pos, i in enumerate(idx):
            if i in self._cache:
                out[pos] = self._cache[i]
                self._cache.move_to_end(i)
            else:
                missing.setdefault(self.files[i], []).append(i)
        for stem, wanted in missing.items():
            wanted = sorted(set(wanted))
            base = self._start[stem]
            buf = torch.view_as_complex(torch.empty((len(wanted), *shape, 2)))
            read_slices(self._path_of[stem], [i - base for i in wanted], buf)
            self.reads += len(wanted)
            for j, i in enumerate(wanted):
                self._cache[i] = buf[j]
                while len(self._cache) > self._cache_slices:
                    self._cache.popitem(last=False)
            where = {i: j for j, i in enumerate(wanted)}
            for pos, i in enumerate(idx):
                if i in where:
                    out[pos] = buf[where[i]]
        return out

    def _fetch(self, g: int, idx: np.ndarray) -> torch.Tensor:
        return torch.view_as_real(self._read(g, idx)).to(self.device, non_blocking=True)

    def kspace_of(self, idx: Sequence[int]) -> torch.Tensor:
        """Fully sampled k-space ``(len(idx), rows, cols, 2)`` of slices ``idx`` of one shape
        (e.g. one volume), on ``self.device``."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self._fetch(_one_group(self._group, idx), idx)

    def batch(self, idx: Sequence[int], mask_func: MaskFunc, seeds: Sequence) -> UnetBatch:
        """Masked, normalised pairs for slices ``idx`` (as :meth:`SliceBank.batch`)."""
        with data_threads(torch.device("cpu")):
            return self._batch(idx, mask_func, seeds)

    def _batch(self, idx: Sequence[int], mask_func: MaskFunc, seeds: Sequence) -> UnetBatch:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        target = self.target[torch.as_tensor(idx)].to(self.device, non_blocking=True)
        batch = _grouped_inputs(idx, self._group, self._fetch, self.crop, target, mask_func, seeds)
        return _identified(batch, self, idx)

    def iter_batches(self, order: Sequence[int], batch_size: int, mask_func: MaskFunc, seeds: Sequence):
        """Yield :meth:`batch` of consecutive pieces of ``order``; the next batch's slices
        are read in a background thread while the current one is used."""
        order = [int(i) for i in order]
        seeds = list(seeds)
        pieces = [(order[i: i + batch_size], seeds[i: i + batch_size]) for i in range(0, len(order), batch_size)]
        with ThreadPoolExecutor(1) as pool:
            def submit(k):
                return pool.submit(self.batch, pieces[k][0], mask_func, pieces[k][1]) if k < len(pieces) else None

            nxt = submit(0)
            for k in range(len(pieces)):
                current = nxt.result()
                nxt = submit(k + 1)
                yield current


# --------------------------------------------------------------------------- choosing where a split lives

STORAGES = ("auto", "device", "host", "stream")


def split_nbytes(paths: Sequence[str | Path]) -> int:
    """Bytes a :class:`SliceBank` of ``paths`` holds (k-space as float32 pairs plus targets)."""
    total = 0
    for n, shape, (h, w) in _bank_infos([Path(p) for p in paths]):
        total += n * (math.prod(shape) * 8 + h * w * 4)
    return total


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device`` (CUDA: ``mem_get_info``; otherwise the host's MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def plan_storage(nbytes: int, device: torch.device | str, storage: str = "auto",
                 budget_bytes: int | None = None, fraction: float = 0.6) -> tuple[str, str]:
    """Where a split of ``nbytes`` should live: ``"device"``, ``"host"`` (pinned) or ``"stream"``.

    A split is kept in memory when it takes at most ``fraction`` of the free memory (or of
    ``budget_bytes``, which overrides the measured free memory of the device). Asking for
    ``"device"`` or ``"host"`` when the split does not fit falls back to streaming.

    Returns:
        ``(storage, reason)``; the reason is a sentence for the log.
    """
    if storage not in STORAGES:
        raise ParameterError("storage", f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    device = torch.device(device)
    gib = nbytes / 2**30
    if storage == "stream":
        return "stream", f"streaming {gib:.2f} GiB from disk as asked"
    dev_free = budget_bytes if budget_bytes is not None else available_bytes(device)
    host_free = budget_bytes if budget_bytes is not None else available_bytes(torch.device("cpu"))
    fits_dev = nbytes <= fraction * dev_free
    fits_host = nbytes <= fraction * host_free
    where = "the device" if device.type != "cpu" else "host memory"
    if device.type == "cpu":
        if fits_dev:
            return "device", f"{gib:.2f} GiB held in host memory"
        return "stream", (f"the split ({gib:.2f} GiB) does not fit in {where} "
                          f"({dev_free / 2**30:.2f} GiB free); streaming it from disk instead")
    if storage in ("auto", "device") and fits_dev:
        return "device", f"{gib:.2f} GiB held in {device} memory"
    if storage in ("auto", "host", "device") and fits_host:
        why = "as asked" if storage == "host" else (
            f"it does not fit in {device} memory ({dev_free / 2**30:.2f} GiB free)")
        return "host", f"{gib:.2f} GiB held in pinned host memory, {why}"
    return "stream", (f"the split ({gib:.2f} GiB) fits neither {device} memory ({dev_free / 2**30:.2f} GiB free) "
                      f"nor host memory ({host_free / 2**30:.2f} GiB free); streaming it from disk instead")


def load_bank(paths: Sequence[str | Path], device: torch.device | str = "cpu", storage: str = "auto",
              budget_bytes: int | None = None, verbose: bool = True) -> "SliceBank | StreamingBank":
    """A :class:`SliceBank` when the split fits in memory, else a :class:`StreamingBank`.

    ``storage``: ``auto`` (device memory, then pinned host memory, then streaming),
    ``device``, ``host`` or ``stream``. A fall-back is announced on stderr (``verbose``)
    and recorded in the bank's ``storage_note``.
    """
    device = torch.device(device)
    paths = [Path(p) for p in paths]
    where, reason = plan_storage(split_nbytes(paths), device, storage, budget_bytes)
    if verbose and (where == "stream" and storage != "stream" or where == "host" and storage != "host"):
        print(f"note: {reason}", file=sys.stderr)
    bank = StreamingBank(paths, device) if where == "stream" else SliceBank(paths, device, pin_memory=where == "host")
    bank.storage, bank.storage_note = where, reason
    return bank
