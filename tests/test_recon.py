"""The batched U-Net data path equals fastMRI's UnetDataTransform, and reconstruction runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import fastmri
import numpy as np
import pytest
import torch
from fastmri.data import transforms as T
from fastmri.data.transforms import UnetDataTransform

from mrlib.data import fastmri_h5, synth
from mrlib.data.fastmri_h5 import read_volume
from mrlib.masking import MaskSpec, file_seed
from mrlib.models import SeedUnet
from mrlib.masking import make_masks
from mrlib.recon import SliceBank, StreamingBank, masked_unet_inputs, reconstruct, zero_filled_volume


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = synth.SynthConfig(image_size=64, n_slices=3, n_train=2, n_val=1, n_test=1,
                            kneemri_exams=4, kneemri_slices=4, kneemri_size=64)
    synth.generate(root, cfg, seed=3, progress=False)
    return root


def test_batched_path_equals_unet_data_transform(data):
    split = data / "fastmri" / "singlecoil_train"
    spec = MaskSpec("random", (4,), (0.08,))
    ds = fastmri_h5.slice_dataset(split, transform=UnetDataTransform("singlecoil", spec.mask_func(), use_seed=True))
    bank = SliceBank(fastmri_h5.list_volumes(split))
    assert len(bank) == len(ds) == 6
    seeds = [file_seed(f"{f}.h5") for f in bank.files]
    got = bank.batch(range(len(bank)), spec.mask_func(), seeds)
    for i in range(len(ds)):
        ref = ds[i]
        j = [k for k in range(len(bank)) if (bank.files[k], bank.slice_nums[k]) == (ref.fname.removesuffix(".h5"), ref.slice_num)][0]
        torch.testing.assert_close(got.image[j], ref.image, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.target[j], ref.target, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.mean[j], ref.mean, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(got.std[j], ref.std, rtol=1e-5, atol=1e-9)


class _Scale(torch.nn.Module):
    """``x * w``: with ``w = 1`` the identity, with ``w = 0`` a network that outputs zeros."""

    def __init__(self, w: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((), float(w)))

    def forward(self, x):
        return x * self.w


def _fastmri_zero_filled(path, func) -> np.ndarray:
    """The reference: fastMRI's masking (the fixed per-file seed), inverse FFT, crop and magnitude, per slice."""
    kspace, target, _ = read_volume(path)
    return np.stack([
        fastmri.complex_abs(T.complex_center_crop(
            fastmri.ifft2c(T.apply_mask(T.to_tensor(kspace[s]), func, seed=file_seed(path.name))[0]),
            target.shape[-2:])).numpy()
        for s in range(kspace.shape[0])
    ])


def test_zero_filled_volume_is_fastmris_masked_inverse_fft(data):
    path = fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_test")[0]
    bank = SliceBank([path])
    func = MaskSpec().mask_func(4)
    zf = zero_filled_volume(bank, path.stem, func)
    want = _fastmri_zero_filled(path, func)
    np.testing.assert_allclose(zf, want, rtol=1e-5, atol=1e-6 * float(want.max()))
    # the fixed per-file mask: the same baseline twice
    np.testing.assert_array_equal(zf, zero_filled_volume(bank, path.stem, func))


def test_reconstruct_returns_target_units_and_time(data):
    path = fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_test")[0]
    bank = SliceBank([path])
    stem = path.stem
    func = MaskSpec().mask_func(4)
    zf = _fastmri_zero_filled(path, func)
    assert zf.max() > 0
    # an identity network gives back its input, un-normalised: the zero-filled image
    recon, seconds = reconstruct(_Scale(1.0), bank, stem, func, batch_size=2)
    assert recon.shape == tuple(bank.target[bank.volumes[stem]].shape) == zf.shape and seconds > 0
    np.testing.assert_allclose(recon, zf, rtol=1e-5, atol=1e-6 * float(zf.max()))
    # a network that outputs zeros gives each slice's mean (what un-normalising adds back)
    zeros, _ = reconstruct(_Scale(0.0), bank, stem, func, batch_size=2)
    np.testing.assert_allclose(zeros, np.broadcast_to(zf.mean(axis=(1, 2), keepdims=True), zf.shape),
                               rtol=1e-4, atol=1e-6 * float(zf.max()))
    # and a real network runs on the same volume
    torch.manual_seed(0)
    net = SeedUnet()
    out, _ = reconstruct(net, bank, stem, func, batch_size=2)
    assert out.shape == zf.shape and np.isfinite(out).all()
    # a U-Net trained under bf16 autocast infers under it: float32 out, close to fp32, not equal
    low, _ = reconstruct(net, bank, stem, func, batch_size=2, precision="bf16")
    assert low.dtype == np.float32 and not np.array_equal(low, out)
    assert np.abs(low - out).max() < 0.05 * (np.abs(out).max() + 1e-12)
    np.testing.assert_allclose(zero_filled_volume(bank, stem, func), zf, rtol=1e-5, atol=1e-6 * float(zf.max()))


