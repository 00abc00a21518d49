"""``python -m mrlib bench``: mrlib's data path against fastMRI's, side by side, in one process.

Three measurements on the same synthetic data in fastMRI's geometry (k-space 2N x 1.15N,
images N x N; N = 320 by default, ``--quick`` uses N = 128 for a CPU):

* **data path**: normalised ``(input, target)`` pairs delivered on the device per second.
  Reference: ``fastmri.data.SliceDataset`` + ``UnetDataTransform`` + ``DataLoader`` with
  workers (each epoch re-reads the HDF5 files slice by slice). Ours: the split read once
  (:class:`mrlib.recon.SliceBank`), then mask, inverse FFT, crop, magnitude and
  normalisation in batches on the device; the load is timed apart and also folded into a
  first-epoch figure. The streaming bank (:class:`mrlib.recon.StreamingBank`, for splits
  that do not fit) is timed too.
* **training**: steps of ``fastmri.models.Unet`` (32 channels, 4 pools) with RMSprop and
  an L1 loss, as fastMRI's baseline, fed by each path with the same batch size. Ours adds
  bf16 autocast and channels_last on CUDA, and ``torch.compile`` with ``--compile``.
* **inference**: seconds to reconstruct one volume, for the report's U-Net
  (:class:`mrlib.models.SeedUnet`) and fastMRI's, through each path.

Model FLOPs are counted with ``torch.utils.flop_counter``; on CUDA the achieved FLOP/s is
given as a share of the device's dense bf16 peak (:data:`PEAK_TFLOPS`). Peak memory is the
CUDA allocator's peak on a GPU, and on the CPU the largest resident set of this process
plus its data-loader workers, sampled every 20 ms.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import torch
from fastmri.data import SliceDataset
from fastmri.data.transforms import UnetDataTransform
from torch.utils.flop_counter import FlopCounterMode

from .artifacts import read_json
from .data import fastmri_h5
from .data.synth import SynthConfig, generate
from .errors import ParameterError
from .masking import MaskSpec
from .models import SeedUnet, fastmri_unet
from .recon import SliceBank, StreamingBank, reconstruct
from .runtime import pick_device

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of the CUDA device
#: name (vendor data sheets; SXM parts where a card comes in several forms).
PEAK_TFLOPS = {
    "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "A10G": 70.0,
    "A10": 125.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "RTX 4090": 165.0, "RTX 3090": 71.0,
    "V100": 125.0, "T4": 65.0,
}


@dataclass
class BenchConfig:
    """What the benchmark runs (``--quick`` is :meth:`quick`)."""

    image_size: int = 320
    n_volumes: int = 3
    n_slices: int = 35
    batch_size: int = 8
    workers: int = 2
    epochs: int = 2
    train_steps: int = 10
    device: str = "auto"
    compile: bool = False
    data: str | None = None
    seed: int = 0
    sections: tuple[str, ...] = ("data", "train", "inference")

    @classmethod
    def quick(cls, **kw: Any) -> "BenchConfig":
        base = dict(image_size=128, n_volumes=3, n_slices=35, train_steps=6, epochs=2)
        base.update(kw)
        return cls(**base)

    def __post_init__(self) -> None:
        for name in ("image_size", "n_volumes", "n_slices", "batch_size", "epochs", "train_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"--{name.replace('_', '-')}", f"must be an integer >= 1, got {value!r}")
        if self.image_size % 16:
            raise ParameterError("--image-size", f"must be a multiple of 16 (4 poolings), got {self.image_size}")
        if self.workers < 0:
            raise ParameterError("--workers", f"must be >= 0, got {self.workers}")
        unknown = set(self.sections) - {"data", "train", "inference"}
        if unknown:
            raise ParameterError("--only", f"unknown sections {sorted(unknown)}; use data, train, inference")


# --------------------------------------------------------------------------- data

def ensure_data(cfg: BenchConfig, progress: bool = False, layout: str = "synthetic") -> tuple[Path, list[Path]]:
    """The benchmark's split: ``cfg.data``'s ``fastmri/singlecoil_train`` if it has one, else
    synthetic volumes generated once into ``cfg.data`` (or a temporary directory);
    ``layout="real"`` generates them with k-space widths that differ between files, as
    the real data's (always in a temporary directory).

    Returns ``(split_dir, files)``; a split with more files than ``n_volumes`` is reduced
    to a directory of links to the first ``n_volumes`` (so fastMRI's dataset sees the same),
    made in the temporary directory. Nothing in a directory the user passed is deleted: a
    cache there of another geometry is refused, not regenerated.
    """
    root = Path(cfg.data) if cfg.data and layout == "synthetic" else Path(tempfile.gettempdir()) / "mrlib-bench" / (
        f"n{cfg.image_size}_s{cfg.n_slices}_v{cfg.n_volumes}_seed{cfg.seed}" + ("_mixed" if layout == "real" else ""))
    split = root / "fastmri" / "singlecoil_train"
    meta = root / "synth.json"
    want = dict(image_size=cfg.image_size, n_slices=cfg.n_slices)
    reuse = split.is_dir() and any(split.glob("*.h5"))
    made: dict = {}
    if reuse and meta.is_file():  # a synthetic cache: it must have the asked-for geometry and count
        made = read_json(meta).get("config", {})
        reuse = all(made.get(k) == v for k, v in want.items()) and made.get("n_train", 0) >= cfg.n_volumes
    if not reuse:
        if split.is_dir() and not meta.is_file():
            raise ParameterError("--data", f"{split} holds other data than the benchmark's; give an empty directory")
        if cfg.data and split.is_dir():
            raise ParameterError("--data", f"{root} holds a benchmark cache of another size ({made or 'unknown'}); "
                                 "give another or an empty directory (bench deletes nothing you pass it)")
        shutil.rmtree(root / "fastmri", ignore_errors=True)  # our own temporary cache only
        generate(root, SynthConfig(image_size=cfg.image_size, n_slices=cfg.n_slices, n_train=cfg.n_volumes,
                                   n_val=0, n_test=0, kneemri_exams=0, kneemri_slices=1, kneemri_size=32),
                 seed=cfg.seed, progress=progress, layout=layout)
    files = fastmri_h5.list_volumes(split)
    if len(files) > cfg.n_volumes:
        sub = Path(tempfile.gettempdir()) / "mrlib-bench" / f"split_{os.getpid()}_{layout}"
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir(parents=True)
        for f in files[: cfg.n_volumes]:
            (sub / f.name).symlink_to(f.resolve())
        split, files = sub, fastmri_h5.list_volumes(sub)
    return split, files


# --------------------------------------------------------------------------- measuring helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes(pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children() -> list[str]:
    out = []
    try:
        for task in Path("/proc/self/task").iterdir():
            out += (task / "children").read_text().split()
    except OSError:
        pass
    return out


class PeakMemory:
    """Peak memory over a ``with`` block: CUDA allocator peak, or sampled host RSS
    (this process plus its children, i.e. data-loader workers)."""

    def __init__(self, device: torch.device, interval: float = 0.02, children: bool = True):
        self.device, self.interval, self.peak, self.children = device, interval, 0, children

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes() + (sum(_rss_bytes(c) for c in _children()) if self.children else 0)
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":  # may be entered again: the peak is over all the blocks
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)


def count_flops(model: torch.nn.Module, x: torch.Tensor, backward: bool = True) -> int:
    """FLOPs of one forward (and backward) pass of ``model`` on ``x``."""
    was_training = model.training
    with FlopCounterMode(display=False) as counter:
        if backward:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return int(counter.get_total_flops())


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or ``None`` (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():  # ordered: more specific names first
        if key in name:
            return tflops * 1e12
    return None


def load_average() -> str:
    """The 1, 5 and 15 minute load averages and the CPU count, as ``uptime`` shows them."""
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, " \
           f"{os.cpu_count()} cores"


# --------------------------------------------------------------------------- the two data paths

def reference_loader(split: Path, mask_func, batch_size: int, workers: int, device: torch.device,
                     shuffle: bool = True, use_seed: bool = False, subset: list[int] | None = None):
    """fastMRI's path: ``SliceDataset`` + ``UnetDataTransform`` + ``DataLoader``."""
    ds = SliceDataset(split, "singlecoil", transform=UnetDataTransform("singlecoil", mask_func, use_seed=use_seed))
    if subset is not None:
        ds = torch.utils.data.Subset(ds, subset)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(0))


