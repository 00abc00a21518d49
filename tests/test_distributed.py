"""DDP on 2 CPU processes (gloo) equals one process on the combined batch, for the plain and
the ROI-weighted loss; whole volumes per rank."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mrlib.data import fastmri_h5
from mrlib.distributed import DistContext, check_shardable, shard_range, shard_volumes, volume_batches
from mrlib.errors import ParameterError
from mrlib.masking import MaskSpec
from mrlib.models import build_unet
from mrlib.recon import SliceBank
from mrlib.rundir import CheckpointDir, RunDir
from mrlib.train import load_checkpoint
from mrlib.unet import train_unet
from mrlib.variants import LossVariant, Unweighted

SPEC = MaskSpec("random", (4,), (0.08,))


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def _banks(data):
    base = data / "fastmri"
    return (SliceBank(fastmri_h5.list_volumes(base / "singlecoil_train")),
            SliceBank(fastmri_h5.list_volumes(base / "singlecoil_val")))


class Stripes(LossVariant):
    """Unregistered test variant: weight 10 on one band of rows that moves with the slice's
    index, 1 elsewhere, so every image of a batch has a different weight sum."""

    def weights(self, bank, context):
        w = torch.ones(bank.target.shape)
        for i in range(len(bank)):
            top = (5 * i) % (w.shape[1] - 6)
            w[i, top:top + 1 + i % 6] = 10.0
        return w


def _train(data, out, epochs, dist=None, shards=None, resume=True, variant=None):
    torch.manual_seed(0)
    model = build_unet("unet", chans=4, num_pool_layers=2)
    train, val = _banks(data)
    variant = variant or Unweighted()
    weights = {k: variant.weights(bank, None) for k, bank in (("train_weights", train), ("val_weights", val))}
    return train_unet(model, train, val, SPEC, variant, out, epochs=epochs, batch_size=2, **weights,
                      seed=1, resume=resume, config={"test": 1}, progress=False, dist=dist, shards=shards)


def _worker(rank, world, port, data, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from mrlib.distributed import cleanup, init_distributed

    ctx = init_distributed("cpu", timeout_s=60)
    try:
        assert ctx.world_size == world and ctx.rank == rank and ctx.active
        _train(data, out / "straight", 2, dist=ctx)
        _train(data, out / "resumed", 1, dist=ctx)   # killed after one epoch ...
        _train(data, out / "resumed", 2, dist=ctx)   # ... and continued
        _train(data, out / "weighted", 2, dist=ctx, variant=Stripes())
    finally:
        cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_on_combined_batch(data, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), data, tmp_path), nprocs=2, join=True)
    refs = {"single": _train(data, tmp_path / "single", 2, shards=2),
            "single weighted": _train(data, tmp_path / "single weighted", 2, shards=2, variant=Stripes())}
    # the weighted loss normalises per image, then takes the batch mean: exact under DDP too
    assert refs["single weighted"][-1]["train_loss"] != pytest.approx(refs["single"][-1]["train_loss"], rel=1e-3)
    for run, single_dir in (("straight", "single"), ("resumed", "single"), ("weighted", "single weighted")):
        ckpt = load_checkpoint(CheckpointDir(tmp_path / run).last)
        hist = ckpt["history"]
        assert [h["epoch"] for h in hist] == [1, 2]
        for got, want in zip(hist, refs[single_dir]):
            for key in ("train_loss", "val_loss", "val_mse"):
                assert got[key] == pytest.approx(want[key], rel=1e-4), (run, key)
        single = load_checkpoint(CheckpointDir(tmp_path / single_dir).last)["model"]
        for name, w in single.items():
            torch.testing.assert_close(ckpt["model"][name], w, rtol=1e-4, atol=1e-5)
    # rank 0 alone wrote: one set of files, no stray temporaries
    assert sorted(p.name for p in (tmp_path / "straight").iterdir()) == sorted(
        [CheckpointDir.BEST, CheckpointDir.HISTORY, CheckpointDir.LAST])


def test_volume_batches_shard_whole_volumes_with_equal_steps():
    volumes = {"a": [0, 1, 2], "b": [3, 4, 5, 6, 7], "c": [8, 9], "d": [10, 11, 12]}
    shards = shard_volumes(volumes, 2, seed=0, epoch=0)
    owner = {i: r for r, s in enumerate(shards) for i in s}
    for idx in volumes.values():  # each volume on exactly one rank
        assert len({owner[i] for i in idx}) == 1
    assert sorted(i for s in shards for i in s) == list(range(13))
    steps = volume_batches(volumes, 2, 2, seed=0, epoch=0)
    for per_rank in steps:
        assert [len(idx) for idx, _ in per_rank] == [2, 2]
        for r, (idx, seeds) in enumerate(per_rank):
            assert all(owner[i] == r for i in idx)
            assert [s[3] for s in seeds] == [2 * r, 2 * r + 1]
    # every slice is seen in an epoch; another epoch deals differently but deterministically
    assert {i for p in steps for idx, _ in p for i in idx} == set(range(13))
    assert volume_batches(volumes, 2, 2, 0, 1) == volume_batches(volumes, 2, 2, 0, 1)
    for epoch in (1, 2, 3):
        assert volume_batches(volumes, 2, 2, 0, epoch) != steps, epoch
        assert {i for p in volume_batches(volumes, 2, 2, 0, epoch) for idx, _ in p for i in idx} == set(range(13))
    assert volume_batches(volumes, 2, 2, 1, 0) != steps  # and another seed too
    assert [len(r) for r in shard_range_all(10, 3)] == [4, 4, 2]


def shard_range_all(n, w):
    return [shard_range(n, r, w) for r in range(w)]


def test_more_processes_than_volumes_is_a_clear_error(data, tmp_path):
    with pytest.raises(ParameterError, match="only 3 training volume"):
        check_shardable({"a": [0], "b": [1], "c": [2]}, 4)
    with pytest.raises(ParameterError, match="nproc_per_node=3"):
        _train(data, tmp_path / "x", 1, shards=4)
    assert not (tmp_path / "x").exists()  # nothing written


def test_single_process_context_is_inert():
    ctx = DistContext()
    assert ctx.is_main and not ctx.active and ctx.all_sum([1.0, 2.0]) == [1.0, 2.0]
    ctx.barrier()


def test_train_command_on_a_data_dir_and_resume(data, tmp_path, capsys):
    from mrlib.__main__ import main

    run = RunDir(tmp_path / "run")
    args = ["train", "--run-dir", str(run.root), "--data", str(data), "--chans", "4", "--pools", "2",
            "--unet-batch-size", "3", "--device", "cpu", "--quiet", "--accelerations", "4",
            "--center-fractions", "0.08"]
    assert main(args + ["--unet-epochs", "1"]) == 0
    assert "trained unweighted (seed 0) on 1 process(es)" in capsys.readouterr().out
    # with --data the run directory got what chapters 1 and 2 would have written
    assert run.read_manifest()["data_dir"] == str(data.resolve())
    assert run.read_mask_spec() == MaskSpec("random", (4,), (0.08,))
    assert main(args + ["--unet-epochs", "2"]) == 0  # continues from the last checkpoint
    ckpts = run.unet_run("unweighted", 0)
    hist = load_checkpoint(ckpts.last)["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert [r["variant"] for r in run.read_registry()] == ["unweighted"]  # registered once, not twice
    assert run.read_registry()[0]["chans"] == 4
    g = tmp_path / "g"
    assert main(["train", "--run-dir", str(g), "--data", str(data), "--variant", "gradcam", "--device", "cpu",
                 "--quiet"]) == 2
    assert "no chapter-4 heatmaps" in capsys.readouterr().err
    assert not RunDir(g).registry.exists()


def test_steps_per_epoch_caps_an_epoch_and_bf16_is_asked_for(data, tmp_path):
    from mrlib.runtime import use_bf16

    train, val = _banks(data)
    calls = []
    batch = train.batch
    train.batch = lambda *a, **k: calls.append(1) or batch(*a, **k)
    torch.manual_seed(0)
    model = build_unet("unet", chans=4, num_pool_layers=2)
    history = train_unet(model, train, val, SPEC, Unweighted(), tmp_path / "capped", epochs=2, batch_size=2,
                         steps_per_epoch=2, precision="bf16", progress=False)
    assert len(calls) == 4 and len(history) == 2 and len(train) > 4  # 2 steps of 2 slices per epoch, not a pass
    with pytest.raises(ParameterError, match="steps_per_epoch"):
        train_unet(model, train, val, SPEC, Unweighted(), tmp_path / "bad", epochs=1, steps_per_epoch=-1,
                   progress=False)
    assert not use_bf16("auto", torch.device("cpu")) and use_bf16("auto", torch.device("cuda"))
    assert use_bf16("bf16", torch.device("cpu")) and not use_bf16("fp32", torch.device("cuda"))
    with pytest.raises(ParameterError, match="precision"):
        use_bf16("fp16", torch.device("cpu"))
