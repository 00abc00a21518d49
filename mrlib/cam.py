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

* **Layer.** A map is only as fine as its layer's activation grid. AlexNet's last
  convolution is a 6 x 6 grid at 112 px input, too coarse for a lesion a few pixels wide;
  the default layer is ``features.4`` (after conv2: 13 x 13 at 112 px, 15 x 15 at 128 px),
  and LayerCAM (Jiang et al. 2021) is designed for such shallow layers.
* **Gate.** With a per-slice classifier (the in-domain ROI source), the Youden threshold
  ``tau`` on a slice's probability is stored with the maps; :func:`gate_maps` zeroes the
  map of a slice the classifier calls healthy, so that it gets no up-weighting.

HDF5 layout written by :func:`compute_heatmaps`::

    /{method}/{file_stem}/maps    float32 (S, H, W), in [0, 1], the target's geometry
    /{method}/{file_stem}/scores  float32 (S,), each slice's MRNet logit
    attrs: methods, flip_ud, target_layer, grid (JSON [h, w]: the layer's activation grid,
           the maps' true resolution), input_size, image_shapes (JSON), source, seed,
           tau (NaN: no gate), mrlib_format

This layout is the contract of a heatmap file: a user's own maps in it weight the U-Net
as the computed ones do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .artifacts import atomic_path
from .classifier import INPUT_SIZE, prepare_exam, to_source
from .errors import DataError, MrlibError, ParameterError
from .data.boxes import boxes_mask
from .metrics import LOCALIZATION_COLUMNS, box_iou, energy_in_boxes, localization_row, pointing_game
from .runtime import progress_bar
from .stats import cluster_bootstrap

#: The CAM methods by lowercase name: the names of their ``pytorch_grad_cam`` classes
#: (:func:`check_method` gives the class).
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "layercam": "LayerCAM"}

#: Name of the default target layer, as stored in the heatmap file, of a model that names none
#: (MRNet's is the same: conv2's ReLU).
DEFAULT_TARGET_LAYER = "features.4"
#: The ``cam_layer`` value that means each classifier's own ``cam_layer`` (MRNet: ``features.4``,
#: SliceNet: ``features.13``).
AUTO_LAYER = "auto"

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
    # lazy: grad-cam imports torchvision and torch._dynamo (about 1.5 s), which every start
    # of the command line and of a chapter that draws no map would pay for
    import pytorch_grad_cam  # lazy: see above
    return getattr(pytorch_grad_cam, METHODS[key])


def default_target_layer(model: nn.Module, name: str = AUTO_LAYER) -> nn.Module:
    """The module ``name`` of ``model``; ``"auto"`` (the default) is the model's own
    ``cam_layer`` (MRNet's ``features.4``, conv2's rectified maps; :class:`~mrlib.models.SliceNet`'s
    ``features.13``), or :data:`DEFAULT_TARGET_LAYER` for a model that names none.

    Always hook a ReLU (``features.1``, ``.4``, ``.7``, ``.9``, ``.11``), not the Conv2d
    before it:

    * Grad-CAM is defined on rectified feature maps (Selvaraju et al. 2017); pre-ReLU
      activations are mostly negative, and a sum of channel weights times negative
      activations gives maps dominated by where channels are *off*.
    * AlexNet's ReLU is in-place. ``grad-cam`` stores a hooked activation as
      ``output.cpu().detach()``, which on the CPU shares storage with the tensor the
      in-place ReLU then overwrites, but on CUDA is a copy. Hooking a Conv2d would
      therefore give post-ReLU activations on the CPU and pre-ReLU ones on a GPU:
      different maps for the same model. Each ReLU is followed by a max-pool or a
      convolution, which does not write in place, so its maps do not depend on the device.
    """
    if name == AUTO_LAYER:
        name = getattr(model, "cam_layer", DEFAULT_TARGET_LAYER)
    modules = dict(model.named_modules())
    if name not in modules or not isinstance(modules[name], nn.ReLU):
        relus = [n for n, m in modules.items() if isinstance(m, nn.ReLU)]
        raise ParameterError("cam_layer", f"{type(model).__name__} has no ReLU layer {name!r}; use one of "
                                          f"{', '.join(relus)}")
    return modules[name]


