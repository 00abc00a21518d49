"""Grad-CAM heatmaps of MRNet, per slice, through the ``grad-cam`` package.

The report (section 2.1) takes Grad-CAM of MRNet's last convolutional layer as the
regions of interest that the U-Net's loss up-weights. This module computes those maps
with ``pytorch_grad_cam`` (it does not re-implement Grad-CAM) and stores them, one map
per slice of every fastMRI target volume, in one HDF5 file that the weighted U-Net
notebook reads back.

Two details matter and are handled here:

* **Per-slice scoring.** MRNet's exam logit is a linear layer on the *channel-wise*
  maximum over slices of the pooled features. With the exam logit, a slice therefore
  receives gradient only through the feature channels whose maximum it holds: the slice
  that holds many maxima gets a map, most slices get a partial map built from a few
  channels, and a slice that holds no maximum gets an empty one. The model is wrapped in
  :class:`SliceLogits`, whose forward is ``model.slice_logits``: each slice is one batch
  item with its own logit (the same linear layer on that slice's own pooled features),
  and ``ClassifierOutputTarget(0)`` scores each slice by it, so every slice gets a map from
  its own evidence. Per-slice logits are on a different scale from the exam logit (the
  exam's pooled features are the maxima over slices, at least each slice's own).
* **Normalisation.** ``grad-cam`` rectifies each map and min-max normalises it to
  [0, 1] *per slice* (``scale_cam_image``). A slice's map therefore says *where* the
  classifier looked on that slice, not *how strongly* compared with other slices: a
  slice with a weak, diffuse response gets a map whose peak is 1 all the same. The
  slice's logit is stored beside its map (``scores``) so that a user can tell the two
  apart. A map that is zero everywhere (no positive evidence anywhere) stays zero.

HDF5 layout written by :func:`compute_heatmaps`::

    /{method}/{file_stem}/maps    float32 (S, H, W), in [0, 1], the target's geometry
    /{method}/{file_stem}/scores  float32 (S,), each slice's MRNet logit
    attrs: methods, flip_ud, target_layer, grid (JSON [h, w]: the layer's activation grid,
           the maps' true resolution), input_size, image_shapes (JSON), mrlib_format
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch.nn import functional as F

from .artifacts import atomic_path
from .classifier import INPUT_SIZE, prepare_exam, to_source
from .errors import DataError, MrlibError, ParameterError
from .data.boxes import boxes_mask
from .metrics import LOCALIZATION_COLUMNS, chance_localization, localization_row
from .runtime import progress_bar

#: The CAM methods by lowercase name.
METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM}

#: Name of the default target layer, as stored in the heatmap file.
DEFAULT_TARGET_LAYER = "features.11"

FORMAT_VERSION = 1


class SliceLogits(nn.Module):
    """Wrap a model so its forward returns each slice's own logit: ``(S, 3, H, W) -> (S, 1)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.slice_logits(x)


def check_method(method: str) -> type:
    """Return the ``grad-cam`` class of ``method`` (case-insensitive) or raise ParameterError."""
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ParameterError("method", f"unknown CAM method {method!r}; use one of {', '.join(METHODS)}")
    return METHODS[key]


def default_target_layer(model: nn.Module) -> nn.Module:
    """MRNet's last convolutional feature maps after their ReLU: ``model.features[11]``.

    Why ``features[11]`` (the ReLU) and not ``features[10]`` (the Conv2d before it):

    * Grad-CAM is defined on rectified feature maps of the last convolutional layer
      (Selvaraju et al. 2017); pre-ReLU activations are mostly negative, and a sum of
      channel weights times negative activations gives maps dominated by where
      channels are *off*.
    * AlexNet's ReLU is in-place. ``grad-cam`` stores a hooked activation as
      ``output.cpu().detach()``, which on the CPU shares storage with the tensor the
      in-place ReLU then overwrites, but on CUDA is a copy. Hooking ``features[10]``
      would therefore give post-ReLU activations on the CPU and pre-ReLU ones on a GPU:
      different maps for the same model. ``features[11]`` is followed by a max-pool that
      does not write in place, so its maps do not depend on the device.
    """
    try:
        return model.features[11]
    except (AttributeError, IndexError, TypeError):
        raise ParameterError(
            "target_layer", f"{type(model).__name__} has no features[11]; pass target_layer explicitly"
        ) from None


def layer_grid(model: nn.Module, layer: nn.Module, input_size: int) -> tuple[int, int]:
    """The ``(h, w)`` grid of ``layer``'s activations for one ``input_size`` slice: the
    resolution of every map taken there, before it is upsampled to the image."""
    seen: list[tuple[int, int]] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model.slice_logits(torch.zeros(1, 3, int(input_size), int(input_size), device=device))
    finally:
        hook.remove()
    return int(seen[0][0]), int(seen[0][1])


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name
    return type(layer).__name__


