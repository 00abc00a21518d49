"""mrlib.masking: fastMRI's masks, applied in batches, and the zero-filled baseline."""

import json

import fastmri
import numpy as np
import pytest
import torch
from fastmri.data import transforms as T

from mrlib import masking
from mrlib.errors import DataError, ParameterError
from mrlib.rundir import RunDir


def _kspace(batch=3, rows=32, cols=24, coils=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, rows, cols, 2) if coils is None else (batch, coils, rows, cols, 2)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("mask_type", masking.MASK_TYPES)
def test_batch_equals_fastmri_apply_mask_per_slice(mask_type):
    spec = masking.MaskSpec(mask_type, (4,), (0.08,))
    k = _kspace()
    seeds = [1, 2, (3, 4)]
    masked, masks = masking.mask_batch(k, spec.mask_func(), seeds)
    assert masks.shape == (3, 1, k.shape[2], 1)
    for b, seed in enumerate(seeds):
        ref, ref_mask, _ = T.apply_mask(k[b], spec.mask_func(), seed=seed)
        torch.testing.assert_close(masked[b], ref)
        torch.testing.assert_close(masks[b], ref_mask.float())


def test_multicoil_masks_broadcast_over_coils():
    k = _kspace(batch=2, coils=3)
    masked, masks = masking.mask_batch(k, masking.MaskSpec().mask_func(4), [0, 1])
    assert masks.shape == (2, 1, k.shape[3], 1)  # one mask per slice, broadcast over coils and rows
    dropped = masks[:, 0, :, 0] == 0
    assert dropped.any() and (~dropped).any()
    assert masks.mean().item() == pytest.approx(1 / 4, abs=0.05)
    for b in range(2):
        assert torch.all(masked[b][..., dropped[b], :] == 0)
        assert torch.equal(masked[b][..., ~dropped[b], :], k[b][..., ~dropped[b], :])
        # fastMRI's apply_mask handles the coil dimension itself: the reference
        ref, _, _ = T.apply_mask(k[b], masking.MaskSpec().mask_func(4), seed=b)
        torch.testing.assert_close(masked[b], ref)


def test_sampling_rate_follows_acceleration():
    spec = masking.MaskSpec("equispaced_fraction", (4, 8), (0.08, 0.04))
    shape = (640, 368, 2)
    for acc in (4, 8):
        rate = masking.sampling_rate(masking.make_masks(spec.mask_func(acc), shape, [0]))
        assert abs(rate.item() - 1 / acc) < 0.02


def test_file_seed_gives_the_same_mask_each_time():
    func = masking.MaskSpec().mask_func(4)
    a = masking.make_masks(func, (64, 74, 2), [masking.file_seed("file1000.h5")])
    b = masking.make_masks(func, (64, 74, 2), [masking.file_seed("file1000.h5")])
    c = masking.make_masks(func, (64, 74, 2), [masking.file_seed("file1001.h5")])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_filled_is_magnitude_of_centre_crop_of_inverse_fft():
    k = _kspace(batch=2, rows=16, cols=12)
    out = masking.zero_filled(k, (8, 8))
    kc = k[..., 0].numpy() + 1j * k[..., 1].numpy()
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kc, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    ref = np.abs(img[:, 4:12, 2:10])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_zero_filled_multicoil_is_root_sum_of_squares():
    k = _kspace(batch=2, coils=3, rows=16, cols=12)
    out = masking.zero_filled(k, (8, 8))
    # numpy: per coil, the centred inverse FFT cropped to 8 x 8; then the root sum of squares
    kc = k[..., 0].numpy() + 1j * k[..., 1].numpy()
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kc, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    want = np.sqrt((np.abs(img[..., 4:12, 2:10]) ** 2).sum(axis=1))
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
    # and fastMRI's own functions agree
    ref = fastmri.rss(fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(k), (8, 8))), dim=1)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize(
    "kwargs, where",
    [
        (dict(mask_type="spiral"), "mask_type"),
        (dict(accelerations=(4, 8), center_fractions=(0.08,)), "accelerations"),
        (dict(accelerations=(0,), center_fractions=(0.08,)), "accelerations"),
        (dict(accelerations=(4,), center_fractions=(1.5,)), "center_fractions"),
    ],
)
def test_bad_mask_spec_is_named(kwargs, where):
    with pytest.raises(ParameterError) as err:
        masking.MaskSpec(**kwargs)
    assert err.value.where == where


def test_acceleration_the_mask_cannot_make():
    spec = masking.MaskSpec("random", (4, 16), (0.08, 0.08))
    masking.MaskSpec("random", (4,), (0.08,)).check_columns(74)
    with pytest.raises(ParameterError, match="16x cannot be made on 74"):
        spec.check_columns(74)


def test_spec_round_trips_through_dict():
    spec = masking.MaskSpec("equispaced", (4, 8), (0.08, 0.04))
    assert spec.to_dict() == {"mask_type": "equispaced", "accelerations": [4, 8], "center_fractions": [0.08, 0.04]}
    assert masking.MaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ParameterError):
        spec.center_fraction(6)


def test_run_dir_writes_and_reads_the_spec(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(DataError, match="02_masking"):
        rd.read_mask_spec()
    spec = masking.MaskSpec("equispaced", (4, 8), (0.08, 0.04))
    assert rd.write_mask_spec(spec, seed=3) == rd.masking_path
    assert json.loads(rd.masking_path.read_text()) == {**spec.to_dict(), "seed": 3}
    assert rd.read_mask_spec() == spec
