"""MRNet's input preprocessing and its inverse, shared by training and Grad-CAM.

Bien et al. (2018) centre-crop each slice to 224 x 224, scale the exam to 0-255, subtract
a mean and divide by a standard deviation measured on their data, and repeat the slice
into AlexNet's three channels. kneeMRI and fastMRI slices may be smaller than 224 (the
synthetic presets are), so a slice smaller than 224 is resized up instead of cropped.
:func:`to_source` undoes whichever happened, so a map over the classifier's input lands
on the pixels of the image it came from.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .data import kneemri, mrnet
from .errors import DataError, ParameterError
from .metrics import AUC_CI_METHOD, roc_auc, score_auc_ci
from .runtime import progress_bar
from .train import fit

INPUT_SIZE = 224
#: Bien et al. 2018's intensity mean and standard deviation on the 0-255 scale.
MEAN, STD = 58.09, 49.73


def prepare_exam(
    volume: np.ndarray | torch.Tensor, flip_ud: bool = False, where: str = "exam", size: int = INPUT_SIZE
) -> torch.Tensor:
    """Turn one exam into MRNet's input.

    Args:
        volume: ``(S, H, W)`` slices, any real dtype.
        flip_ud: flip each slice up/down first (for data stored the other way up from
            the classifier's training data).
        where: the file to name in an error.
        size: the input size; Bien et al. use 224. A smaller size (e.g. 112) cuts the
            cost four-fold for CPU presets; AlexNet's features still apply.

    Returns:
        float32 tensor ``(S, 3, size, size)``.
    """
    x = torch.as_tensor(np.asarray(volume) if not torch.is_tensor(volume) else volume).float()
    if x.ndim != 3 or x.shape[0] == 0:
        raise DataError(where, f"expected an exam of shape (slices, H, W) with at least one slice, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(where, "holds NaN or Inf values")
    if flip_ud:
        x = x.flip(-2)
    h, w = x.shape[-2:]
    if min(h, w) >= size:
        top, left = (h - size) // 2, (w - size) // 2
        x = x[:, top : top + size, left : left + size]
    else:
        x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo).clamp_min(1e-12) * 255.0
    x = (x - MEAN) / STD
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def to_source(maps: torch.Tensor | np.ndarray, source_shape: tuple[int, int], flip_ud: bool = False) -> np.ndarray:
    """Map per-slice maps over the classifier's input back onto the source slices.

    Args:
        maps: ``(S, size, size)``, the input size :func:`prepare_exam` used.
        source_shape: ``(H, W)`` of the slices :func:`prepare_exam` was given.
        flip_ud: the same flag given to :func:`prepare_exam`.

    Returns:
        float32 array ``(S, H, W)``; pixels the crop cut away are 0.
    """
    m = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    size = m.shape[-1]
    h, w = source_shape
    if min(h, w) >= size:
        out = torch.zeros((m.shape[0], h, w))
        top, left = (h - size) // 2, (w - size) // 2
        out[:, top : top + size, left : left + size] = m
    else:
        out = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    if flip_ud:
        out = out.flip(-2)
    return out.numpy()


# --------------------------------------------------------------------------- training


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, np.ndarray]:
    """Split case indices into train/val/test, keeping each label's share in every split.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, each sorted; every split gets at
        least one case of each label that has three or more cases.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, round(len(idx) * test_fraction)) if test_fraction > 0 and len(idx) >= 3 else 0
        n_val = max(1, round(len(idx) * val_fraction)) if val_fraction > 0 and len(idx) >= 3 else 0
        out["test"] += idx[:n_test].tolist()
        out["val"] += idx[n_test : n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val :].tolist()
    return {k: np.array(sorted(v), dtype=int) for k, v in out.items()}


def exam_logits(model: torch.nn.Module, exams: list[torch.Tensor], idx: np.ndarray, device: torch.device) -> np.ndarray:
    """MRNet's logit for each exam ``exams[i]`` (``(S, 3, s, s)``), ``i`` in ``idx``."""
    model.eval()
    with torch.no_grad():
        return np.array([model(exams[i].to(device)).item() for i in idx], dtype=np.float64)


