"""The loss variants of chapter 5's ablation: a family of classes, as grad-cam's CAMs are.

A variant is one class: its ``name``, a ``description``, the parameters it takes with
their defaults, how it builds per-pixel loss weights for the slices of a bank
(:meth:`LossVariant.weights`) and which loss it trains with (:meth:`LossVariant.loss`).
Defining a subclass with a ``name`` registers it; nothing else needs to change::

    class Centre(LossVariant):
        name = "centre"
        description = "up-weight the middle of every slice"
        params = {"alpha": 4.0}

        def weights(self, bank, context):
            w = torch.ones(len(bank), *bank.crop)
            ...
            return w

A variant *instance* is identified by its key: the name plus the parameters that differ
from the class's defaults, e.g. ``oracle``, ``oracle[alpha=50]`` or
``gradcam[cam_method=layercam]``. The key names its run in the registry, its checkpoint
directory and its rows of ``metrics.csv``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from .cam import gate_maps, heatmap_info, read_heatmaps
from .data.annotations import slice_boxes
from .data.boxes import Box, as_boxes, boxes_mask, foreground
from .errors import DataError, ParameterError
from .losses import box_weight_map, weight_map, weighted_mse


class SliceSet(Protocol):
    """What a variant needs of a bank: each slice's file stem and number, the image size and
    the fully sampled targets ``(N, H, W)``."""

    files: Sequence[str]
    slice_nums: Sequence[int]
    crop: tuple[int, int]
    target: torch.Tensor

    def __len__(self) -> int: ...


#: ``roi_source`` prefix of a user's own map file: ``gradcam[roi_source=file:/data/maps.h5]``
#: weights with that file's maps (one per slice, as chapter 4's heatmaps.h5), checked
#: against each volume of the banks when the weights are made, before any training step.
USER_MAPS = "file:"


@dataclass(frozen=True)
class WeightContext:
    """What the run offers a variant to build weights from.

    boxes: lesion boxes in image coordinates (:func:`mrlib.data.annotations.read_boxes`)
    or ``None``; heatmaps: chapter 4's heatmap files, ``{roi source: [file of classifier
    seed 0, 1, ...]}``; seed: the run's seed (U-Net seed s uses classifier seed s mod n, so
    the ROI source's own variance enters the U-Net's results).
    """

    boxes: pd.DataFrame | None = None
    heatmaps: Mapping[str, Sequence[Path]] | None = None
    seed: int = 0

    def heatmap_file(self, source: str) -> Path:
        """The heatmap file of ``source`` for this run's seed; for ``file:PATH`` (a user's own
        map file, :data:`USER_MAPS`) that file, whatever the seed."""
        if str(source).startswith(USER_MAPS):
            path = Path(str(source)[len(USER_MAPS):]).expanduser()
            if not path.is_file():
                raise DataError(path, f"roi_source={source}: no such map file (its layout: chapter 4's heatmap-file contract "
                                      "in book/reproduce.md, 'Your own ROI maps')")
            return path
        files = (self.heatmaps or {}).get(source)
        if not files:
            have = ", ".join(self.heatmaps or {}) or "none"
            raise DataError("heatmaps", f"no chapter-4 heatmaps of roi_source {source!r} (this run has: {have}); "
                                        "train its classifier in chapter 3 (roi_sources) and run chapter 4")
        return Path(files[self.seed % len(files)])


#: name -> variant class, in the order they were defined.
REGISTRY: dict[str, type["LossVariant"]] = {}


class LossVariant:
    """One way to train the U-Net: per-pixel weights and a loss.

    The base class is the plain MSE with uniform weights (:meth:`weights` returns
    ``None``). Subclasses override :meth:`weights` and/or :meth:`loss`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    loss_name: ClassVar[str] = "weighted_mse"
    #: parameter -> default; values given by the run config override the defaults
    params: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if not re.fullmatch(r"[a-z][a-z0-9_+-]*", cls.name):
                raise ParameterError("variant", f"variant name {cls.name!r}: use lowercase letters, digits, _ + -")
            REGISTRY[cls.name] = cls

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ParameterError(
                "variant", f"{self.name} takes no parameter {', '.join(unknown)}; "
                f"it takes: {', '.join(self.params) or 'none'}")
        values = {}
        for k, default in self.params.items():
            v = params.get(k, default)
            if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if type(v) is not type(default):
                raise ParameterError("variant", f"{self.name}: {k} must be {type(default).__name__}, got {v!r}")
            values[k] = v
        self.values = values
        self.pinned: frozenset[str] = frozenset()  # set by make_variant: explicit values the run's defaults would undo

    @property
    def key(self) -> str:
        """The name plus the parameters that differ from the class defaults, and those a key
        set explicitly against the run's defaults (:func:`make_variant`), so that a key
        names the same variant again under the run's parameters."""
        changed = [f"{k}={_fmt(v)}" for k, v in self.values.items() if v != self.params[k] or k in self.pinned]
        return f"{self.name}[{','.join(changed)}]" if changed else self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"

    def prepare(self, bank: SliceSet, context: WeightContext) -> dict[str, Any]:
        """Fit what the variant chooses on the training bank before any :meth:`weights`
        (e.g. a threshold); return what the run should record of it (default: nothing)."""
        return {}

    def weights(self, bank: SliceSet, context: WeightContext) -> torch.Tensor | None:
        """Per-slice loss weights ``(len(bank), H, W)``, or ``None`` for uniform weights."""
        return None

    def loss(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """The training loss of a batch: ``pred``, ``target`` ``(B, H, W)``, ``weight`` ``(B, H, W)`` or None."""
        return weighted_mse(pred, target, weight)

    def config(self) -> dict[str, Any]:
        """What a run records of its variant: the key, the loss and the parameter values."""
        return {"variant": self.key, "loss": self.loss_name, **self.values}


class Unweighted(LossVariant):
    name = "unweighted"
    description = "plain MSE: the reference every other variant is compared with"
    loss_name = "mse"


class GradCAM(LossVariant):
    name = "gradcam"
    description = "MSE up-weighted by the classifier's heatmaps (chapter 4): the report's method"
    params = {"alpha": 4.0, "weight_rule": "linear", "threshold": 0.5, "cam_method": "gradcam",
              "roi_source": "fastmri", "gate": False}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.tau: float | None = None  # the "matched" rule's threshold, fitted by prepare()

    def maps(self, bank: SliceSet, context: WeightContext) -> np.ndarray:
        """The (gated) heatmap of every slice of ``bank``: float32 ``(len(bank), H, W)`` in [0, 1]."""
        v = self.values
        path = context.heatmap_file(v["roi_source"])
        tau = heatmap_info(path)["tau"] if v["gate"] else float("nan")
        if v["gate"] and not np.isfinite(tau):
            raise DataError(path, "holds no gate threshold tau: gate=True needs a per-slice (fastmri) ROI source")
        out = np.zeros((len(bank), *bank.crop), dtype=np.float32)
        cache: dict[str, np.ndarray] = {}
        for i, (stem, s) in enumerate(zip(bank.files, bank.slice_nums)):
            if stem not in cache:
                cache[stem] = gate_maps(*read_heatmaps(path, v["cam_method"], stem, shape=bank.crop), tau)
                low, high = float(cache[stem].min(initial=0.0)), float(cache[stem].max(initial=0.0))
                if low < -1e-6 or high > 1 + 1e-6:
                    raise DataError(path, f"{v['cam_method']}/{stem}: maps must lie in [0, 1], found {low:.3g} to "
                                          f"{high:.3g}")
            if s >= cache[stem].shape[0]:
                raise DataError(path, f"has {cache[stem].shape[0]} slices of {stem}; slice {s} is needed")
            out[i] = cache[stem][s]
        return out

    def prepare(self, bank, context):
        if self.values["weight_rule"] != "matched":
            return {}
        self.tau = matched_threshold(self.maps(bank, context), box_masks(bank, context))
        return {"matched_threshold": self.tau}

    def weights(self, bank, context):
        v = self.values
        maps = self.maps(bank, context)
        if v["weight_rule"] == "matched":
            if self.tau is None:
                raise ParameterError("variant", f"{self.key}: the matched rule's threshold is fitted by prepare() "
                                                "on the training bank first")
            return torch.from_numpy(weight_map(maps, rule="threshold", alpha=v["alpha"], threshold=self.tau))
        return torch.from_numpy(weight_map(maps, rule=v["weight_rule"], alpha=v["alpha"], threshold=v["threshold"]))


class Shuffled(GradCAM):
    name = "shuffled"
    description = ("the Grad-CAM arm's weights, each slice that has a map given the map of a slice of another "
                   "volume: the right weight histogram in the wrong place (Grad-CAM's control)")

    def weights(self, bank, context):
        w = super().weights(bank, context)
        mapped = (w.flatten(1).amax(dim=1) > 1).numpy()  # slices with no map (gated off, or empty) all weigh 1
        perm = np.arange(len(w))
        perm[mapped] = np.flatnonzero(mapped)[cross_volume_derangement(
            np.asarray(bank.files)[mapped], np.zeros(int(mapped.sum())), np.random.default_rng([context.seed, 1]))]
        return w[torch.from_numpy(perm)]


def cross_volume_derangement(files: Sequence[str], groups: Sequence, rng: np.random.Generator) -> np.ndarray:
    """``perm`` with ``perm[i]`` a slice of another volume than slice ``i`` and of the same
    group (e.g. gate state): within each group the volumes are put in a random order, their
    slices in a random order, and the list is rotated by its largest volume's count.

    Where one volume holds more than half of a group's slices no such permutation exists;
    the rotation then leaves the fewest slices (``2 * largest - n``) with a map of their own
    volume, and a warning says how many.
    """
    files, groups = np.asarray(files), np.asarray(groups)
    perm = np.arange(len(files))
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        stems = rng.permutation(list(dict.fromkeys(files[idx].tolist())))
        order = np.concatenate([rng.permutation(idx[files[idx] == stem]) for stem in stems])
        largest = max(int((files[idx] == stem).sum()) for stem in stems)
        perm[order] = np.roll(order, -largest)
        same = int((files[perm[idx]] == files[idx]).sum())
        if same:
            warnings.warn(f"shuffled: one volume holds {largest} of {len(idx)} mapped slices, so {same} of them keep "
                          "a map of their own volume", stacklevel=2)
    return perm


def box_masks(bank: SliceSet, context: WeightContext) -> np.ndarray:
    """The true lesion boxes of every slice of ``bank`` as a boolean ``(len(bank), H, W)``."""
    if context.boxes is None:
        raise DataError("annotations", "this variant needs the lesion boxes (annotations/knee.csv)")
    boxes = slice_boxes(context.boxes)
    return np.stack([boxes_mask(bank.crop, boxes.get((stem, int(s)), []))
                     for stem, s in zip(bank.files, bank.slice_nums)])


def matched_threshold(maps: np.ndarray, boxes: np.ndarray) -> float:
    """The threshold ``tau`` on the maps for which the region ``map >= tau`` covers, on
    average over the slices that hold a box, as many pixels as their true boxes do.

    Args:
        maps: ``(N, H, W)`` in [0, 1]; boxes: boolean ``(N, H, W)``.
    """
    lesion = boxes.any(axis=(1, 2))
    if not lesion.any():
        raise DataError("annotations", "no slice of the training bank holds a lesion box: nothing to match")
    area = boxes[lesion].sum() / lesion.sum()
    values = np.sort(maps[lesion].ravel())[::-1]
    k = int(round(area * lesion.sum()))  # the same number of pixels over the lesion slices
    return float(values[min(max(k, 1), values.size) - 1])


def weight_stats(weights: torch.Tensor | None, bank: SliceSet, context: WeightContext) -> dict[str, float]:
    """What a variant's weights do on the lesion slices of ``bank``: ``mean_weight`` (per
    pixel) and ``weight_share``, the sum of the weights inside the true lesion boxes over the
    sum of all weights (uniform weights give the boxes' area share). ``None`` without boxes."""
    if context.boxes is None:
        return {"mean_weight": None, "weight_share": None}
    boxes = box_masks(bank, context)
    lesion = boxes.any(axis=(1, 2))
    if not lesion.any():
        return {"mean_weight": None, "weight_share": None}
    w = np.ones(boxes.shape, np.float32) if weights is None else weights.cpu().numpy()
    w, b = w[lesion].astype(np.float64), boxes[lesion]
    return {"mean_weight": float(w.mean()), "weight_share": float(w[b].sum() / w.sum())}


class _BoxVariant(LossVariant):
    """Weights ``1 + alpha`` inside boxes placed by :meth:`place`; slices without a box weigh 1."""

    params = {"alpha": 4.0}

    def place(self, boxes: list, bank: SliceSet, index: int, rng: np.random.Generator) -> list:
        """The boxes to up-weight on slice ``index`` of ``bank``, whose true boxes are ``boxes``."""
        raise NotImplementedError

    def weights(self, bank, context):
        if context.boxes is None:
            raise DataError("annotations", f"the {self.name} variant needs the lesion boxes (annotations/knee.csv)")
        weights = np.ones((len(bank), *bank.crop), dtype=np.float32)
        rng = np.random.default_rng(context.seed)
        by_slice = slice_boxes(context.boxes)
        for i, (stem, s) in enumerate(zip(bank.files, bank.slice_nums)):
            boxes = by_slice.get((stem, int(s)), [])
            if boxes:
                weights[i] = box_weight_map(bank.crop, self.place(boxes, bank, i, rng), self.values["alpha"])
        return torch.from_numpy(weights)


class Oracle(_BoxVariant):
    name = "oracle"
    description = ("MSE up-weighted inside the true lesion boxes: a reference with the true boxes at the same "
                   "strength (the positive control), not an upper bound")

    def place(self, boxes, bank, index, rng):
        return boxes


class Random(_BoxVariant):
    name = "random"
    description = ("MSE up-weighted inside boxes of the true count and sizes, on the same slices, at random places "
                   "inside the knee that miss the true boxes: the oracle's control")

    def place(self, boxes, bank, index, rng):
        return boxes_in_foreground(boxes, bank.target[index].cpu().numpy(), rng)


def boxes_in_foreground(boxes: Sequence, image: np.ndarray, rng: np.random.Generator, tries: int = 1000) -> list[Box]:
    """Boxes of the sizes of ``boxes`` placed in ``image`` ``(H, W)``: each centre uniform over
    the foreground (:func:`mrlib.data.boxes.foreground`) eroded by the box, so the whole
    box lies in the knee; a draw that overlaps a true box (or one placed before) is drawn
    again."""
    true = as_boxes(boxes)
    taken = boxes_mask(image.shape, true)
    fg = foreground(image)
    out = []
    for box in true:
        inside = ndimage.binary_erosion(fg, np.ones((box.height, box.width), bool))
        ys, xs = np.nonzero(inside)
        for _ in range(tries if len(ys) else 0):
            k = int(rng.integers(len(ys)))
            cand = Box(int(xs[k]) - box.width // 2, int(ys[k]) - box.height // 2, box.width, box.height, box.label)
            if not boxes_mask(image.shape, [cand])[taken].any():
                break
        else:
            raise DataError("random", f"found no place inside the knee for a {box.width} x {box.height} box that "
                                      "misses the true boxes")
        out.append(cand)
        taken |= boxes_mask(image.shape, [cand])
    return out


class L1(LossVariant):
    name = "l1"
    description = "L1 loss, fastMRI's own U-Net loss"
    loss_name = "l1"

    def loss(self, pred, target, weight):
        return torch.nn.functional.l1_loss(pred, target)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    return text


def parse_key(key: str) -> tuple[str, dict[str, Any]]:
    """``"oracle[alpha=50]"`` -> ``("oracle", {"alpha": 50})``."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_+-]+)\s*(?:\[(.*)\])?\s*", str(key))
    if not m:
        raise ParameterError("variant", f"{key!r} is not a variant key like oracle or oracle[alpha=50]")
    params = {}
    for part in filter(None, (p.strip() for p in (m.group(2) or "").split(","))):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise ParameterError("variant", f"{key!r}: parameters are name=value, separated by commas")
        params[k.strip()] = _parse_value(v.strip())
    return m.group(1).lower(), params


def make_variant(key: str, defaults: Mapping[str, Any] | None = None) -> LossVariant:
    """The variant instance a key names.

    Args:
        key: a name (``oracle``) or a key with parameters (``oracle[alpha=50]``).
        defaults: values for the class's parameters where the key does not set them,
            e.g. the run config's ``alpha``; names the class does not take are ignored.
    """
    name, explicit = parse_key(key)
    if name not in REGISTRY:
        raise ParameterError("variants", f"unknown variant {name!r}; use some of {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    values = {k: v for k, v in (defaults or {}).items() if k in cls.params}
    values.update(explicit)
    variant = cls(**values)
    # `oracle[alpha=4]` in a run with alpha=50: 4 is the class default, so without the pin its
    # key would be `oracle`, which the run's defaults read back as alpha=50
    variant.pinned = frozenset(k for k in explicit if k in values and k in (defaults or {})
                               and variant.values[k] != defaults[k])
    return variant


def variant_table() -> pd.DataFrame:
    """The registered variants: name, loss, parameters with defaults, description."""
    return pd.DataFrame([
        {"variant": n, "loss": c.loss_name, "parameters": ", ".join(f"{k}={_fmt(v)}" for k, v in c.params.items()),
         "description": c.description}
        for n, c in REGISTRY.items()
    ])
