"""Training the reconstruction U-Net: one run of chapter 5's ablation, alone or under torchrun.

:func:`train_run` is what notebook 05 and ``python -m mrlib train`` both call, so they
resume and extend each other's runs: it resolves the run's loss variant
(:mod:`mrlib.variants`), trains it with :func:`train_unet` (one plain loop,
:func:`mrlib.train.fit`), writes its config beside the checkpoints and merges it into the
run registry (:meth:`mrlib.rundir.RunDir.register_run`). :func:`train_command` is the
``train`` command: it reads a run directory, loads the banks and joins torchrun's
process group.
"""

from __future__ import annotations

import itertools

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import UnetConfig
from .data.manifest import manifest_boxes
from .distributed import check_shardable, cleanup, init_distributed, shard_range, volume_batches
from .errors import ParameterError
from .masking import MaskSpec, file_seed
from .models import build_unet
from .recon import Bank, load_bank
from .rundir import CheckpointDir, RunDir
from .runtime import seed_everything
from .train import fit
from .variants import LossVariant, WeightContext, make_variant, weight_stats

OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}


#: Which checkpoint of a run chapter 6 evaluates (:attr:`mrlib.config.UnetConfig.checkpoint`).
CHECKPOINT_RULES = ("last", "best")


def train_unet(
    model: nn.Module,
    train_bank: Bank,
    val_bank: Bank,
    mask_spec: MaskSpec,
    variant: LossVariant,
    out_dir: str | Path | CheckpointDir,
    train_weights: torch.Tensor | None = None,
    val_weights: torch.Tensor | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 8,
    optimizer: str = "adam",
    lr_step: int = 0,
    steps_per_epoch: int = 0,
    precision: str = "auto",
    seed: int = 0,
    resume: bool = True,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    dist=None,
    shards: int | None = None,
    validate_every: int = 1,
) -> list[dict[str, float]]:
    """Train a reconstruction U-Net with one loss variant.

    Each training step draws a fresh mask per slice (accelerations mixed as in
    ``mask_spec``) from the seed ``(seed, epoch, step, i)``, so runs compare and a resumed
    run repeats an uninterrupted one; validation uses fastMRI's fixed per-file masks.
    The best checkpoint is the epoch with the lowest plain validation MSE (``val_mse``),
    the same yardstick for every variant; ``val_loss`` is the variant's own loss.

    Args:
        train_bank, val_bank: banks of each split (:class:`mrlib.recon.Bank`).
        variant: a :class:`mrlib.variants.LossVariant` instance (its :meth:`loss`).
        train_weights, val_weights: ``(N, H, W)`` weights per slice of each bank, or ``None``.
        optimizer: ``"adam"`` or ``"rmsprop"`` (fastMRI's U-Net baseline).
        lr_step: divide the learning rate by 10 every ``lr_step`` epochs (0: never).
        precision: the training steps' arithmetic (:func:`mrlib.train.fit`).
        validate_every: validate every k epochs and after the last (:func:`mrlib.train.fit`).
        steps_per_epoch: stop an epoch after this many steps (0: one pass over the training
            slices). Each epoch's shuffle is fresh, so a large training split is sampled
            anew every epoch at a cost fixed by this number, not by the split's size.
        dist: a :class:`mrlib.distributed.DistContext` (``torchrun``); ``batch_size`` is
            then per process, and each process trains on whole volumes of its shard.
        shards: the number of volume shards the batches are drawn from (default: the
            number of processes under ``dist``; ``None`` alone keeps the single-process
            slice shuffle). One process with ``shards=W`` trains on the combined batches
            that ``W`` processes would see, step for step: the reference the DDP test uses.
    """
    device = next(model.parameters()).device
    func = mask_spec.mask_func()
    if optimizer not in OPTIMIZERS:
        raise ParameterError("optimizer", f"unknown optimizer {optimizer!r}; use adam or rmsprop")
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, lr_step, 0.1) if lr_step > 0 else None
    distributed = dist is not None and dist.active
    if shards is None and distributed:
        shards = dist.world_size
    if distributed and shards != dist.world_size:
        raise ParameterError("shards", f"{shards} shards for {dist.world_size} processes")
    if shards is not None:
        check_shardable(train_bank.volumes, shards)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)

    if steps_per_epoch < 0:
        raise ParameterError("steps_per_epoch", f"must be 0 (a whole pass) or more, got {steps_per_epoch}")

    def batches(epoch: int):
        all_steps = all_batches(epoch)
        return itertools.islice(all_steps, steps_per_epoch) if steps_per_epoch else all_steps

    def all_batches(epoch: int):
        if shards is not None:
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
        return variant.loss(pred, target, w), torch.mean((pred - target) ** 2)

    def step(m: nn.Module, batch) -> torch.Tensor:
        idx, seeds = batch
        return run_batch(m, train_bank, idx, seeds, train_weights)[0]

    def validate(m: nn.Module) -> dict[str, float]:
        loss = mse = 0.0
        part = range(len(val_bank))
        if distributed:  # each rank validates a contiguous share; the sums are added up
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
               mode="min", resume=resume, config=config, progress=progress, desc=f"U-Net {variant.key}",
               dist=dist, precision=precision, validate_every=validate_every)


