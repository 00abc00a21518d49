"""One plain PyTorch training loop, for MRNet and the U-Nets alike.

No Lightning: fastMRI's Lightning modules do not run on Lightning 2, and a loop this size
is easier to read than a framework. What it does:

* one epoch = one pass of ``train_step`` over the batches ``batches(epoch)`` yields; the
  caller makes that order a function of ``(seed, epoch)`` so a resumed run sees the same
  batches as an uninterrupted one without saving random-number state;
* after each epoch, ``validate(model)`` returns a dict of numbers, the scheduler steps
  (``ReduceLROnPlateau`` on the monitored value), and a checkpoint is written atomically:
  the last checkpoint always, the best one when the monitored value improves, and the
  history beside them (a :class:`mrlib.rundir.CheckpointDir` names the files);
* ``resume=True`` continues from the last checkpoint; checkpoints load with
  ``weights_only=True``;
* automatic mixed precision (bf16) on CUDA; progress bars with ``tqdm.auto``;
* with a :class:`mrlib.distributed.DistContext` of several processes (``torchrun``), the
  model is wrapped in ``DistributedDataParallel``, the logged loss is averaged over ranks,
  rank 0 alone writes checkpoints and logs, and on resume rank 0 reads the last checkpoint and
  broadcasts it (see :mod:`mrlib.distributed`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .artifacts import atomic_path
from .errors import MrlibError, ParameterError
from .rundir import CheckpointDir
from .runtime import Heartbeat, plain_console, progress_bar, use_bf16

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
    out_dir: str | Path | CheckpointDir,
    scheduler: Any = None,
    monitor: str = "val_loss",
    mode: str = "min",
    resume: bool = True,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "train",
    dist=None,
    precision: str = "auto",
    validate_every: int = 1,
) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` epochs; return the history (one dict per epoch).

    Args:
        batches: ``epoch -> iterable of batches`` (deterministic in the epoch).
        train_step: ``(model, batch) -> scalar loss``; the loop does backward and step.
        validate: ``model -> {"val_loss": ..., ...}``, run under ``torch.no_grad``.
        out_dir: the model's :class:`~mrlib.rundir.CheckpointDir` (or its path): where the
            last and best checkpoints and the history go.
        monitor, mode: the validation value that picks the best checkpoint and drives
            ``ReduceLROnPlateau``; ``mode`` is ``"min"`` or ``"max"``.
        resume: continue from the last checkpoint if it exists. Its ``config`` must equal
            ``config``, so a run with other parameters is not silently continued.
        config: recorded in each checkpoint and checked on resume.
        dist: a :class:`mrlib.distributed.DistContext`; with more than one process,
            ``train_step`` receives the DDP-wrapped model, ``validate`` the plain one (it
            runs on every rank and must return the same numbers there: shard it and sum
            with ``dist.all_sum``), and only rank 0 writes.
        precision: the arithmetic of the training steps and of validation
            (:func:`mrlib.runtime.use_bf16`): ``auto`` (bf16 autocast on CUDA, fp32
            elsewhere), ``bf16`` or ``fp32``. The weights and the optimizer stay fp32;
            evaluation after training is the caller's, in fp32.
        validate_every: validate after every k-th epoch and after the last; the other
            epochs' records hold no validation values, and the best checkpoint is the best
            of the validated epochs (``ReduceLROnPlateau`` needs every epoch: 1).
    """
    if isinstance(validate_every, bool) or not isinstance(validate_every, int) or validate_every < 1:
        raise ParameterError("validate_every", f"must be a positive integer, got {validate_every!r}")
    if validate_every > 1 and isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ParameterError("validate_every", "ReduceLROnPlateau steps on every epoch's validation: use 1")
    ckpts = out_dir if isinstance(out_dir, CheckpointDir) else CheckpointDir(out_dir)
    distributed = dist is not None and dist.active
    main = dist is None or dist.is_main
    progress = progress and main
    if main:
        ckpts.path.mkdir(parents=True, exist_ok=True)
    config = dict(config or {})
    sign = 1.0 if mode == "min" else -1.0
    history: list[dict[str, float]] = []
    best = math.inf
    start = 0
    last = ckpts.last
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
    amp = use_bf16(precision, device)
    net = model
    if distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # in a log or a headless kernel: plain lines, at most one per 10 s; in a terminal: bars
    heartbeat = Heartbeat(desc, epochs, start=start) if main and plain_console() else None
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
        record = {"epoch": epoch + 1, "train_loss": total / max(n, 1)}
        if (epoch + 1) % validate_every == 0 or epoch + 1 == epochs:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                record.update(validate(model))
        record["lr"] = optimizer.param_groups[0]["lr"]
        history.append(record)
        value = sign * record[monitor] if monitor in record else math.inf
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
                save_checkpoint(ckpts.best, state)
            save_checkpoint(last, state)
            ckpts.write_history(history)
        best = min(best, value)
        if dist is not None:
            dist.barrier()
        if heartbeat is not None:
            heartbeat.update(epoch + 1, **{k: v for k, v in record.items() if k in ("train_loss", "val_loss", "val_mse", "val_auc")})
        elif progress:
            tqdm.write(f"[{desc}] epoch {epoch + 1}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
    return history


def _resume_state(last: Path, dist) -> dict[str, Any] | None:
    """The last checkpoint if it exists; under DDP rank 0 reads it and broadcasts it (or its error)."""
    if dist is None or not dist.active:
        return load_checkpoint(last) if last.is_file() else None
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