def _ref_pairs(loader, device: torch.device):
    """Yield ``(image, target, mean, std)`` on the device from fastMRI's loader."""
    for s in loader:
        yield (s.image.to(device, non_blocking=True), s.target.to(device, non_blocking=True),
               s.mean.to(device, non_blocking=True), s.std.to(device, non_blocking=True))


def _our_pairs(bank, mask_func, batch_size: int, seed: int, epoch: int):
    """Yield ``(image, target, mean, std)`` on the device from mrlib's bank, a fresh shuffled order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(bank))
    if hasattr(bank, "iter_batches"):  # streaming: prefetch the next batch's slices in a thread
        seeds = [(seed, epoch, i // batch_size, i % batch_size) for i in range(len(order))]
        for b in bank.iter_batches(order, batch_size, mask_func, seeds):
            yield b.image, b.target, b.mean, b.std
        return
    for step, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start: start + batch_size]
        b = bank.batch(idx, mask_func, [(seed, epoch, step, j) for j in range(len(idx))])
        yield b.image, b.target, b.mean, b.std


def _timed_epoch(pairs, device: torch.device) -> tuple[int, float]:
    n = 0
    _sync(device)
    start = time.perf_counter()
    for image, target, *_ in pairs:
        n += image.shape[0]
    _sync(device)
    return n, time.perf_counter() - start


def bench_data_path(cfg: BenchConfig, split: Path, files: list[Path], device: torch.device) -> dict:
    """Pairs per second of each path over ``cfg.epochs`` epochs each.

    The paths take turns epoch by epoch, in reversed order every other round (ABC CBA), so
    a change in the machine's load during the run falls on all of them alike. Each path
    first serves one untimed batch: on a GPU the first batch builds cuFFT plans and loads
    kernels, which cost more than the two timed epochs of a small split (the first H100 run
    put the in-memory bank below the streaming one for that reason).
    """
    func = MaskSpec().mask_func()
    mems = {k: PeakMemory(device, children=k == "reference") for k in ("reference", "ours", "ours_streaming")}
    with mems["ours"]:
        t0 = time.perf_counter()
        bank = SliceBank(files, device)
        _sync(device)
        load = time.perf_counter() - t0
    stream = StreamingBank(files, device)
    paths = {
        "reference": lambda e: _ref_pairs(reference_loader(split, func, cfg.batch_size, cfg.workers, device), device),
        "ours": lambda e: _our_pairs(bank, func, cfg.batch_size, cfg.seed, e),
        "ours_streaming": lambda e: _our_pairs(stream, func, cfg.batch_size, cfg.seed, e),
    }
    for make in paths.values():  # one untimed batch each: one-off costs (cuFFT plans, kernels) stay out
        warm = make(cfg.epochs)
        next(warm)
        warm.close()
    _sync(device)
    totals = {k: [0, 0.0] for k in paths}
    for epoch in range(cfg.epochs):
        for name in (list(paths) if epoch % 2 == 0 else list(paths)[::-1]):
            with mems[name]:
                n, sec = _timed_epoch(paths[name](epoch), device)
            totals[name][0] += n
            totals[name][1] += sec

    def row(name: str, **extra) -> dict:
        n, sec = totals[name]
        return dict(pairs=n, seconds=round(sec, 3), pairs_per_s=round(n / sec, 1), peak_mib=mems[name].mib, **extra)

    out: dict[str, Any] = {
        "reference": row("reference", what=f"SliceDataset + UnetDataTransform + DataLoader({cfg.workers} workers)"),
        "ours": row("ours", load_s=round(load, 3),
                    pairs_per_s_with_load=round(totals["ours"][0] / (totals["ours"][1] + load), 1),
                    what="SliceBank (read once) + batched transform on the device"),
        "ours_streaming": row("ours_streaming", slices_read=stream.reads,
                              what="StreamingBank (chunk-aligned reads, prefetch thread) + batched transform"),
    }
    ref = out["reference"]["pairs_per_s"]
    out["ratio"] = round(out["ours"]["pairs_per_s"] / ref, 2)
    out["ratio_with_load"] = round(out["ours"]["pairs_per_s_with_load"] / ref, 2)
    out["ratio_streaming"] = round(out["ours_streaming"]["pairs_per_s"] / ref, 2)
    return out


def data_ratio(cfg: BenchConfig, split: Path, files: list[Path], device: torch.device, repeats: int = 5) -> dict:
    """The data-path ratio (mrlib's in-memory bank over fastMRI's loader, pairs per second)
    as the median of ``repeats`` repeats; each repeat times one epoch of each, alternating
    which goes first, so a change in the machine's load falls on both alike."""
    func = MaskSpec().mask_func()
    bank = SliceBank(files, device)
    ratios = []
    for r in range(repeats):
        pps = {}
        for name in (("reference", "ours") if r % 2 == 0 else ("ours", "reference")):
            pairs = (_ref_pairs(reference_loader(split, func, cfg.batch_size, cfg.workers, device), device)
                     if name == "reference" else _our_pairs(bank, func, cfg.batch_size, cfg.seed, r))
            n, sec = _timed_epoch(pairs, device)
            pps[name] = n / sec
        ratios.append(pps["ours"] / pps["reference"])
    widths = sorted({_kspace_shape(f)[-1] for f in files})
    return dict(median_ratio=round(float(np.median(ratios)), 2), ratios=[round(x, 2) for x in ratios],
                kspace_widths=widths, volumes=len(files))