def train_mrnet(
    model: torch.nn.Module,
    exams: list[torch.Tensor],
    labels: np.ndarray,
    splits: dict[str, np.ndarray],
    out_dir: str,
    epochs: int = 10,
    lr: float = 1e-5,
    weight_decay: float = 0.01,
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train MRNet with Bien et al.'s recipe, one exam per step.

    Adam (``lr``, ``weight_decay``), binary cross-entropy with the positive class
    weighted by the negative/positive ratio of the training split, ``ReduceLROnPlateau``
    on the validation loss (patience 5, factor 0.3, as published); ``best.pt`` is the
    epoch with the lowest validation loss. Exams are visited in an order drawn from
    ``(seed, epoch)``, so a resumed run repeats an uninterrupted one.

    Args:
        exams: prepared exams ``(S, 3, s, s)`` (:func:`prepare_exam`), on the CPU.
        labels: ``(n_exams,)`` 0/1.
        splits: ``{"train": idx, "val": idx, ...}`` from :func:`stratified_split`.
    """
    device = next(model.parameters()).device
    labels = np.asarray(labels).astype(np.float32)
    train_idx, val_idx = splits["train"], splits["val"]
    n_pos = float(labels[train_idx].sum())
    pos_weight = torch.tensor([(len(train_idx) - n_pos) / max(n_pos, 1.0)], device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(train_idx)
        return (int(i) for i in order)

    def step(m: torch.nn.Module, i: int) -> torch.Tensor:
        logit = m(exams[i].to(device))
        return loss_fn(logit, torch.tensor([labels[i]], device=device))

    def validate(m: torch.nn.Module) -> dict[str, float]:
        logits = exam_logits(m, exams, val_idx, device)
        y = labels[val_idx]
        loss = loss_fn(torch.tensor(logits, dtype=torch.float32, device=device), torch.tensor(y, device=device))
        auc = roc_auc(y, logits) if 0 < y.sum() < len(y) else float("nan")
        return {"val_loss": loss.item(), "val_auc": auc}

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=5, factor=0.3, threshold=1e-4)
    # the epoch count is not part of it: a finished run may be resumed for more epochs
    config = {"lr": lr, "weight_decay": weight_decay, "seed": seed,
              "n_train": len(train_idx), "n_val": len(val_idx)}
    return fit(model, batches, step, validate, optimizer, epochs, out_dir, scheduler=scheduler,
               monitor="val_loss", mode="min", resume=resume, config=config, progress=progress, desc="MRNet")


def evaluate_mrnet(
    model: torch.nn.Module, exams: list[torch.Tensor], labels: np.ndarray, idx: np.ndarray,
    threshold: float = 0.5, seed: int = 0,
) -> tuple[dict[str, float], np.ndarray]:
    """Test-split metrics: AUC with a 95 % score interval (:func:`mrlib.metrics.score_auc_ci`,
    non-degenerate at perfect separation), and accuracy at ``threshold``.

    Returns:
        ``(metrics, probabilities)``; metrics hold ``auc``, ``auc_ci`` ([low, high]),
        ``auc_ci_method``,
        ``n_test``, ``n_positive``, ``accuracy``, ``sensitivity``, ``specificity``, ``threshold``.
    """
    device = next(model.parameters()).device
    y = np.asarray(labels)[idx].astype(int)
    prob = 1 / (1 + np.exp(-exam_logits(model, exams, idx, device)))
    pred = (prob >= threshold).astype(int)
    metrics = {
        "auc": roc_auc(y, prob),
        "auc_ci": list(score_auc_ci(y, prob)),
        "auc_ci_method": AUC_CI_METHOD,
        "n_test": int(len(y)),
        "n_positive": int(y.sum()),
        "accuracy": float((pred == y).mean()),
        "sensitivity": float(pred[y == 1].mean()) if y.sum() else float("nan"),
        "specificity": float(1 - pred[y == 0].mean()) if (y == 0).any() else float("nan"),
        "threshold": float(threshold),
    }
    return metrics, prob


# --------------------------------------------------------------------------- exam sources

Exams = tuple[list[torch.Tensor], np.ndarray, list[str], dict[str, np.ndarray]]

#: name -> exam source class: the data a classifier (and so an ROI source) is trained on.
SOURCES: dict[str, type["ExamSource"]] = {}


class ExamSource:
    """The exams a classifier learns from; its Grad-CAM maps are an ROI source.

    A subclass with a ``name`` registers itself and overrides :meth:`load`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SOURCES[cls.name] = cls

    def check_task(self, task: str) -> str:
        if task not in self.tasks:
            raise ParameterError("task", f"{self.name} has the tasks {', '.join(self.tasks)}, not {task!r}")
        return task

    def load(self, manifest: dict, task: str, plane: str, size: int, seed: int, progress: bool) -> Exams:
        """``(exams (S, 3, size, size) each, labels (n,), exam names, splits)``."""
        raise NotImplementedError


class KneeMRISource(ExamSource):
    name = "kneemri"
    description = "kneeMRI (Stajduhar et al. 2017): sagittal exams with ACL diagnoses, split 60/20/20 by label"
    tasks = ("acl", "acl_complete")

    def load(self, manifest, task, plane, size, seed, progress):
        if not manifest.get("kneemri"):
            raise DataError(manifest["data_dir"], "holds no kneemri/metadata.csv for the classifier")
        self.check_task(task)
        ds = kneemri.KneeMRIDataset(manifest["kneemri"], task=task)
        names = list(ds.df.volumeFilename)
        exams = [prepare_exam(ds[i][0], where=names[i], size=size)
                 for i in progress_bar(range(len(ds)), desc="kneeMRI exams", progress=progress)]
        labels = np.array(ds.labels)
        return exams, labels, names, stratified_split(labels, seed=seed)


class MRNetSource(ExamSource):
    name = "mrnet"
    description = ("MRNet-v1.0 (Bien et al. 2018): its train split divided into train/val, "
                   "its valid split the test set")
    tasks = ("abnormal", "acl", "meniscus")

    def load(self, manifest, task, plane, size, seed, progress):
        root = mrnet.find_root(manifest["data_dir"])
        if root is None:
            raise DataError(manifest["data_dir"], "holds no MRNet-v1.0 directory")
        exams, labels, names, split_of = [], [], [], []
        for split in mrnet.SPLITS:
            series = mrnet.read_labels(root, split, task)
            for exam_id, label in progress_bar(series.items(), desc=f"MRNet {split}", progress=progress):
                exams.append(prepare_exam(mrnet.load_exam(root, split, plane, exam_id), where=f"{split}/{exam_id}", size=size))
                labels.append(int(label))
                names.append(f"{split}/{plane}/{exam_id}")
                split_of.append(split)
        labels, split_of = np.array(labels), np.array(split_of)
        train_all = np.flatnonzero(split_of == "train")
        inner = stratified_split(labels[train_all], val_fraction=0.2, test_fraction=0.0, seed=seed)
        splits = {"train": train_all[inner["train"]], "val": train_all[inner["val"]],
                  "test": np.flatnonzero(split_of == "valid")}
        return exams, labels, names, splits


def load_exams(
    manifest: dict, source: str = "kneemri", task: str = "acl", plane: str = "sagittal",
    size: int = INPUT_SIZE, seed: int = 0, progress: bool = True,
) -> Exams:
    """Load and prepare the classifier's exams, with labels and train/val/test splits.

    Args:
        manifest: the run manifest (notebook 01).
        source: a name of :data:`SOURCES` (``kneemri``, ``mrnet``).
        task: the source's label (see each source's ``tasks``).
        plane: MRNet-v1.0's plane (kneeMRI is sagittal only).

    Returns:
        ``(exams (S, 3, size, size) each, labels (n,), exam names, splits)``.
    """
    if source not in SOURCES:
        raise ParameterError("source", f"unknown classifier data {source!r}; use one of {', '.join(SOURCES)}")
    return SOURCES[source]().load(manifest, task, plane, size, seed, progress)