def gate_maps(maps: np.ndarray, scores: np.ndarray, tau: float) -> np.ndarray:
    """Zero the map of every slice whose probability ``sigmoid(score)`` is below ``tau``.

    Args:
        maps: ``(S, H, W)``; scores: ``(S,)`` slice logits; tau: a probability in (0, 1),
            or NaN for no gate (the maps come back unchanged).

    Returns:
        ``(S, H, W)``, a new array.
    """
    maps = np.array(maps, dtype=np.float32, copy=True)
    if tau is None or not np.isfinite(tau):
        return maps
    prob = 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))
    maps[prob < float(tau)] = 0.0
    return maps


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
    mode afterwards, its parameters' ``requires_grad`` restored and their ``.grad`` reset to
    ``None``. Hooks are released by the CAM object's context manager, also on error.
    """
    cam_cls = check_method(method)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # lazy: as check_method's
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
    # A map needs the gradient at the target layer only: with the parameters frozen and the
    # layer's output made a leaf (this hook runs before grad-cam's, which then sees the leaf),
    # backward stops there and computes no weight gradients; the maps are unchanged.
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    cut = layer.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True))
    try:
        with cam_cls(model=wrapper, target_layers=[layer]) as cam:
            try:
                for start in range(0, x.shape[0], batch_size):
                    batch = x[start : start + batch_size].to(dev, torch.float32)
                    targets = [ClassifierOutputTarget(0)] * batch.shape[0]  # the slice's own logit
                    maps.append(np.asarray(cam(input_tensor=batch, targets=targets), dtype=np.float32))
                    scores.append(cam.outputs.detach()[:, 0].float().cpu().numpy())
            except IndexError as exc:
                # grad-cam's __exit__ swallows IndexError (it only prints it); re-raise as ours
                raise MrlibError("grad-cam", f"{method} failed: IndexError: {exc}") from exc
    finally:
        cut.remove()
        for p in frozen:
            p.requires_grad_(True)
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
    source: str = "",
    seed: int = 0,
    tau: float = float("nan"),
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
        source, seed, tau: the ROI source and classifier seed the maps come from, and its
            gate threshold (NaN: none), stored as attributes.

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
            f.attrs["source"] = str(source)
            f.attrs["seed"] = int(seed)
            f.attrs["tau"] = float(tau)
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
            source=str(attrs.get("source", "")),
            seed=int(attrs.get("seed", 0)),
            tau=float(attrs.get("tau", float("nan"))),
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
    layer: str = AUTO_LAYER,
):
    """Localisation on the classifier's own kind of data: exams scored against their boxes.

    Args:
        exams: ``(volume (S, H, W), {slice: [(x, y, w, h), ...]})`` pairs, e.g. kneeMRI test
            exams with a tear and their ACL ROI box on the slices it spans.
        methods: CAM method names.

    Returns:
        ``pandas.DataFrame`` with the columns :data:`mrlib.metrics.LOCALIZATION_COLUMNS`.
    """
    for m in methods:
        check_method(m)
    maps_by_method: dict[str, list] = {str(m).strip().lower(): [] for m in methods}
    for volume, boxes in exams:
        x = prepare_exam(volume, flip_ud=flip_ud, size=input_size)
        for method in maps_by_method:
            maps, _ = slice_cams(model, x, method, target_layer=default_target_layer(model, layer), batch_size=batch_size)
            src = to_source(maps, tuple(volume.shape[-2:]), flip_ud=flip_ud)
            maps_by_method[method] += [(src[s], b) for s, b in sorted(boxes.items())]
    rows = [localization_row(m, pairs) for m, pairs in maps_by_method.items()]
    return pd.DataFrame(rows, columns=list(LOCALIZATION_COLUMNS))


#: Columns of the localisation table (:func:`summarize_records`); baseline rows name
#: their baseline in ``method``.
TABLE_COLUMNS = ("source", "seed", "method", "layer", "grid", "split", *LOCALIZATION_COLUMNS[1:])
#: Columns of the per-slice records (:func:`slice_records`).
RECORD_COLUMNS = ("method", "file", "slice", "labels", "pointing_game", "energy_in_box", "iou")


def _grid_text(info: dict) -> str:
    return "x".join(map(str, info["grid"])) if info.get("grid") else ""


def _boxes_of(info: dict, boxes_df, files):
    """The boxes of ``files`` (default: every file the heatmap file holds) that it holds maps of."""
    held = set(info["files"])
    wanted = held if files is None else held & {str(f) for f in files}
    return boxes_df[boxes_df["file"].astype(str).isin(wanted)]


def _slices(df):
    """``(stem, slice, [(x, y, w, h), ...], labels)`` of each annotated slice, in file and slice order."""
    for stem, per_file in df.groupby("file", sort=True):
        for slice_num, per_slice in per_file.groupby("slice", sort=True):
            labels = "; ".join(sorted(set(per_slice["label"].astype(str)))) if "label" in per_slice else ""
            yield (str(stem), int(slice_num), list(per_slice[["x", "y", "width", "height"]].itertuples(index=False, name=None)),
                   labels)


def _maps_reader(path):
    """``(method, stem) -> maps (S, H, W)``, each file's maps read once per method."""
    cache: dict = {}

    def read(method, stem):
        if (method, stem) not in cache:
            cache.clear()  # records are made file by file: keep one volume in memory
            cache[method, stem] = read_heatmaps(path, method, stem)[0]
        return cache[method, stem]
    return read