def run_config(cfg: UnetConfig, variant: LossVariant, mask_spec: MaskSpec) -> dict[str, Any]:
    """What a run records (its ``config`` file and registry entry): the config's fields that
    define the computation, the variant's key, loss and parameter values, and the masks."""
    return {**cfg.identity(), **variant.values, "variant": variant.key, "loss": variant.loss_name,
            "mask": mask_spec.to_dict()}


def train_run(
    banks: dict[str, Bank],
    mask_spec: MaskSpec,
    cfg: UnetConfig,
    out: RunDir | CheckpointDir,
    context: WeightContext = WeightContext(),
    resume: bool = True,
    progress: bool = True,
    dist=None,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Train one run of chapter 5's ablation: what notebook 05 and ``mrlib train`` call.

    Seeds everything from ``cfg.seed``, builds the U-Net, makes the variant's loss weights
    for the ``banks["train"]`` and ``banks["selection"]`` slices and trains with
    :func:`train_unet`. With a :class:`RunDir`, the run goes to its checkpoint directory
    (named by the variant's key and the seed) and is merged into the run registry, so a
    notebook and a command resume and extend each other's runs; with a
    :class:`CheckpointDir` it goes there and no registry is kept.

    Returns:
        ``(config, history)``; ``config`` is what the run's config file and the registry hold.
    """
    variant = make_variant(cfg.variant, cfg.identity())
    if cfg.checkpoint not in CHECKPOINT_RULES:
        raise ParameterError("checkpoint", f"must be one of {', '.join(CHECKPOINT_RULES)}, got {cfg.checkpoint!r}")
    ckpts = out.unet_run(variant.key, cfg.seed) if isinstance(out, RunDir) else out
    distributed = dist is not None and dist.world_size > 1
    main = dist is None or dist.is_main
    seed_everything(cfg.seed)
    device = next(iter(banks.values())).device
    net = build_unet(cfg.model, cfg.chans, cfg.pools).to(device)
    config = run_config(cfg, variant, mask_spec)
    if distributed:  # a DDP run is another experiment: it must not resume a single-process one
        config["world_size"] = dist.world_size
    context = WeightContext(context.boxes, context.heatmaps, cfg.seed)
    fitted = variant.prepare(banks["train"], context)
    train_weights = variant.weights(banks["train"], context)
    history = train_unet(
        net, banks["train"], banks["selection"], mask_spec, variant, ckpts,
        train_weights=train_weights,
        val_weights=variant.weights(banks["selection"], context),
        epochs=cfg.unet_epochs, lr=cfg.unet_lr, batch_size=cfg.unet_batch_size, optimizer=cfg.optimizer,
        lr_step=cfg.lr_step, steps_per_epoch=cfg.unet_steps_per_epoch, precision=cfg.precision, seed=cfg.seed,
        validate_every=cfg.unet_val_every,
        resume=resume,
        config={k: v for k, v in config.items() if k not in ("unet_epochs", "checkpoint")}, progress=progress,
        dist=dist if distributed else None,
    )
    # what the weights did on the training bank's lesion slices: the strength as a weight share
    config = {**config, **fitted, **weight_stats(train_weights, banks["train"], context)}
    if main:
        ckpts.write_config(config)
        if isinstance(out, RunDir):
            out.register_run(config)
    return config, history


def weight_context(rd: RunDir, manifest: dict[str, Any]) -> WeightContext:
    """The boxes and heatmaps of a run directory, for the variants' weights."""
    heatmaps = {}
    for source in rd.classifier_sources():
        seeds = [m["seed"] for m in rd.read_classifier_metrics(source).get("seeds", [])]
        files = [rd.heatmaps(source, seed) for seed in seeds]
        if files and all(f.is_file() for f in files):
            heatmaps[source] = files
    return WeightContext(boxes=manifest_boxes(manifest), heatmaps=heatmaps)


# --------------------------------------------------------------------------- the `train` command

def train_command(
    cfg: UnetConfig,
    run_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
) -> dict:
    """Train one U-Net run as notebook 05 does, alone or as one rank under ``torchrun``.

    Reads what chapters 1, 2 and 4 wrote in ``run_dir`` (manifest, masking spec, heatmaps)
    and trains into it exactly as the notebook does (``python -m mrlib train --data``
    first writes the manifest and masking spec of a new run directory).

    Returns the run's config (with ``history`` and where it was written).
    """
    make_variant(cfg.variant, cfg.identity())  # an unknown variant fails before any work
    rd = RunDir(run_dir)
    manifest = rd.read_manifest()
    spec = rd.read_mask_spec()
    splits = {role: rd.split_paths(role, manifest) for role in ("train", "selection")}
    context = weight_context(rd, manifest)

    # before joining the process group: every rank fails here alike, no rank waits for another
    check_shardable({Path(f).stem: [i] for i, f in enumerate(splits["train"])}, int(os.environ.get("WORLD_SIZE", "1")))
    ctx = init_distributed(cfg.device)
    try:
        banks = {s: load_bank(p, ctx.device, cfg.storage, verbose=ctx.is_main) for s, p in splits.items()}
        check_shardable(banks["train"].volumes, ctx.world_size)
        config, history = train_run(banks, spec, cfg, rd, context, resume=resume, progress=progress, dist=ctx)
        ctx.barrier()
        return {**config, "history": history, "out_dir": str(rd.unet_run(config["variant"], cfg.seed).path),
                "world_size": ctx.world_size, "device": str(ctx.device), "storage": banks["train"].storage_note,
                "is_main": ctx.is_main}
    finally:
        cleanup()