def test_a_bank_on_unindexed_cuda_knows_its_tensors_are_on_the_device(data, monkeypatch):
    # A bank built for "cuda" holds tensors that report "cuda:0"; compared with the bare
    # "cuda" they looked like host tensors and were pinned, which CUDA refuses (found by
    # the first benchmark on an H100). The bank keeps the indexed form of its device.
    from mrlib.runtime import canonical_device
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert canonical_device("cuda") == torch.device("cuda:0") == canonical_device("cuda:0")
    assert canonical_device("cuda:1") == torch.device("cuda:1")
    assert canonical_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)  # no CUDA on this machine
    bank = SliceBank(fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_train"), device="cuda")
    assert bank.device == torch.device("cuda:0")


_BLAS_PROBE = """
import json, os, numpy
from threadpoolctl import threadpool_info, threadpool_limits
if not {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"} & set(os.environ):
    threadpool_limits(2, user_api="blas")  # numpy's, as on a machine with two or more cores
import mrlib.runtime  # loads scipy's OpenBLAS too
print(json.dumps({d["filepath"]: d["num_threads"] for d in threadpool_info()
                  if d["internal_api"] == "openblas" and not mrlib.runtime._inside_torch(d["filepath"])}))
"""


@pytest.mark.parametrize("env, threads", [({}, 1), ({"OPENBLAS_NUM_THREADS": "2"}, 2), ({"OMP_NUM_THREADS": "2"}, 2)])
def test_importing_mrlib_gives_numpys_openblas_one_thread_unless_the_user_chose(env, threads):
    # numpy's OpenBLAS threads spin after each call on the cores torch's OpenMP threads
    # need next; mrlib limits them to one, unless the environment says otherwise (which
    # OpenBLAS caps at the machine's cores).
    threads = min(threads, os.cpu_count() or 1)
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _BLAS_PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    if not any("numpy" in path for path in found):
        pytest.skip(f"numpy has no OpenBLAS of its own here: {sorted(found)}")
    assert any("scipy" in path for path in found), found  # mrlib's import loaded scipy's
    assert set(found.values()) == {threads}, found


def test_only_torchs_own_libraries_count_as_torchs(tmp_path):
    from mrlib.runtime import _inside_torch

    packages = Path(torch.__file__).resolve().parent.parent
    assert _inside_torch(str(packages / "torch" / "lib" / "libopenblas.so"))
    assert _inside_torch(str(packages / "torch.libs" / "libopenblasp-r0.so"))
    for other in ("numpy.libs/libscipy_openblas64_.so", "torchvision.libs/libopenblas.so", "scipy.libs/x.so"):
        assert not _inside_torch(str(packages / other)), other
    assert not _inside_torch(str(tmp_path / "torch" / "libopenblas.so"))  # a "torch" folder elsewhere


@pytest.fixture(scope="module")
def multicoil(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_mc")
    cfg = synth.SynthConfig(image_size=64, n_slices=3, n_train=2, n_val=1, n_test=1, n_coils=4,
                            kneemri_exams=4, kneemri_slices=4, kneemri_size=64)
    synth.generate(root, cfg, seed=3, multicoil=True, progress=False)
    return root


@pytest.mark.parametrize("sparse", [True, False])
def test_multicoil_batches_are_fastmris_multicoil_unet_transform(multicoil, sparse):
    # The U-Net input of multi-coil data is the root-sum-of-squares of the zero-filled coil
    # images (fastMRI's multi-coil U-Net baseline); one mask is shared by the coils.
    split = multicoil / "fastmri" / "multicoil_train"
    spec = MaskSpec("random", (4,), (0.08,))
    ds = fastmri_h5.slice_dataset(split, challenge="multicoil",
                                  transform=UnetDataTransform("multicoil", spec.mask_func(), use_seed=True))
    for bank in (SliceBank(fastmri_h5.list_volumes(split)), StreamingBank(fastmri_h5.list_volumes(split))):
        assert len(bank) == len(ds) == 6 and bank.kspace_of([0]).shape[1] == 4
        seeds = [file_seed(f"{f}.h5") for f in bank.files]
        kspace = torch.cat([bank.kspace_of([i]) for i in range(len(bank))])
        got = masked_unet_inputs(kspace, make_masks(spec.mask_func(), kspace.shape, seeds), bank.crop,
                                 bank.target, sparse=sparse)
        via_bank = bank.batch(range(len(bank)), spec.mask_func(), seeds)
        for i in range(len(ds)):
            ref = ds[i]
            j = [k for k in range(len(bank)) if (bank.files[k], bank.slice_nums[k]) == (ref.fname.removesuffix(".h5"), ref.slice_num)][0]
            for b in (got, via_bank):
                torch.testing.assert_close(b.image[j], ref.image, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(b.target[j], ref.target, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(b.mean[j], ref.mean, rtol=1e-5, atol=1e-9)


def test_a_split_mixing_single_and_multicoil_files_is_refused(data, multicoil):
    from mrlib.errors import DataError
    paths = [*fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_train"),
             *fastmri_h5.list_volumes(multicoil / "fastmri" / "multicoil_train")]
    with pytest.raises(DataError, match="is multicoil but"):
        SliceBank(paths)
