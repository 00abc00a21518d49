"""One plain PyTorch training loop, for MRNet and the U-Nets alike.

No Lightning: fastMRI's Lightning modules do not run on Lightning 2, and a loop this size
is easier to read than a framework. What it does:

* one epoch = one pass of ``train_step`` over the batches ``batches(epoch)`` yields; the
  caller makes that order a function of ``(seed, epoch)`` so a resumed run sees the same
  batches as an uninterrupted one without saving random-number state;
* after each epoch, ``validate(model)`` returns a dict of numbers, the scheduler steps
  (``ReduceLROnPlateau`` on the monitored value), and a checkpoint is written atomically:
  ``last.pt`` always, ``best.pt`` when the monitored value improves, ``history.json``
  beside them;
* ``resume=True`` continues from ``last.pt``; checkpoints load with ``weights_only=True``;
* automatic mixed precision (bf16) on CUDA; progress bars with ``tqdm.auto``;
* with a :class:`mrlib.distributed.DistContext` of several processes (``torchrun``), the
  model is wrapped in ``DistributedDataParallel``, the logged loss is averaged over ranks,
  rank 0 alone writes checkpoints and logs, and on resume rank 0 reads ``last.pt`` and
  broadcasts it (see :mod:`mrlib.distributed`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .artifacts import atomic_path, write_json
from .errors import MrlibError
from .runtime import progress_bar

Batch = Any


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary name, then rename: a kill never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise MrlibError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a corrupt file or one that holds more than weights
        raise MrlibError(path, f"not a readable weights-only checkpoint ({type(exc).__name__}: {exc})") from None


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model``; a checkpoint of another model is a clear error."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("model", ckpt)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise MrlibError(
            path, f"does not fit {type(model).__name__}: {first[1].strip() if len(first) > 1 else first[0]}"
        ) from None
    return ckpt


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    train_step: Callable[[nn.Module, Batch], torch.Tensor],
    validate: Callable[[nn.Module], dict[str, float]],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    out_dir: str | Path,
    scheduler: Any = None,
    monitor: str = "val_loss",
    mode: str = "min",
    resume: bool = True,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "train",
    dist=None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` epochs; return the history (one dict per epoch).

    Args:
        batches: ``epoch -> iterable of batches`` (deterministic in the epoch).
        train_step: ``(model, batch) -> scalar loss``; the loop does backward and step.
        validate: ``model -> {"val_loss": ..., ...}``, run under ``torch.no_grad``.
        out_dir: where ``last.pt``, ``best.pt`` and ``history.json`` go.
        monitor, mode: the validation value that picks ``best.pt`` and drives
            ``ReduceLROnPlateau``; ``mode`` is ``"min"`` or ``"max"``.
        resume: continue from ``out_dir/last.pt`` if it exists. Its ``config`` must equal
            ``config``, so a run with other parameters is not silently continued.
        config: recorded in each checkpoint and checked on resume.
        dist: a :class:`mrlib.distributed.DistContext`; with more than one process,
            ``train_step`` receives the DDP-wrapped model, ``validate`` the plain one (it
            runs on every rank and must return the same numbers there: shard it and sum
            with ``dist.all_sum``), and only rank 0 writes.
    """
    out_dir = Path(out_dir)
    distributed = dist is not None and dist.active
    main = dist is None or dist.is_main
    progress = progress and main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(config or {})
    sign = 1.0 if mode == "min" else -1.0
    history: list[dict[str, float]] = []
    best = math.inf
    start = 0
    last = out_dir / "last.pt"
    ckpt = _resume_state(last, dist) if resume else None
    if ckpt is not None:
        if ckpt.get("config", {}) != config:
            raise MrlibError(last, "was written with other parameters; use another run directory or remove it")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        history, best, start = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
    device = next(model.parameters()).device
    amp = device.type == "cuda"
    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(start, epochs):
        model.train()
        total, n = 0.0, 0
        bar = progress_bar(batches(epoch), desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False, progress=progress)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = train_step(net, batch)
            value = loss.detach().float()
            if distributed:  # every rank sees the same mean loss, so all stop together on NaN
                value = torch.tensor(dist.all_sum([value.item()])[0] / dist.world_size)
            if not torch.isfinite(value):
                raise MrlibError(desc, f"the training loss became {value.item()} in epoch {epoch + 1}")
            loss.backward()
            optimizer.step()
            total += value.item()
            n += 1
            bar.set_postfix(loss=f"{total / n:.4g}")
        model.eval()
        with torch.no_grad():
            record = {"epoch": epoch + 1, "train_loss": total / max(n, 1), **validate(model)}
        record["lr"] = optimizer.param_groups[0]["lr"]
        history.append(record)
        value = sign * record[monitor]
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(record[monitor])
            else:
                scheduler.step()
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "history": history,
            "best": min(best, value),
            "config": config,
        }
        if main:
            if value < best:
                save_checkpoint(out_dir / "best.pt", state)
            save_checkpoint(last, state)
            write_json(out_dir / "history.json", history)
        best = min(best, value)
        if dist is not None:
            dist.barrier()
        if progress:
            tqdm.write(f"[{desc}] epoch {epoch + 1}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
    return history


def _resume_state(last: Path, dist) -> dict[str, Any] | None:
    """``last.pt`` if it exists; under DDP rank 0 reads it and broadcasts it (or its error)."""
    if dist is None or not dist.active:
        return load_checkpoint(last) if last.is_file() else None
    import torch.distributed as tdist

    box: list[Any] = [None]
    if dist.is_main and last.is_file():
        try:
            box[0] = load_checkpoint(last)
        except MrlibError as exc:
            box[0] = {"__error__": (exc.where, exc.problem)}
    tdist.broadcast_object_list(box, src=0, device=dist.comm_device)
    if isinstance(box[0], dict) and "__error__" in box[0]:
        raise MrlibError(*box[0]["__error__"])
    if box[0] is not None:
        box[0] = {k: _to_device(v, dist.device if k == "model" else "cpu") for k, v in box[0].items()}
    return box[0]


def _to_device(value: Any, device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def train_unet(
    model: nn.Module,
    train_bank,
    val_bank,
    mask_spec,
    variant: str,
    out_dir: str | Path,
    train_weights: torch.Tensor | None = None,
    val_weights: torch.Tensor | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 8,
    optimizer: str = "adam",
    lr_step: int = 0,
    seed: int = 0,
    resume: bool = True,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    dist=None,
    shards: int | None = None,
) -> list[dict[str, float]]:
    """Train a reconstruction U-Net on one loss variant (:data:`mrlib.losses.VARIANTS`).

    Each training step draws a fresh mask per slice (accelerations mixed as in
    ``mask_spec``) from the seed ``(seed, epoch, step, i)``, so runs compare and a resumed
    run repeats an uninterrupted one; validation uses fastMRI's fixed per-file masks.
    ``best.pt`` is the epoch with the lowest plain validation MSE (``val_mse``), the same
    yardstick for every variant; ``val_loss`` is the variant's own loss.

    Args:
        train_bank, val_bank: :class:`mrlib.recon.SliceBank` of each split.
        train_weights, val_weights: ``(N, H, W)`` weights per slice of each bank, or ``None``.
        optimizer: ``"adam"`` or ``"rmsprop"`` (fastMRI's U-Net baseline).
        lr_step: divide the learning rate by 10 every ``lr_step`` epochs (0: never).
        dist: a :class:`mrlib.distributed.DistContext` (``torchrun``); ``batch_size`` is
            then per process, and each process trains on whole volumes of its shard.
        shards: the number of volume shards the batches are drawn from (default: the
            number of processes under ``dist``; ``None`` alone keeps the single-process
            slice shuffle). One process with ``shards=W`` trains on the combined batches
            that ``W`` processes would see, step for step: the reference the DDP test uses.
    """
    from .errors import ParameterError
    from .losses import check_variant, variant_loss
    from .masking import file_seed

    check_variant(variant)
    device = next(model.parameters()).device
    func = mask_spec.mask_func()
    optimizers = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}
    if optimizer not in optimizers:
        raise ParameterError("optimizer", f"unknown optimizer {optimizer!r}; use adam or rmsprop")
    opt = optimizers[optimizer](model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, lr_step, 0.1) if lr_step > 0 else None
    distributed = dist is not None and dist.active
    if shards is None and distributed:
        shards = dist.world_size
    if distributed and shards != dist.world_size:
        raise ParameterError("shards", f"{shards} shards for {dist.world_size} processes")
    if shards is not None:
        from .distributed import check_shardable

        check_shardable(train_bank.volumes, shards)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)

    def batches(epoch: int):
        if shards is not None:
            from .distributed import volume_batches

            for per_rank in volume_batches(train_bank.volumes, shards, batch_size, seed, epoch):
                if distributed:
                    yield torch.tensor(per_rank[dist.rank][0]), per_rank[dist.rank][1]
                else:
                    yield torch.tensor([i for idx, _ in per_rank for i in idx]), [s for _, ss in per_rank for s in ss]
            return
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(train_bank)))
        for step, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            yield idx, [(seed, epoch, step, j) for j in range(len(idx))]

    def run_batch(m: nn.Module, bank, idx, seeds, weights) -> tuple[torch.Tensor, torch.Tensor]:
        b = bank.batch(idx, func, seeds)
        x = b.image[:, None].to(device)
        pred = m(x.contiguous(memory_format=torch.channels_last) if channels_last else x)[:, 0]
        target = b.target.to(device)
        w = weights[idx].to(device) if weights is not None else None
        return variant_loss(variant, pred, target, w), torch.mean((pred - target) ** 2)

    def step(m: nn.Module, batch) -> torch.Tensor:
        idx, seeds = batch
        return run_batch(m, train_bank, idx, seeds, train_weights)[0]

    def validate(m: nn.Module) -> dict[str, float]:
        loss = mse = 0.0
        part = range(len(val_bank))
        if distributed:  # each rank validates a contiguous share; the sums are added up
            from .distributed import shard_range

            part = shard_range(len(val_bank), dist.rank, dist.world_size)
        for start in range(part.start, part.stop, batch_size):
            idx = torch.arange(start, min(start + batch_size, part.stop))
            seeds = [file_seed(f"{val_bank.files[i]}.h5") for i in idx]
            l, s = run_batch(m, val_bank, idx, seeds, val_weights)
            loss += l.item() * len(idx)
            mse += s.item() * len(idx)
        if distributed:
            loss, mse = dist.all_sum([loss, mse])
        return {"val_loss": loss / len(val_bank), "val_mse": mse / len(val_bank)}

    return fit(model, batches, step, validate, opt, epochs, out_dir, scheduler=sched, monitor="val_mse",
               mode="min", resume=resume, config=config, progress=progress, desc=f"U-Net {variant}",
               dist=dist)


