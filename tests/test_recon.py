"""The batched U-Net data path equals fastMRI's UnetDataTransform, and reconstruction runs."""

import numpy as np
import pytest
import torch
from fastmri.data.transforms import UnetDataTransform

from mrlib.data import fastmri_h5, synth
from mrlib.masking import MaskSpec, file_seed
from mrlib.models import SeedUnet
from mrlib.recon import SliceBank, reconstruct, zero_filled_volume


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


def test_reconstruct_returns_target_units_and_time(data):
    bank = SliceBank(fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_test"))
    stem = next(iter(bank.volumes))
    func = MaskSpec().mask_func(4)
    recon, seconds = reconstruct(SeedUnet(), bank, stem, func, batch_size=2)
    assert recon.shape == tuple(bank.target[bank.volumes[stem]].shape) and seconds > 0
    zf = zero_filled_volume(bank, stem, func)
    assert zf.shape == recon.shape
    # the fixed per-file mask: the same baseline twice
    np.testing.assert_array_equal(zf, zero_filled_volume(bank, stem, func))
