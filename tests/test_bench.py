"""The streaming data path equals fastMRI's UnetDataTransform; the benchmark's pieces run at tiny sizes."""

import json

import h5py
import numpy as np
import pytest
import torch
from fastmri.data.transforms import UnetDataTransform

from mrlib import bench, pipeline
from mrlib.__main__ import main
from mrlib.data import fastmri_h5, synth
from mrlib.errors import DataError, ParameterError
from mrlib.masking import MaskSpec, file_seed
from mrlib.recon import SliceBank, StreamingBank, load_bank, plan_storage, read_slices, split_nbytes
from mrlib.rundir import RunDir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = synth.SynthConfig(image_size=32, n_slices=3, n_train=2, n_val=0, n_test=0,
                            kneemri_exams=0, kneemri_slices=2, kneemri_size=32)
    synth.generate(root, cfg, seed=7, progress=False)
    return root


def test_streaming_path_equals_unet_data_transform(data):
    split = data / "fastmri" / "singlecoil_train"
    spec = MaskSpec("random", (4, 8), (0.08, 0.04))
    ds = fastmri_h5.slice_dataset(split, transform=UnetDataTransform("singlecoil", spec.mask_func(), use_seed=True))
    stream = StreamingBank(fastmri_h5.list_volumes(split), cache_bytes=1)  # no cache: every batch reads
    assert len(stream) == len(ds) == 6
    order = [4, 0, 5, 2, 1, 3]  # random access across both files
    got = stream.batch(order, spec.mask_func(), [file_seed(f"{stream.files[i]}.h5") for i in order])
    for pos, i in enumerate(order):
        ref = next(ds[k] for k in range(len(ds))
                   if (ds[k].fname.removesuffix(".h5"), ds[k].slice_num) == (stream.files[i], stream.slice_nums[i]))
        torch.testing.assert_close(got.image[pos], ref.image, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.target[pos], ref.target, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.mean[pos], ref.mean, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(got.std[pos], ref.std, rtol=1e-5, atol=1e-9)


def test_streaming_batches_equal_bank_batches_and_read_each_slice_once(data):
    files = fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_train")
    bank, stream = SliceBank(files, pin_memory=True), StreamingBank(files)
    func = MaskSpec().mask_func()
    order = list(range(len(bank)))
    seeds = [(0, 0, i // 4, i % 4) for i in order]
    batches = list(stream.iter_batches(order, 4, func, seeds))
    assert [b.image.shape[0] for b in batches] == [4, 2]
    for k, b in enumerate(batches):
        ref = bank.batch(order[4 * k: 4 * k + 4], func, seeds[4 * k: 4 * k + 4])
        for field in ("image", "target", "mean", "std", "slice_num"):
            torch.testing.assert_close(getattr(b, field), getattr(ref, field), msg=field)
        assert b.fname == ref.fname  # each slice's file stem, as fastMRI's samples carry it
        assert list(b.fname) == [bank.files[i] for i in order[4 * k: 4 * k + 4]]
        assert b.slice_num.tolist() == [int(bank.slice_nums[i]) for i in order[4 * k: 4 * k + 4]]
    assert stream.reads == len(bank)  # chunk-aligned slabs, each slice read once
    torch.testing.assert_close(stream.kspace_of([5, 1]), bank.kspace_of([5, 1]))
    assert stream.max_value == bank.max_value and stream.volumes == bank.volumes


def test_split_too_large_for_memory_falls_back_to_streaming(data, capsys):
    files = fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_train")
    nbytes = split_nbytes(files)
    assert nbytes == 6 * (64 * 36 * 8 + 32 * 32 * 4)
    bank = load_bank(files, "cpu", budget_bytes=nbytes // 2)
    assert isinstance(bank, StreamingBank) and bank.storage == "stream"
    assert "does not fit" in capsys.readouterr().err
    assert isinstance(load_bank(files, "cpu"), SliceBank)
    where, why = plan_storage(10 << 30, "cpu", "device", budget_bytes=1 << 30)
    assert where == "stream" and "streaming" in why
    with pytest.raises(ParameterError, match="unknown storage"):
        plan_storage(1, "cpu", "gpu-ish")


def test_nan_in_kspace_names_file_and_slice(data, tmp_path):
    src = fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_train")[0]
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes())
    with h5py.File(bad, "r+") as hf:
        ks = hf["kspace"][()]
        ks[2, 5, 5] = np.nan
        hf["kspace"][...] = ks
    out = torch.view_as_complex(torch.empty(3, 64, 36, 2))
    with pytest.raises(DataError, match="slice 2 holds NaN"):
        read_slices(bad, range(3), out)
    with pytest.raises(DataError, match=bad.name):
        SliceBank([bad])


def test_bench_runs_at_tiny_size_and_writes_json(data, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--image-size", "32", "--volumes", "2", "--slices", "3", "--batch-size", "2",
               "--workers", "0", "--epochs", "1", "--steps", "1", "--device", "cpu", "--data", str(data),
               "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "data path" in printed and "inference" in printed and "not measured here" in printed
    r = json.loads(out.read_text())
    assert r["device_type"] == "cpu" and r["geometry"]["kspace"] == [3, 64, 36]
    d = r["data"]
    assert d["reference"]["pairs"] == d["ours"]["pairs"] == d["ours_streaming"]["pairs"] == 6
    assert d["ratio"] > 0 and d["ours_streaming"]["slices_read"] == 6
    t = r["train"]
    assert t["reference"]["steps"] == t["ours"]["steps"] == 1 and t["gflops_per_slice_fwd_bwd"] > 0
    assert t["ours"]["share_of_peak"] is None  # no peak on a CPU
    for m in ("SeedUnet", "fastmri_unet"):  # both paths give the same reconstruction
        assert r["inference"][m]["max_abs_diff"] < 1e-4 * max(1.0, r["inference"][m]["gflops_per_slice"])
        assert r["inference"][m]["ours_s"] > 0
    # the book's speed chapter renders this file: the printed tables, with the settings and the date
    page = bench.speed_page([("bench.json", r)])
    assert bench.format_table(r) in page and r["device"] in page and r["measured"] in page


def test_every_committed_benchmark_file_renders_into_the_speed_chapter(tmp_path):
    committed = sorted((pipeline.project_root() / pipeline.BENCH_RESULTS).glob("*.json"))
    assert committed, "the speed chapter has no benchmark file to render"
    rd = RunDir(tmp_path)
    page = pipeline.write_speed_page(rd).read_text()
    for path in committed:
        r = json.loads(path.read_text())
        assert f"`{path.name}`" in page and bench.format_table(r) in page
    assert "No benchmark results" in bench.speed_page([])


def test_bench_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["bench", "--device", "cuda:7", "--data", str(tmp_path / "d")]) == 2
    assert "error: device:" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # nothing generated before the device check
    assert main(["bench", "--image-size", "40"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    with pytest.raises(ParameterError, match="unknown sections"):
        bench.BenchConfig(sections=("data", "speed"))


def test_flop_count_and_peaks():
    model = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
    assert bench.count_flops(model, torch.zeros(1, 1, 8, 8), backward=False) == 2 * 2 * 9 * 64
    assert bench.peak_flops(torch.device("cpu")) is None


@pytest.mark.parametrize("sparse", [True, False])  # False is the GPU's variant, checked here on the CPU
@pytest.mark.parametrize("shape,crop", [((3, 64, 36), (32, 32)), ((2, 40, 30), (32, 32)), ((2, 33, 36), (16, 16))])
def test_masked_transform_equals_unet_inputs(shape, crop, sparse):
    from mrlib.masking import apply_masks, make_masks
    from mrlib.recon import masked_unet_inputs, unet_inputs

    g = torch.Generator().manual_seed(0)
    kspace = torch.randn(*shape, 2, generator=g)
    target = torch.rand(shape[0], *crop, generator=g)
    masks = make_masks(MaskSpec().mask_func(), kspace.shape, [(1, i) for i in range(shape[0])])
    want = unet_inputs(apply_masks(kspace, masks), crop, target)
    got = masked_unet_inputs(kspace, masks, crop, target, sparse=sparse)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