def _score(m: np.ndarray, boxes, iou_threshold: float) -> tuple[float, float, float]:
    return float(pointing_game(m, boxes)), energy_in_boxes(m, boxes), box_iou(m, boxes, iou_threshold)


def slice_records(heatmaps_path, boxes_df, methods, files, prior_files, twin_path=None,
                  iou_threshold: float = 0.5) -> pd.DataFrame:
    """Every localisation score of every annotated slice of ``files``: each CAM method and
    each baseline on the same slices, one row per (method, slice), columns :data:`RECORD_COLUMNS`.

    Baselines (their ``method``):

    * ``uniform``: a map with no information; each score is the boxes' share of the image;
    * ``box prior``: the mean over the annotated slices of ``prior_files`` (the training
      split) of their box masks: where lesions usually are;
    * ``map prior (<method>)``: the mean of ``method``'s maps over every slice of ``prior_files``;
    * ``ideal at <grid>``: the slice's own box mask average-pooled to the layer's grid and
      upsampled back, the best a map at that grid can do;
    * ``twin shift (<method>)``: with ``twin_path`` (the maps of the lesion-free twins), the
      score on the lesion image minus the same score in the same boxes on the twin (IoU
      not defined): how much of the map the lesion itself moved.

    The boxes of one slice count as their union. ``files`` and ``prior_files`` must not
    overlap (the priors never see the scored split).
    """
    if isinstance(methods, str):
        methods = [methods]
    info = heatmap_info(heatmaps_path)
    df = _boxes_of(info, boxes_df, files)
    if df.empty:
        raise DataError(heatmaps_path, f"none of the {boxes_df['file'].nunique()} annotated file(s) of this split has "
                                       "heatmaps here (do the heatmaps and the annotations come from the same dataset?)")
    prior_files = sorted({str(f) for f in prior_files} & set(info["files"]))
    if set(prior_files) & set(df["file"].astype(str)):
        raise ParameterError("prior_files", "overlap the scored files: a prior must not see the split it is scored on")
    if not prior_files:
        raise DataError(heatmaps_path, "holds no map of the prior files (the training split)")
    shape = tuple(info["image_shapes"][prior_files[0]][1:])
    read = _maps_reader(heatmaps_path)
    priors = {}
    prior_masks = [boxes_mask(shape, b).astype(np.float64)
                   for _, _, b, _ in _slices(boxes_df[boxes_df["file"].astype(str).isin(prior_files)])]
    if prior_masks:
        priors["box prior"] = np.mean(prior_masks, axis=0)
    for method in methods:
        priors[f"map prior ({method})"] = np.mean(np.concatenate([read(method, f) for f in prior_files]), axis=0)
    twin_info = heatmap_info(twin_path) if twin_path is not None and Path(twin_path).is_file() else None
    read_twin = _maps_reader(twin_path) if twin_info else None
    grid = info.get("grid")
    rows = []
    for method in methods:  # method by method, file by file: each volume's maps are read once
        for stem, slice_num, boxes, labels in _slices(df):
            maps = read(method, stem)
            if not 0 <= slice_num < maps.shape[0]:
                raise DataError(heatmaps_path, f"annotated slice {slice_num} of {stem} is beyond its {maps.shape[0]} slices")
            key = dict(file=stem, slice=slice_num, labels=labels)
            scores = _score(maps[slice_num], boxes, iou_threshold)
            rows.append(dict(method=method, **key, **dict(zip(("pointing_game", "energy_in_box", "iou"), scores))))
            if twin_info and stem in twin_info["files"]:
                t_scores = _score(read_twin(method, stem)[slice_num], boxes, iou_threshold)
                rows.append(dict(method=f"twin shift ({method})", **key, pointing_game=scores[0] - t_scores[0],
                                 energy_in_box=scores[1] - t_scores[1], iou=float("nan")))
    for stem, slice_num, boxes, labels in _slices(df):
        key = dict(file=stem, slice=slice_num, labels=labels)
        share = float(boxes_mask(shape, boxes).mean())
        rows.append(dict(method="uniform", **key, pointing_game=share, energy_in_box=share, iou=share))
        for name, prior in priors.items():
            rows.append(dict(method=name, **key, **dict(zip(("pointing_game", "energy_in_box", "iou"),
                                                            _score(prior, boxes, iou_threshold)))))
        if grid:
            mask = torch.from_numpy(boxes_mask(shape, boxes).astype(np.float32))[None, None]
            ideal = F.interpolate(F.adaptive_avg_pool2d(mask, grid), size=shape, mode="bilinear",
                                  align_corners=False)[0, 0].numpy()
            rows.append(dict(method=f"ideal at {_grid_text(info)}", **key, **dict(zip(
                ("pointing_game", "energy_in_box", "iou"), _score(ideal, boxes, iou_threshold)))))
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


