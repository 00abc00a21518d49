"""One configuration per trained model: every field, its one default and its help.

:class:`UnetConfig` is one U-Net run of chapter 5 (one loss variant, one seed);
:class:`ClassifierConfig` is the classifier of chapter 3. Their defaults are the
``smoke`` preset's values, so a notebook opened alone runs a coherent configuration;
presets (:mod:`mrlib.presets`) override fields by name, the notebooks' ``parameters``
cells declare the same names, and ``python -m mrlib train`` generates its options from
the fields of :class:`UnetConfig`. A name means one thing everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ParameterError


def _f(default: Any, help: str, identity: bool = True):
    """A field with its help text; ``identity=False`` for how a run is executed (device,
    storage), which does not change what it computes and is left out of its config."""
    return field(default=default, metadata={"help": help, "identity": identity})


class _Config:
    """Shared behaviour of the configuration dataclasses."""

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any):
        """Build from a mapping that may hold other names too (a notebook's globals)."""
        values = {name: params[name] for name in cls.field_names() if name in params}
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = type(f.default)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                object.__setattr__(self, f.name, value)
            if isinstance(value, bool) != (want is bool) or not isinstance(value, want):
                raise ParameterError(f.name, f"expected {want.__name__} like the default {f.default!r}, got {value!r}")

    def identity(self) -> dict[str, Any]:
        """The fields that define what is computed (recorded in checkpoints and configs)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("identity", True)}

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


#: one meaning of ``precision`` for the U-Net and the classifiers
_PRECISION = ("training arithmetic: auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 (also on a CPU: about 2x faster "
              "with AMX, numbers then match only on the same kind of CPU) or fp32")


@dataclass(frozen=True)
class UnetConfig(_Config):
    """One U-Net run of chapter 5's ablation."""

    variant: str = _f("unweighted", "loss variant, by name or key, e.g. oracle or oracle[alpha=50] "
                                    "(python -m mrlib variants lists them)")
    seed: int = _f(0, "seed of the initial weights, the slice order and the training masks")
    model: str = _f("unet", "unet (fastMRI's U-Net), residual (fastMRI's U-Net plus its zero-filled input: it learns "
                            "the correction) or seed (the report's Figure 3 U-Net)")
    chans: int = _f(8, "fastMRI U-Net: channels of the first level")
    pools: int = _f(2, "fastMRI U-Net: pooling levels")
    unet_epochs: int = _f(2, "training epochs (the report trained 10)")
    unet_lr: float = _f(1e-3, "learning rate")
    optimizer: str = _f("adam", "adam or rmsprop (fastMRI's baseline)")
    lr_step: int = _f(0, "divide the learning rate by 10 every lr_step epochs; 0 never")
    precision: str = _f("auto", _PRECISION)
    unet_steps_per_epoch: int = _f(0, "training steps per epoch, each epoch a fresh shuffle of the training slices; "
                                      "0: one whole pass")
    unet_batch_size: int = _f(8, "slices per training step (per process under torchrun)")
    unet_val_every: int = _f(1, "validate on the selection split every k epochs and at the last; the best "
                                "checkpoint is the best of those epochs")
    checkpoint: str = _f("last", "which checkpoint chapter 6 evaluates, one rule for every arm: last (the end of the "
                                 "fixed schedule) or best (lowest plain validation MSE, which favours the unweighted arm)")
    weight_rule: str = _f("linear", "heatmap to weight for the gradcam and shuffled variants: linear, threshold, or "
                                     "matched (the threshold whose region covers the true boxes' area on the training "
                                     "bank's lesion slices)")
    alpha: float = _f(4.0, "up-weighting strength of the weighted variants")
    threshold: float = _f(0.5, "heatmap threshold of the threshold rule")
    cam_method: str = _f("gradcam", "which chapter-4 map weights the gradcam variant")
    roi_source: str = _f("fastmri", "whose chapter-4 maps weight the gradcam variant: fastmri (in-domain), kneemri or mrnet; "
                                    "or file:PATH, your own map file (book/reproduce.md)")
    gate: bool = _f(False, "gradcam variant: no up-weighting on a slice the in-domain classifier calls healthy "
                           "(probability below its Youden threshold tau)")
    device: str = _f("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, mps", identity=False)
    storage: str = _f("auto", "where the k-space lives: auto, device, host (pinned) or stream", identity=False)


@dataclass(frozen=True)
class ClassifierConfig(_Config):
    """The injury classifier of chapter 3 (MRNet), whose Grad-CAM maps are the ROIs."""

    roi_source: str = _f("kneemri", "the classifier's data, whose Grad-CAM maps are an ROI source: kneemri, mrnet "
                                    "(MRNet-v1.0 under the data directory) or fastmri (in-domain: the reconstruction "
                                    "data's own lesion boxes, per slice)")
    task: str = _f("", "the label; empty: the source's first. kneemri: acl (any tear) or acl_complete; "
                       "mrnet: abnormal, acl or meniscus; fastmri: lesion")
    plane: str = _f("sagittal", "MRNet-v1.0 plane (kneeMRI is sagittal only)")
    mrnet_epochs: int = _f(2, "training epochs of an exam classifier (kneemri, mrnet)")
    slice_epochs: int = _f(2, "training epochs of a per-slice classifier (fastmri)")
    slice_arch: str = _f("slicenet", "the per-slice (fastmri) classifier: slicenet (a small stride-1 CNN with global "
                                     "max pooling, which learns the synthetic lesions) or mrnet (AlexNet's features, "
                                     "which did not)")
    slice_lr: float = _f(1e-3, "Adam learning rate of a per-slice classifier (fastmri)")
    twin_negatives: float = _f(0.5, "per-slice classifier: the share of negatives that are the same slice of the "
                                    "positive's own lesion-free twin (synthetic data only; the rest are "
                                    "position-matched slices without a lesion)")
    mrnet_lr: float = _f(1e-4, "Adam learning rate of an exam classifier (Bien et al. 2018 fine-tune ImageNet weights at 1e-5; "
                               "from scratch on a CPU 1e-4)")
    mrnet_weight_decay: float = _f(0.0, "Adam weight decay; Bien et al. 2018 use 0.01 to fine-tune ImageNet weights, "
                                        "from scratch it slowed learning")
    mrnet_input_size: int = _f(64, "input size; Bien et al. crop to 224, CPU presets use less")
    pretrained: bool = _f(False, "start from torchvision's ImageNet AlexNet weights (needs the internet)")
    decision_threshold: float = _f(0.5, "probability above which an exam is called positive")
    precision: str = _f("auto", _PRECISION)
    seed: int = _f(0, "seed of the splits, the initial weights and the exam order")
    device: str = _f("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, mps", identity=False)

