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
* automatic mixed precision (bf16) on CUDA; progress bars with ``tqdm.auto``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .artifacts import atomic_path, write_json
from .errors import MrlibError

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
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(config or {})
    sign = 1.0 if mode == "min" else -1.0
    history: list[dict[str, float]] = []
    best = math.inf
    start = 0
    last = out_dir / "last.pt"
    if resume and last.is_file():
        ckpt = load_checkpoint(last)
        if ckpt.get("config", {}) != config:
            raise MrlibError(last, "was written with other parameters; use another run directory or remove it")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        history, best, start = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
    device = next(model.parameters()).device
    amp = device.type == "cuda"
    for epoch in range(start, epochs):
        model.train()
        total, n = 0.0, 0
        bar = tqdm(batches(epoch), desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False, disable=not progress)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = train_step(model, batch)
            if not torch.isfinite(loss):
                raise MrlibError(desc, f"the training loss became {loss.item()} in epoch {epoch + 1}")
            loss.backward()
            optimizer.step()
            total += loss.item()
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
        if value < best:
            best = value
            save_checkpoint(out_dir / "best.pt", state)
        save_checkpoint(last, state)
        write_json(out_dir / "history.json", history)
        if progress:
            tqdm.write(f"[{desc}] epoch {epoch + 1}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
    return history