def summarize_records(records: pd.DataFrame, info: dict, split: str, by: Sequence[str] = ()) -> pd.DataFrame:
    """Means of :func:`slice_records` per method (and per ``by`` column), with the heatmap
    file's source, seed, layer and grid: the rows of ``localization.csv`` (columns
    :data:`TABLE_COLUMNS` and ``by``)."""
    keys = ["method", *by]
    out = records.groupby(keys, sort=False).agg(
        n_slices=("slice", "size"), pointing_game=("pointing_game", "mean"),
        energy_in_box=("energy_in_box", "mean"), iou=("iou", "mean")).reset_index()
    out.insert(0, "source", info.get("source", ""))
    out.insert(1, "seed", info.get("seed", 0))
    out["layer"], out["grid"], out["split"] = info["target_layer"], _grid_text(info), split
    return out[[*TABLE_COLUMNS[:3], *by, *TABLE_COLUMNS[3:]]]


def localization_report(heatmaps_path, boxes_df, methods, files: Mapping[str, Sequence[str]], twin_path=None,
                        iou_threshold: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter 4's table for one heatmap file: every method and the baselines on the
    annotated slices of the evaluation split, of the selection split (where a method is
    chosen) and of the training split (whose maps weight the U-Net's loss).

    Args:
        files: the file stems of each role: ``{"train": [...], "selection": [...],
            "evaluation": [...]}``. The priors of the evaluation and selection rows are
            averaged over the training split; those of the training rows over the selection
            split, so that a prior never scores the slices it was averaged over.
        twin_path: the maps of the evaluation split's lesion-free twins (twin-shift rows).

    Returns:
        ``(table, records)``: the summary (:func:`summarize_records`) and the per-slice
        records with a ``split`` column. A split without an annotated slice contributes no
        rows (a line says so).
    """
    info = heatmap_info(heatmaps_path)
    parts, recs = [], []
    for split, scored, prior, twins in (("evaluation", files["evaluation"], files["train"], twin_path),
                                        ("selection", files["selection"], files["train"], None),
                                        ("train", files["train"], files["selection"], None)):
        if _boxes_of(info, boxes_df, scored).empty:
            print(f"no annotated slice in the {split} split: no localisation rows for it")
            continue
        r = slice_records(heatmaps_path, boxes_df, methods, scored, prior, twins, iou_threshold)
        parts.append(summarize_records(r, info, split))
        recs.append(r.assign(split=split))
    if not parts:
        raise DataError(heatmaps_path, "no annotated slice in the evaluation or training split to localise")
    return pd.concat(parts, ignore_index=True), pd.concat(recs, ignore_index=True)


def by_group(records: pd.DataFrame, info: dict, acquisitions: dict[str, str]) -> pd.DataFrame:
    """The localisation table broken down by lesion kind (a slice counts in each of its
    boxes' labels) and by acquisition (``acquisitions``: file stem -> PD/PDFS protocol),
    with ``group`` and ``value`` columns and the n of slices per row."""
    parts = []
    for split, r in records.groupby("split", sort=False):
        kinds = r.assign(value=r["labels"].str.split("; ")).explode("value")
        parts.append(summarize_records(kinds, info, split, by=["value"]).assign(group="lesion kind"))
        acq = r.assign(value=r["file"].map(acquisitions).fillna("unknown"))
        parts.append(summarize_records(acq, info, split, by=["value"]).assign(group="acquisition"))
    out = pd.concat(parts, ignore_index=True)
    return out[[*TABLE_COLUMNS[:3], "group", "value", *TABLE_COLUMNS[3:]]]


def paired_difference(records: pd.DataFrame, a: str, b: str, metric: str = "energy_in_box",
                      n_boot: int = 2000, seed: int = 0) -> dict:
    """Method ``a`` minus method ``b`` on the same slices, with a 95 % bootstrap interval
    that resamples volumes (:func:`mrlib.stats.cluster_bootstrap`); for a ``twin shift``
    row ``b`` may be ``None`` (its values are already differences)."""
    ra = records[records["method"] == a].set_index(["file", "slice"])[metric]
    d = ra if b is None else ra - records[records["method"] == b].set_index(["file", "slice"])[metric]
    d = d.dropna()
    mean, low, high, n = cluster_bootstrap(d.to_numpy(), d.index.get_level_values("file"), n_boot, seed)
    return dict(a=a, b=b or "", metric=metric, difference=mean, low=low, high=high, n_slices=int(len(d)), n_volumes=n)


def source_heatmaps(model: nn.Module, volumes, twin_volumes, methods, out_path, twin_path, layer: str,
                    flip_ud: bool, input_size: int, source: str, seed: int, tau: float,
                    batch_size: int = 16, device=None, progress: bool = True) -> Path:
    """Chapter 4's maps of one classifier (a source and seed): every volume with a target
    at ``out_path``, and the lesion-free twins (``twin_volumes``, may be empty) at ``twin_path``."""
    kw = dict(flip_ud=flip_ud, batch_size=batch_size, progress=progress, device=device, input_size=input_size,
              target_layer=default_target_layer(model, layer), source=source, seed=seed, tau=tau)
    compute_heatmaps(model, volumes, methods, out_path, **kw)
    if twin_volumes:
        compute_heatmaps(model, twin_volumes, methods, twin_path, **kw)
    return Path(out_path)