def slice_cams(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "gradcam",
    target_layer: nn.Module | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CAM of every slice of one exam, each slice scored by its own logit.

    Args:
        model: an MRNet (anything with ``slice_logits: (S, 3, H, W) -> (S, 1)``).
        x: one prepared exam ``(S, 3, 224, 224)`` (:func:`mrlib.classifier.prepare_exam`).
        method: a key of :data:`METHODS`.
        target_layer: the layer whose activations and gradients make the map; default
            :func:`default_target_layer` (``model.features[11]``).
        batch_size: slices per forward/backward pass.
        device: where to compute; default the model's device. The model is moved there
            (``model.to``, in place).

    Returns:
        ``(maps, scores)``: float32 ``(S, 224, 224)`` maps, each rectified and min-max
        normalised to [0, 1] by ``grad-cam`` *on its own* (see the module docstring), and
        float32 ``(S,)`` logits of each slice (``model.slice_logits``).

    The model is put in eval mode while the maps are computed and returned to its former
    mode afterwards; the parameters' ``.grad`` are reset to ``None``. Hooks are released
    by the CAM object's context manager, also on error.
    """
    cam_cls = check_method(method)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError("batch_size", f"must be a positive integer, got {batch_size!r}")
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] != 3:
        raise ParameterError("x", f"expected one prepared exam (S, 3, H, W) with S >= 1, got {tuple(x.shape)}")
    if device is not None:
        model.to(torch.device(device))
    dev = next(model.parameters()).device
    layer = default_target_layer(model) if target_layer is None else target_layer
    was_training = model.training
    wrapper = SliceLogits(model)
    maps, scores = [], []
    try:
        with cam_cls(model=wrapper, target_layers=[layer]) as cam:
            try:
                for start in range(0, x.shape[0], batch_size):
                    batch = x[start : start + batch_size].to(dev, torch.float32)
                    targets = [ClassifierOutputTarget(0)] * batch.shape[0]
                    maps.append(np.asarray(cam(input_tensor=batch, targets=targets), dtype=np.float32))
                    scores.append(cam.outputs.detach()[:, 0].float().cpu().numpy())
            except IndexError as exc:
                # grad-cam's __exit__ swallows IndexError (it only prints it); re-raise as ours
                raise MrlibError("grad-cam", f"{method} failed: IndexError: {exc}") from exc
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return np.concatenate(maps, axis=0), np.concatenate(scores, axis=0)


def compute_heatmaps(
    model: nn.Module,
    volumes: Iterable[tuple[str, np.ndarray]],
    methods: Sequence[str] | str,
    out_path: str | Path,
    flip_ud: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    target_layer: nn.Module | None = None,
    device: str | torch.device | None = None,
    input_size: int = INPUT_SIZE,
) -> Path:
    """Per-slice CAMs of fastMRI target volumes, written to one HDF5 file, atomically.

    For each volume: :func:`~mrlib.classifier.prepare_exam` -> :func:`slice_cams` for
    each method -> :func:`~mrlib.classifier.to_source` back onto the target's ``(H, W)``
    pixels (a centre crop is pasted back with zeros outside it; a resized exam is
    resized back).

    Args:
        model: a trained MRNet.
        volumes: ``(file_stem, target)`` pairs, ``target`` ``(S, H, W)``, e.g. the
            ``reconstruction_esc`` of each file of a split.
        methods: names of :data:`METHODS` (or one name).
        out_path: the HDF5 file to write, e.g. ``RUN/gradcam/heatmaps.h5``.
        flip_ud: flip slices up/down before the classifier (and the maps back after).
        batch_size, device, target_layer: passed to :func:`slice_cams`.
        progress: show a ``tqdm`` progress bar.
        input_size: the classifier's input size (the one it was trained with).

    Returns:
        ``out_path``. Layout in the module docstring. Nothing is left at ``out_path``
        (and no temporary file) if any volume fails.
    """
    if isinstance(methods, str):
        methods = [methods]
    methods = [str(m).strip().lower() for m in methods]
    if not methods:
        raise ParameterError("methods", f"give at least one CAM method ({', '.join(METHODS)})")
    for m in methods:
        check_method(m)
    if len(set(methods)) != len(methods):
        raise ParameterError("methods", f"listed twice: {methods}")
    if device is not None:
        model.to(torch.device(device))
    layer = default_target_layer(model) if target_layer is None else target_layer
    layer_name = _layer_name(model, layer)
    out_path = Path(out_path)
    shapes: dict[str, list[int]] = {}
    total = len(volumes) if hasattr(volumes, "__len__") else None
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            for stem, target in progress_bar(volumes, total=total, desc="CAM heatmaps", progress=progress):
                stem = str(stem)
                if stem in shapes:
                    raise DataError(stem, "volume given twice to compute_heatmaps")
                target = np.asarray(target)
                x = prepare_exam(target, flip_ud=flip_ud, where=stem, size=input_size)
                hw = tuple(int(s) for s in target.shape[-2:])
                shapes[stem] = [int(target.shape[0]), *hw]
                for method in methods:
                    maps, scores = slice_cams(model, x, method, target_layer=layer, batch_size=batch_size)
                    src = to_source(maps, hw, flip_ud=flip_ud)
                    g = f.create_group(f"{method}/{stem}")
                    g.create_dataset("maps", data=src.astype(np.float32), compression="gzip", compression_opts=4)
                    g.create_dataset("scores", data=scores.astype(np.float32))
            f.attrs["methods"] = json.dumps(methods)
            f.attrs["flip_ud"] = bool(flip_ud)
            f.attrs["target_layer"] = layer_name
            f.attrs["grid"] = json.dumps(list(layer_grid(model, layer, input_size)))
            f.attrs["input_size"] = int(input_size)
            f.attrs["image_shapes"] = json.dumps(shapes)
            f.attrs["mrlib_format"] = FORMAT_VERSION
    return out_path


def heatmap_info(path: str | Path) -> dict:
    """The root attributes of a heatmap file: methods, file stems, flip_ud, target layer, shapes."""
    path = Path(path)
    f = _open(path)
    with f:
        attrs = dict(f.attrs)
        try:
            methods = json.loads(attrs["methods"])
            shapes = json.loads(attrs["image_shapes"])
        except (KeyError, TypeError, ValueError, RecursionError):
            raise DataError(path, "not a heatmap file written by mrlib.cam.compute_heatmaps (no methods/image_shapes)") from None
        return dict(
            methods=methods,
            files=sorted(shapes),
            image_shapes={k: tuple(v) for k, v in shapes.items()},
            flip_ud=bool(attrs.get("flip_ud", False)),
            target_layer=str(attrs.get("target_layer", "")),
            grid=tuple(json.loads(attrs["grid"])) if "grid" in attrs else None,
        )


def _open(path: Path):
    if not path.is_file():
        raise DataError(path, "heatmap file does not exist; run the Grad-CAM notebook (04_gradcam) first")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(path, f"not a readable HDF5 file ({exc})") from None


def read_heatmaps(
    path: str | Path,
    method: str,
    file_stem: str,
    n_slices: int | None = None,
    shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one volume's maps and scores from a file of :func:`compute_heatmaps`.

    Args:
        path: the heatmap HDF5 file.
        method: a CAM method in the file.
        file_stem: the fastMRI file stem (``file1000000``; a ``.h5`` suffix is dropped).
        n_slices, shape: if given, the slice count and ``(H, W)`` the maps must have
            (the target's), to catch a heatmap file that belongs to other data.

    Returns:
        ``(maps float32 (S, H, W), scores float32 (S,))``.

    Raises:
        DataError naming the file: missing, not HDF5, method or file stem not in it,
        or maps of the wrong slice count or shape.
    """
    path = Path(path)
    method = str(method).strip().lower()
    stem = str(file_stem)
    stem = Path(stem).name[:-3] if stem.endswith(".h5") else Path(stem).name
    f = _open(path)
    with f:
        if method not in f:
            have = sorted(f.keys())
            raise DataError(path, f"holds no heatmaps of method {method!r} (it has: {', '.join(have) or 'none'})")
        if stem not in f[method]:
            raise DataError(
                path, f"holds no {method} heatmaps for {stem!r}; the file does not match this dataset "
                f"(it has {len(f[method])} volume(s), e.g. {', '.join(sorted(f[method])[:3])})",
            )
        g = f[method][stem]
        for key in ("maps", "scores"):
            ds = g.get(key) if isinstance(g, h5py.Group) else None
            if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
                raise DataError(path, f"{method}/{stem}/{key} is missing or not a numeric dataset")
        maps = np.asarray(g["maps"][()], dtype=np.float32)
        scores = np.asarray(g["scores"][()], dtype=np.float32)
    if not (np.isfinite(maps).all() and np.isfinite(scores).all()):
        raise DataError(path, f"{method}/{stem} holds NaN or Inf values")
    if maps.ndim != 3 or scores.shape != (maps.shape[0],):
        raise DataError(path, f"{method}/{stem}: maps {maps.shape} and scores {scores.shape} are not (S, H, W) and (S,)")
    if n_slices is not None and maps.shape[0] != int(n_slices):
        raise DataError(path, f"{method}/{stem} has {maps.shape[0]} slice maps but the volume has {int(n_slices)} slices")
    if shape is not None and tuple(maps.shape[1:]) != tuple(int(s) for s in shape):
        raise DataError(path, f"{method}/{stem} maps are {tuple(maps.shape[1:])} but the images are {tuple(shape)}")
    return maps, scores


def exam_localization(
    model: nn.Module,
    exams: Sequence[tuple[np.ndarray, dict[int, list]]],
    methods: Sequence[str],
    input_size: int = INPUT_SIZE,
    flip_ud: bool = False,
    batch_size: int = 16,
):
    """Localisation on the classifier's own kind of data: exams scored against their boxes.

    Args:
        exams: ``(volume (S, H, W), {slice: [(x, y, w, h), ...]})`` pairs, e.g. kneeMRI test
            exams with a tear and their ACL ROI box on the slices it spans.
        methods: CAM method names.

    Returns:
        ``pandas.DataFrame`` with the columns of :func:`mrlib.metrics.localization_table`.
    """
    for m in methods:
        check_method(m)
    maps_by_method: dict[str, list] = {str(m).strip().lower(): [] for m in methods}
    for volume, boxes in exams:
        x = prepare_exam(volume, flip_ud=flip_ud, size=input_size)
        for method in maps_by_method:
            maps, _ = slice_cams(model, x, method, batch_size=batch_size)
            src = to_source(maps, tuple(volume.shape[-2:]), flip_ud=flip_ud)
            maps_by_method[method] += [(src[s], b) for s, b in sorted(boxes.items())]
    rows = [localization_row(m, pairs) for m, pairs in maps_by_method.items()]
    return pd.DataFrame(rows, columns=list(LOCALIZATION_COLUMNS))


#: Columns of :func:`localization_table` and :func:`baseline_table`.
TABLE_COLUMNS = ("method", "layer", "grid", "split", *LOCALIZATION_COLUMNS[1:])


def _grid_text(info: dict) -> str:
    return "x".join(map(str, info["grid"])) if info.get("grid") else ""


def _boxes_of(info: dict, boxes_df, files):
    """The boxes of ``files`` (default: every file the heatmap file holds) that it holds maps of."""
    held = set(info["files"])
    wanted = held if files is None else held & {str(f) for f in files}
    return boxes_df[boxes_df["file"].astype(str).isin(wanted)]


def _annotated(heatmaps_path, info: dict, boxes_df, files):
    """:func:`_boxes_of`, refused when empty (the heatmaps and the boxes do not match)."""
    df = _boxes_of(info, boxes_df, files)
    if df.empty:
        raise DataError(
            heatmaps_path, f"none of the {boxes_df['file'].nunique()} annotated file(s) has heatmaps here "
            "(do the heatmaps and the annotations come from the same dataset?)",
        )
    return df


def _slices(df):
    """``(stem, slice, [(x, y, w, h), ...])`` of each annotated slice, in file and slice order."""
    for stem, per_file in df.groupby("file", sort=True):
        for slice_num, per_slice in per_file.groupby("slice", sort=True):
            yield str(stem), int(slice_num), list(per_slice[["x", "y", "width", "height"]].itertuples(index=False, name=None))


def localization_table(heatmaps_path, boxes_df, methods, iou_threshold: float = 0.5, files=None, split: str = ""):
    """Localisation scores of each CAM method against the ground-truth boxes.

    Args:
        heatmaps_path: a file written by :func:`compute_heatmaps`.
        boxes_df: boxes in image coordinates (:func:`mrlib.data.annotations.read_boxes`).
            Only slices with at least one box are scored; the boxes of one slice count
            as their union. Boxes of files that the heatmap file does not hold (e.g.
            another split) are skipped.
        methods: CAM method names held in the file.
        iou_threshold: the map region for :func:`box_iou` is ``map >= t * max``.
        files: score only these file stems (e.g. the evaluation split); default all held.
        split: the name of the split scored, for the ``split`` column.

    Returns:
        ``pandas.DataFrame`` with columns :data:`TABLE_COLUMNS`: per method, the layer and
        grid the maps were taken at, the split, the number of annotated slices scored and
        the means over them (the strict pointing game as a hit rate).

    Raises:
        DataError: no annotated slice belongs to a volume in the heatmap file (they do
            not match), or a box's slice index is beyond its volume.
    """
    if isinstance(methods, str):
        methods = [methods]
    info = heatmap_info(heatmaps_path)
    df = _annotated(heatmaps_path, info, boxes_df, files)

    def pairs(method):
        stem_read, maps = None, None
        for stem, slice_num, boxes in _slices(df):  # file by file: each file's maps are read once
            if stem != stem_read:
                stem_read, maps = stem, read_heatmaps(heatmaps_path, method, stem)[0]
            if not 0 <= slice_num < maps.shape[0]:
                raise DataError(heatmaps_path, f"annotated slice {slice_num} of {stem} is beyond its {maps.shape[0]} slices")
            yield maps[slice_num], boxes

    rows = [dict(localization_row(method, pairs(method), iou_threshold), layer=info["target_layer"],
                 grid=_grid_text(info), split=split) for method in methods]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def baseline_table(heatmaps_path, boxes_df, methods, files, prior_files, split: str = "",
                   iou_threshold: float = 0.5) -> pd.DataFrame:
    """Maps that know nothing of the slice, scored on the same annotated slices as the CAMs.

    Rows (``method`` names the baseline):

    * ``uniform``: a map with no information (the boxes' share of the image, analytically);
    * ``box prior``: the mean, over the annotated slices of ``prior_files`` (the training
      split), of their box masks: where lesions usually are;
    * ``map prior (<method>)``: the mean of ``method``'s maps over every slice of
      ``prior_files``: where that method usually looks, whatever the slice;
    * ``ideal at <grid>``: each slice's own box mask average-pooled to the heatmap file's
      grid and upsampled back, the best a map at that grid can do.

    Args:
        files: the scored files (as :func:`localization_table`'s); prior_files: the files
            the priors are averaged over (never the scored ones).
    """
    if isinstance(methods, str):
        methods = [methods]
    info = heatmap_info(heatmaps_path)
    df = _annotated(heatmaps_path, info, boxes_df, files)
    prior_files = sorted({str(f) for f in prior_files} & set(info["files"]))
    if not prior_files:
        raise DataError(heatmaps_path, "holds no map of the prior files (the training split)")
    shape = tuple(info["image_shapes"][prior_files[0]][1:])
    extra = dict(layer=info["target_layer"], grid=_grid_text(info), split=split)
    slices = list(_slices(df))
    rows = [dict(chance_localization(df, shape), method="uniform", **extra)]
    prior_boxes = boxes_df[boxes_df["file"].astype(str).isin(prior_files)]
    masks = [boxes_mask(shape, boxes).astype(np.float64) for _, _, boxes in _slices(prior_boxes)]
    if masks:
        box_prior = np.mean(masks, axis=0)
        rows.append(dict(localization_row("box prior", ((box_prior, b) for _, _, b in slices), iou_threshold), **extra))
    for method in methods:
        mean = np.mean(np.concatenate([read_heatmaps(heatmaps_path, method, f)[0] for f in prior_files]), axis=0)
        rows.append(dict(localization_row(f"map prior ({method})", ((mean, b) for _, _, b in slices), iou_threshold),
                         **extra))
    if info.get("grid"):
        def ideal(boxes):
            mask = torch.from_numpy(boxes_mask(shape, boxes).astype(np.float32))[None, None]
            pooled = F.adaptive_avg_pool2d(mask, info["grid"])
            return F.interpolate(pooled, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        rows.append(dict(localization_row(f"ideal at {_grid_text(info)}", ((ideal(b), b) for _, _, b in slices),
                                          iou_threshold), **extra))
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def localization_report(heatmaps_path, boxes_df, methods, evaluation_files, train_files,
                        iou_threshold: float = 0.5) -> pd.DataFrame:
    """Chapter 4's table: every method and the baselines on the evaluation split's annotated
    slices, and every method on the training split's (whose maps weight the U-Net's loss).

    A split without an annotated slice contributes no rows (a line says so); the priors
    are averaged over the training split only, so nothing of the evaluation split leaks
    into them.
    """
    info = heatmap_info(heatmaps_path)
    parts = []
    for split, files in (("evaluation", evaluation_files), ("train", train_files)):
        if _boxes_of(info, boxes_df, files).empty:
            print(f"no annotated slice in the {split} split: no localisation rows for it")
            continue
        parts.append(localization_table(heatmaps_path, boxes_df, methods, iou_threshold, files, split))
        if split == "evaluation":
            parts.append(baseline_table(heatmaps_path, boxes_df, methods, files, train_files, split, iou_threshold))
    if not parts:
        raise DataError(heatmaps_path, "no annotated slice in the evaluation or training split to localise")
    return pd.concat(parts, ignore_index=True)
