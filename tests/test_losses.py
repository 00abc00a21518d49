"""Heatmap -> weight map, the ROI-weighted MSE (mrlib.losses) and localisation scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrlib.errors import ParameterError
from mrlib.losses import box_weight_map, weight_map, weighted_mse
from mrlib.metrics import box_iou, energy_in_boxes, pointing_game


# --------------------------------------------------------------------------- weight maps


def test_linear_rule_numpy_and_torch():
    h = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    w = weight_map(h, "linear", alpha=4.0)
    assert isinstance(w, np.ndarray) and w.dtype == np.float32
    np.testing.assert_allclose(w, [[1.0, 2.0], [3.0, 5.0]])
    wt = weight_map(torch.from_numpy(h), "linear", alpha=4.0)
    assert torch.is_tensor(wt)
    torch.testing.assert_close(wt, torch.tensor([[1.0, 2.0], [3.0, 5.0]]))
    assert weight_map(torch.zeros(2, 1, 3, 5)).shape == (2, 1, 3, 5)


def test_threshold_and_none_rules():
    h = np.array([0.0, 0.49, 0.5, 0.9])
    np.testing.assert_allclose(weight_map(h, "threshold", alpha=3.0, threshold=0.5), [1, 1, 4, 4])
    np.testing.assert_allclose(weight_map(h, "none", alpha=3.0), np.ones(4))
    torch.testing.assert_close(weight_map(torch.tensor(h), "Threshold", 2.0, 0.9),
                               torch.tensor([1.0, 1.0, 1.0, 3.0], dtype=torch.float64))
    np.testing.assert_allclose(weight_map(h, "linear", alpha=0.0), np.ones(4))  # alpha 0 = unweighted


@pytest.mark.parametrize("kwargs, name", [
    (dict(rule="square"), "rule"),
    (dict(alpha=-1.0), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(alpha="4"), "alpha"),
    (dict(rule="threshold", threshold=1.5), "threshold"),
    (dict(rule="threshold", threshold=-0.1), "threshold"),
])
def test_bad_weight_parameters(kwargs, name):
    with pytest.raises(ParameterError) as info:
        weight_map(np.zeros((2, 2)), **kwargs)
    assert info.value.where == name


def test_box_weight_map():
    w = box_weight_map((6, 8), [(1, 2, 3, 2, "Meniscus Tear"), (6, 5, 4, 4)], alpha=2.0)
    expected = np.ones((6, 8), np.float32)
    expected[2:4, 1:4] = 3.0
    expected[5:6, 6:8] = 3.0  # clipped at the image edge
    np.testing.assert_array_equal(w, expected)
    np.testing.assert_array_equal(box_weight_map((4, 4), [], alpha=5.0), np.ones((4, 4)))
    with pytest.raises(ParameterError):
        box_weight_map((4, 4), [(0, 0, 1, 1)], alpha=-2)


# --------------------------------------------------------------------------- weighted MSE


@pytest.mark.parametrize("shape", [(3, 1, 8, 6), (3, 8, 6)])
def test_uniform_weights_give_plain_mse(shape):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    plain = F.mse_loss(pred, target)
    torch.testing.assert_close(weighted_mse(pred, target, torch.ones(shape)), plain)
    torch.testing.assert_close(weighted_mse(pred, target, 7.0 * torch.ones(shape)), plain)
    torch.testing.assert_close(weighted_mse(pred, target, None), plain)
    torch.testing.assert_close(weighted_mse(pred, target, weight_map(torch.zeros(shape), "linear", 4.0)), plain)


def test_region_up_weighted_by_the_chosen_factor():
    # one 4x4 image, error 1 at two pixels: one inside the ROI (weight 1 + alpha = 5), one outside
    pred = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 0, 0] = 1.0  # inside the box
    target[0, 0, 3, 3] = 2.0  # outside, squared error 4
    w = torch.from_numpy(box_weight_map((4, 4), [(0, 0, 2, 2)], alpha=4.0))  # 4 pixels weigh 5, 12 weigh 1
    # by hand: (5*1 + 1*4) / (4*5 + 12*1) = 9/32
    torch.testing.assert_close(weighted_mse(pred, target, w), torch.tensor(9 / 32))
    # per image, then the mean over the batch; (B, H, W) weights for (B, 1, H, W) images
    pred2, target2 = torch.zeros(2, 1, 4, 4), torch.cat([target, torch.zeros(1, 1, 4, 4)])
    torch.testing.assert_close(weighted_mse(pred2, target2, torch.stack([w, w])), torch.tensor(9 / 64))
    # gradient: the ROI pixel pulls 5x harder than an equal error outside it
    p = torch.zeros(1, 1, 4, 4, requires_grad=True)
    t = torch.zeros(1, 1, 4, 4)
    t[0, 0, 0, 0] = t[0, 0, 3, 3] = 1.0
    weighted_mse(p, t, w).backward()
    torch.testing.assert_close(p.grad[0, 0, 0, 0] / p.grad[0, 0, 3, 3], torch.tensor(5.0))


def test_weighted_mse_shape_errors():
    with pytest.raises(ParameterError, match="differ in shape"):
        weighted_mse(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ParameterError, match="B, 1, H, W"):
        weighted_mse(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ParameterError, match="broadcast"):
        weighted_mse(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.ones(3, 3))


# --------------------------------------------------------------------------- localisation


def test_delta_inside_the_box():
    m = np.zeros((10, 12))
    m[4, 5] = 1.0
    box = [(3, 2, 4, 4, "lesion")]  # x 3..6, y 2..5
    assert pointing_game(m, box) is True
    assert energy_in_boxes(m, box) == 1.0
    assert box_iou(m, box) == pytest.approx(1 / 16)


def test_delta_outside_the_box():
    m = np.zeros((10, 12))
    m[9, 11] = 1.0
    box = [(3, 2, 4, 4)]
    assert pointing_game(m, box) is False
    assert energy_in_boxes(m, box) == 0.0
    assert box_iou(m, box) == 0.0


def test_known_shares_and_iou():
    m = np.zeros((8, 8))
    m[0:2, 0:2] = 1.0   # exactly the box: 4 pixels
    m[6, 6] = 4.0       # the peak, outside
    box = [(0, 0, 2, 2)]
    assert pointing_game(m, box) is False
    assert energy_in_boxes(m, box) == pytest.approx(4 / 8)
    assert box_iou(m, box, threshold=0.5) == 0.0           # region = the peak only
    assert box_iou(m, box, threshold=0.25) == pytest.approx(4 / 5)  # region = box + peak
    # two boxes count as their union
    two = [(0, 0, 2, 2), (6, 6, 1, 1)]
    assert pointing_game(m, two) is True
    assert energy_in_boxes(m, two) == 1.0
    assert box_iou(m, two, threshold=0.25) == 1.0


def test_flat_and_empty_maps_score_zero():
    box = [(0, 0, 3, 3)]
    assert pointing_game(np.zeros((5, 5)), box) is False  # a flat map points nowhere
    assert energy_in_boxes(np.zeros((5, 5)), box) == 0.0
    assert box_iou(np.zeros((5, 5)), box) == 0.0
    with pytest.raises(ParameterError):
        box_iou(np.ones((5, 5)), box, threshold=2.0)