def train_variant(
    banks: dict[str, Any],
    mask_spec,
    variant: str,
    seed: int,
    out_dir: str | Path,
    device: torch.device | str,
    model: str = "unet",
    chans: int = 16,
    pools: int = 3,
    epochs: int = 10,
    lr: float = 1e-3,
    optimizer: str = "adam",
    lr_step: int = 0,
    batch_size: int = 8,
    weight_rule: str = "linear",
    alpha: float = 4.0,
    threshold: float = 0.5,
    cam_method: str = "gradcam",
    boxes=None,
    heatmaps: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    dist=None,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Train one run of chapter 5's ablation and write its ``config.json`` beside the checkpoints.

    Seeds everything from ``seed``, builds the U-Net, makes the variant's loss weights for
    the ``banks["train"]`` and ``banks["val"]`` slices (:func:`mrlib.losses.variant_weights`
    from ``boxes`` or ``heatmaps``) and calls :func:`train_unet`. Notebook 05 and
    ``python -m mrlib train`` both train through here, so they resume each other's runs.

    Returns:
        ``(config, history)``; ``config`` is what ``config.json`` and ``RUN/unet/runs.json`` hold.
    """
    from .losses import variant_weights
    from .models import build_unet
    from .runtime import seed_everything

    def weights(bank):
        return variant_weights(
            variant, bank.files, bank.slice_nums, bank.crop, boxes_df=boxes, heatmaps_path=heatmaps,
            cam_method=cam_method, rule=weight_rule, alpha=alpha, threshold=threshold, seed=seed,
        )

    distributed = dist is not None and dist.world_size > 1
    seed_everything(seed)
    net = build_unet(model, chans, pools).to(device)
    config = {"variant": variant, "seed": seed, "model": model, "chans": chans, "pools": pools,
              "loss": "l1" if variant == "l1" else ("mse" if variant == "unweighted" else "weighted_mse"),
              "weight_rule": weight_rule, "alpha": alpha, "threshold": threshold, "cam_method": cam_method,
              "epochs": epochs, "lr": lr, "optimizer": optimizer, "lr_step": lr_step,
              "batch_size": batch_size, "mask": mask_spec.to_dict()}
    if distributed:  # a DDP run is another experiment: it must not resume a single-process one
        config["world_size"] = dist.world_size
    history = train_unet(
        net, banks["train"], banks["val"], mask_spec, variant, out_dir,
        train_weights=weights(banks["train"]), val_weights=weights(banks["val"]),
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, lr_step=lr_step, seed=seed,
        resume=resume, config={k: v for k, v in config.items() if k != "epochs"}, progress=progress,
        dist=dist if distributed else None,
    )
    if dist is None or dist.is_main:
        write_json(Path(out_dir) / "config.json", config)
    return config, history