# --------------------------------------------------------------------------- training

def _train_step(model, opt, batch, device: torch.device, amp: bool, channels_last: bool) -> int:
    image, target = batch
    x = image[:, None]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.l1_loss(model(x)[:, 0].float(), target)
    loss.backward()
    opt.step()
    return image.shape[0]


def _cycle(make_epoch: Callable[[int], Any]):
    epoch = 0
    while True:
        for item in make_epoch(epoch):
            yield item
        epoch += 1


def bench_training(cfg: BenchConfig, split: Path, files: list[Path], device: torch.device) -> dict:
    """Steps per second of fastMRI's U-Net fed by each path (same batch, optimiser, loss).

    After one untimed step each, the two take turns in blocks (A B B A), so a change in
    the machine's load falls on both alike; each path's data work (loader workers or the
    batched transform) runs inside its own blocks.
    """
    func = MaskSpec().mask_func()
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    x = torch.zeros(1, 1, cfg.image_size, cfg.image_size, device=device)
    flops_per_slice = count_flops(fastmri_unet(32, 4).to(device), x, backward=True)
    bank = SliceBank(files, device)
    runs: dict[str, dict] = {}
    for name in ("reference", "ours"):
        torch.manual_seed(cfg.seed)
        model = fastmri_unet(32, 4).to(device)
        ours = name == "ours"
        if ours:
            batches = _cycle(lambda e: ((i, t) for i, t, *_ in _our_pairs(bank, func, cfg.batch_size, cfg.seed, e)))
            if cuda:
                model = model.to(memory_format=torch.channels_last)
            net = torch.compile(model) if cfg.compile else model
        else:
            batches = _cycle(lambda e: ((i, t) for i, t, *_ in _ref_pairs(
                reference_loader(split, func, cfg.batch_size, cfg.workers, device), device)))
            net = model
        runs[name] = dict(net=net, opt=torch.optim.RMSprop(model.parameters(), lr=1e-3), batches=batches,
                          amp=cuda and ours, channels_last=cuda and ours, seconds=0.0, slices=0, steps=0,
                          mem=PeakMemory(device, children=not ours))
    for r in runs.values():  # warm-up step (oneDNN/cuDNN set-up, compilation, loader start)
        _train_step(r["net"], r["opt"], next(r["batches"]), device, r["amp"], r["channels_last"])
    half = max(1, cfg.train_steps // 2)
    blocks = [("reference", half), ("ours", half), ("ours", cfg.train_steps - half), ("reference", cfg.train_steps - half)]
    for name, steps in blocks:
        r = runs[name]
        if steps == 0:
            continue
        with r["mem"]:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                r["slices"] += _train_step(r["net"], r["opt"], next(r["batches"]), device, r["amp"], r["channels_last"])
            _sync(device)
            r["seconds"] += time.perf_counter() - t0
            r["steps"] += steps
    out: dict[str, Any] = {}
    peak = peak_flops(device)
    for name, r in runs.items():
        sec, n = r["seconds"], r["slices"]
        achieved = flops_per_slice * n / sec
        out[name] = dict(steps=r["steps"], seconds=round(sec, 3), steps_per_s=round(r["steps"] / sec, 3),
                         slices_per_s=round(n / sec, 2), peak_mib=r["mem"].mib,
                         tflops_per_s=round(achieved / 1e12, 4),
                         share_of_peak=round(achieved / peak, 4) if peak else None,
                         precision="bf16 autocast, channels_last" if r["amp"] else "fp32",
                         compiled=bool(cfg.compile and name == "ours"))
        r["batches"].close()
    out["ratio"] = round(out["ours"]["steps_per_s"] / out["reference"]["steps_per_s"], 2)
    out["model"] = "fastmri.models.Unet(chans=32, num_pool_layers=4), RMSprop lr 1e-3, L1 loss"
    out["gflops_per_slice_fwd_bwd"] = round(flops_per_slice / 1e9, 2)
    return out


# --------------------------------------------------------------------------- inference

def _reference_reconstruct(model, split: Path, stem: str, mask_func, batch_size: int, workers: int,
                           device: torch.device) -> tuple[np.ndarray, float]:
    probe = SliceDataset(split, "singlecoil")
    subset = [i for i, s in enumerate(probe.raw_samples) if Path(s.fname).stem == stem]
    model.eval()
    out = []
    _sync(device)
    start = time.perf_counter()
    loader = reference_loader(split, mask_func, batch_size, workers, device, shuffle=False, use_seed=True,
                              subset=subset)
    with torch.no_grad():
        for image, _, mean, std in _ref_pairs(loader, device):
            out.append(model(image[:, None])[:, 0] * std[:, None, None] + mean[:, None, None])
    recon = torch.cat(out)
    _sync(device)
    return recon.float().cpu().numpy(), time.perf_counter() - start


def bench_inference(cfg: BenchConfig, split: Path, files: list[Path], device: torch.device) -> dict:
    """Seconds to reconstruct one volume (fixed per-file 4x mask), per model and path: each
    path runs twice in the order A B B A and the faster run counts."""
    func = MaskSpec().mask_func(4)
    bank = SliceBank(files[:1], device)
    stem = files[0].stem
    out: dict[str, Any] = {"slices": len(bank.volumes[stem])}
    for name, make in (("SeedUnet", SeedUnet), ("fastmri_unet", lambda: fastmri_unet(32, 4))):
        torch.manual_seed(cfg.seed)
        model = make().to(device).eval()
        with torch.no_grad():  # warm-up of the batch shapes used (oneDNN primitives, cuDNN algorithm choice)
            for size in {min(cfg.batch_size, out["slices"]), out["slices"] % cfg.batch_size} - {0}:
                model(torch.zeros(size, 1, *bank.crop, device=device))
        mem_ref, mem_ours = PeakMemory(device), PeakMemory(device, children=False)
        t_ref = t_ours = float("inf")
        for turn in ("ref", "ours", "ours", "ref"):  # A B B A, the faster of each pair
            if turn == "ref":
                with mem_ref:
                    ref, sec = _reference_reconstruct(model, split, stem, func, cfg.batch_size, cfg.workers, device)
                t_ref = min(t_ref, sec)
            else:
                with mem_ours:
                    ours, sec = reconstruct(model, bank, stem, func, cfg.batch_size)
                t_ours = min(t_ours, sec)
        flops = count_flops(model, torch.zeros(1, 1, *bank.crop, device=device), backward=False)
        peak = peak_flops(device)
        out[name] = dict(reference_s=round(t_ref, 3), ours_s=round(t_ours, 3), ratio=round(t_ref / t_ours, 2),
                         reference_peak_mib=mem_ref.mib, ours_peak_mib=mem_ours.mib,
                         max_abs_diff=float(np.abs(ref - ours).max()),
                         gflops_per_slice=round(flops / 1e9, 2),
                         share_of_peak=round(flops * out["slices"] / t_ours / peak, 4) if peak else None)
    return out


# --------------------------------------------------------------------------- the whole benchmark

def run_bench(cfg: BenchConfig, progress: bool = False) -> dict:
    """Run the sections of ``cfg`` and return the results (what ``--out`` writes)."""
    device = pick_device(cfg.device)
    split, files = ensure_data(cfg, progress=progress)
    results: dict[str, Any] = dict(
        device=device_name(device), device_type=device.type, load_before=load_average(),
        measured=time.strftime("%Y-%m-%d"),
        torch=torch.__version__, config=asdict(cfg),
        geometry=dict(kspace=list(_kspace_shape(files[0])), image=[cfg.image_size, cfg.image_size],
                      volumes=len(files)),
    )
    sections = {"data": bench_data_path, "train": bench_training, "inference": bench_inference}
    for name in cfg.sections:
        results[name] = sections[name](cfg, split, files, device)
    if "data" in cfg.sections:  # uniform and mixed k-space widths, each the median of 5 repeats
        mixed_split, mixed_files = ensure_data(cfg, progress=progress, layout="real")
        results["data_repeats"] = {"uniform": data_ratio(cfg, split, files, device),
                                   "mixed": data_ratio(cfg, mixed_split, mixed_files, device)}
    results["load_after"] = load_average()
    return results


def _kspace_shape(path: Path) -> tuple[int, ...]:
    with h5py.File(path, "r") as hf:
        return tuple(hf["kspace"].shape)


def speed_page(results: Sequence[tuple[str, dict]]) -> str:
    """The measured part of the book's speed chapter, rendered from benchmark results:
    for each ``(file name, results)`` (what ``--out`` wrote) the command's settings, the
    device, the load and :func:`format_table`'s tables. Markdown."""
    if not results:
        return "No benchmark results are committed under `benchmarks/results/`.\n"
    out = []
    for name, r in results:
        c, g = r["config"], r["geometry"]
        out += [f"### `{name}`: {r['device']}", "",
                f"Measured {r.get('measured', 'at an unrecorded date')} with torch {r['torch']}: "
                f"{g['volumes']} volumes of {c['n_slices']} slices, images {g['image'][0]} x {g['image'][1]}, "
                f"sections {', '.join(c['sections'])}, {c['train_steps']} training steps and {c['epochs']} "
                f"data epochs per path{', torch.compile' if c.get('compile') else ''}; {r['load_before']} before "
                f"and {r['load_after']} after.", "", "```text", format_table(r), "```", ""]
    return "\n".join(out)


def format_table(r: dict) -> str:
    """The results as plain-text tables (what the command prints)."""
    g = r["geometry"]
    lines = [f"device: {r['device']}",
             f"data: {g['volumes']} volumes, k-space {g['kspace'][1]} x {g['kspace'][2]}, "
             f"images {g['image'][0]} x {g['image'][1]}, batch {r['config']['batch_size']}, "
             f"{r['config']['workers']} loader workers",
             f"{r['load_before']} (before), {r['load_after']} (after)", ""]
    if "data" in r:
        d = r["data"]
        lines += ["data path                          pairs/s   peak MiB",
                  f"  fastMRI (reference)             {d['reference']['pairs_per_s']:>8.1f}   {d['reference']['peak_mib']:>8.1f}",
                  f"  mrlib SliceBank                 {d['ours']['pairs_per_s']:>8.1f}   {d['ours']['peak_mib']:>8.1f}"
                  f"   ratio {d['ratio']:.2f}x",
                  f"  mrlib SliceBank, load included  {d['ours']['pairs_per_s_with_load']:>8.1f}   {'':>8}"
                  f"   ratio {d['ratio_with_load']:.2f}x",
                  f"  mrlib StreamingBank             {d['ours_streaming']['pairs_per_s']:>8.1f}   "
                  f"{d['ours_streaming']['peak_mib']:>8.1f}   ratio {d['ratio_streaming']:.2f}x", ""]
    if "data_repeats" in r:
        lines.append("data-path ratio, mrlib SliceBank over fastMRI, median of 5 alternating repeats")
        for kind, d in r["data_repeats"].items():
            lines.append(f"  {kind + ' k-space widths':<24} {d['median_ratio']:>5.2f}x   (repeats "
                         f"{', '.join(f'{x:.2f}' for x in d['ratios'])}; widths {d['kspace_widths']})")
        lines.append("")
    if "train" in r:
        t = r["train"]

        def share(x):
            return f"{100 * x['share_of_peak']:.1f} %" if x["share_of_peak"] is not None else "n/a"
        lines += [f"training: {t['model']}, {t['gflops_per_slice_fwd_bwd']} GFLOP per slice (fwd+bwd)",
                  "                       steps/s  slices/s  TFLOP/s  of peak  peak MiB",
                  *(f"  {label:<20} {t[k]['steps_per_s']:>7.3f} {t[k]['slices_per_s']:>9.2f} "
                    f"{t[k]['tflops_per_s']:>8.4f} {share(t[k]):>8} {t[k]['peak_mib']:>9.1f}"
                    for label, k in (("fastMRI (reference)", "reference"), ("mrlib", "ours"))),
                  f"  ratio {t['ratio']:.2f}x", ""]
    if "inference" in r:
        i = r["inference"]
        lines += [f"inference: one {i['slices']}-slice volume, seconds",
                  "                       fastMRI path   mrlib path   ratio",
                  *(f"  {m:<20} {i[m]['reference_s']:>12.3f} {i[m]['ours_s']:>12.3f} {i[m]['ratio']:>6.2f}x"
                    for m in ("SeedUnet", "fastmri_unet")), ""]
    if r.get("device_type") != "cuda":
        lines.append("model FLOP/s as a share of peak: only on a CUDA device (not measured here)")
    return "\n".join(lines)
