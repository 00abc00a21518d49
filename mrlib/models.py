"""The networks: the report's U-Net, fastMRI's U-Net, and MRNet.

* :class:`SeedUnet` is the report's Figure 3 exactly (365,761 parameters): one pooling
  level, 64 channels at full resolution, and no skip connection.
* :func:`fastmri_unet` is ``fastmri.models.Unet`` (Ronneberger et al. 2015, as fastMRI's
  baseline uses it); :class:`ResidualUnet` adds its input to its output.
* :class:`MRNet` is Bien et al. 2018: torchvision AlexNet ``features``, global average
  pooling, a maximum over the slices of an exam, ``Linear(256, 1)``. The report's
  Figure 4 counts 61,101,097 parameters because it keeps AlexNet's classifier, which the
  forward pass never uses; this module holds only what the forward pass uses. Trained
  from scratch, its convolutions start from He et al. (2015) initialisation (see
  :func:`he_init`).
* :class:`SliceNet` is the in-domain ROI source's per-slice lesion detector: four 3 x 3
  convolution blocks at stride 1 and global *max* pooling. Trained from scratch on the
  synthetic lesions, MRNet's AlexNet features (11 x 11 at stride 4, then two max-pools)
  did not learn to tell a lesion slice from the same slice of its lesion-free twin
  (loss at chance), and its maps did not find the lesions; this network did, at a third of
  the cost (``benchmarks/bench_slice_classifier.py``, the issue notes).
"""

from __future__ import annotations

import torch
from fastmri.models import Unet
from torch import nn

from .errors import MrlibError, ParameterError


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True),
    )


class SeedUnet(nn.Module):
    """The report's U-Net (its Figure 3): ``(B, 1, H, W) -> (B, 1, H, W)``, H and W even."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_double_conv(1, 64), nn.MaxPool2d(2))
        self.middle = _double_conv(64, 128)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(128, 64, kernel_size=2, stride=2),
            _double_conv(64, 64),
            nn.Conv2d(64, 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise MrlibError("SeedUnet", f"needs an even image size, got {tuple(x.shape[-2:])}")
        return self.decoder(self.middle(self.encoder(x)))


def fastmri_unet(chans: int = 32, num_pool_layers: int = 4, drop_prob: float = 0.0) -> Unet:
    """fastMRI's U-Net, one input and one output channel: ``(B, 1, H, W) -> (B, 1, H, W)``."""
    return Unet(in_chans=1, out_chans=1, chans=chans, num_pool_layers=num_pool_layers, drop_prob=drop_prob)


class ResidualUnet(nn.Module):
    """fastMRI's U-Net plus its input: ``(B, 1, H, W) -> x + unet(x)``.

    The network learns the correction of the zero-filled image, not the image: at its
    first step it already returns the zero-filled input, and it reaches a given error in
    fewer steps (residual learning, as in Jin et al. 2017 and Lee et al. 2018). Input and
    target share the input's normalisation (fastMRI's ``UnetDataTransform``), so the sum
    is in the target's units. The weights are those of :func:`fastmri_unet` under ``unet.``.
    """

    def __init__(self, chans: int = 32, num_pool_layers: int = 4) -> None:
        super().__init__()
        self.unet = fastmri_unet(chans=chans, num_pool_layers=num_pool_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.unet(x)


def he_init(module: nn.Module) -> nn.Module:
    """Re-initialise every convolution of ``module`` as He et al. (2015) derive for ReLU
    networks (normal, fan-in, zero bias); return ``module``.

    torchvision's AlexNet keeps PyTorch's default (uniform, a = sqrt(5)), whose variance
    is a third of He's: through five ReLU convolutions without normalisation the
    activations and gradients shrink. Trained from scratch per slice on the `default`
    synthetic lesions (100 training volumes, 20 epochs), MRNet reached a slice AUC of
    0.63 on 24 evaluation volumes with the default initialisation and 0.77-0.81 (two
    seeds) with He's, all else equal.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return module


class MRNet(nn.Module):
    """MRNet: one exam ``(S, 3, 224, 224)`` -> one logit ``(1,)``; ``cam_layer`` is the ReLU
    the CAM hooks by default (``features.4``, after conv2).

    Args:
        pretrained: load torchvision's ImageNet weights for the AlexNet features. They are
            downloaded on first use; offline, this raises a clear :class:`MrlibError`.
            Without them, the features start from :func:`he_init`.
    """

    cam_layer = "features.4"

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        # lazy: torchvision imports torch._dynamo (about 1 s), which every start of the
        # command line and of a chapter without a classifier would pay for
        from torchvision.models import AlexNet_Weights, alexnet  # lazy: see above
        weights = AlexNet_Weights.IMAGENET1K_V1 if pretrained else None
        try:
            backbone = alexnet(weights=weights)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise MrlibError(
                "pretrained", f"could not fetch ImageNet AlexNet weights ({exc}); "
                "train from scratch (pretrained=False) or run where the internet is reachable"
            ) from None
        self.features = backbone.features if pretrained else he_init(backbone.features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(256, 1)

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of each slice: ``(S, 3, H, W) -> (S, 256)``."""
        return self.pool(self.features(x)).flatten(1)

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Each slice's own logit, before the maximum over slices: ``(S, 3, H, W) -> (S, 1)``.

        Grad-CAM scores slices with this. Through the exam logit (a channel-wise maximum
        over slices), a slice would get gradient only through the channels whose maximum
        it holds, so most slices' maps would be partial or empty (see :mod:`mrlib.cam`).
        """
        return self.classifier(self.slice_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 4 or x.shape[0] == 0:
            raise MrlibError("MRNet input", f"expected one exam (S, 3, H, W) with S >= 1, got {tuple(x.shape)}")
        return self.classifier(self.slice_features(x).max(dim=0).values)


class SliceNet(nn.Module):
    """A small per-slice lesion detector: slices ``(S, 3, H, W)`` -> one logit each ``(S, 1)``.

    ``features``: four blocks of 3 x 3 convolution, BatchNorm and ReLU with ``w``, ``2w``,
    ``4w`` and ``8w`` channels at stride 1, a 2 x 2 max-pool after each of the first two,
    so the last blocks see an ``(H/4, W/4)`` grid (32 x 32 at 128 px). Then global *max*
    pooling and ``Linear(8w, 1)``: a lesion a few pixels wide moves the maximum of a
    channel that responds to it, where an average over the whole grid would dilute it.

    Same interface as :class:`MRNet`: :meth:`slice_logits` scores slices, ``forward`` an exam
    (the maximum of its slices' logits), ``cam_layer`` is the ReLU the CAM hooks by default
    (``features.13``, the last block's).
    """

    cam_layer = "features.13"

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ParameterError("width", f"must be a positive integer, got {width!r}")
        layers: list[nn.Module] = []
        c_in = 3
        for k in range(4):
            c_out = width * 2 ** k
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            layers += [nn.MaxPool2d(2)] if k < 2 else []
            c_in = c_out
        self.features = he_init(nn.Sequential(*layers))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(c_in, 1)

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Each slice's logit: ``(S, 3, H, W) -> (S, 1)``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """An exam ``(S, 3, H, W)`` (or ``(1, S, 3, H, W)``) -> ``(1,)``: its slices' largest logit."""
        if x.ndim == 5 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 4 or x.shape[0] == 0:
            raise MrlibError("SliceNet input", f"expected one exam (S, 3, H, W) with S >= 1, got {tuple(x.shape)}")
        return self.slice_logits(x).max(dim=0).values


#: classifier architecture name -> constructor (chapter 3's ``slice_arch``; exam classifiers are MRNet)
CLASSIFIER_ARCHS = {"mrnet": MRNet, "slicenet": SliceNet}


def build_classifier(arch: str = "mrnet", pretrained: bool = False) -> nn.Module:
    """A classifier by name: ``"mrnet"`` (:class:`MRNet`, ``pretrained`` as there) or
    ``"slicenet"`` (:class:`SliceNet`)."""
    if arch not in CLASSIFIER_ARCHS:
        raise ParameterError("slice_arch", f"unknown classifier {arch!r}; use one of {', '.join(CLASSIFIER_ARCHS)}")
    return MRNet(pretrained=pretrained) if arch == "mrnet" else SliceNet()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


UNET_KINDS = ("unet", "residual", "seed")


def build_unet(kind: str = "unet", chans: int = 32, num_pool_layers: int = 4) -> nn.Module:
    """A reconstruction network by name: ``"unet"`` (fastMRI's), ``"residual"`` (fastMRI's
    plus its input, :class:`ResidualUnet`) or ``"seed"`` (the report's)."""
    if kind == "unet":
        return fastmri_unet(chans=chans, num_pool_layers=num_pool_layers)
    if kind == "residual":
        return ResidualUnet(chans=chans, num_pool_layers=num_pool_layers)
    if kind == "seed":
        return SeedUnet()
    raise ParameterError("model", f"unknown U-Net {kind!r}; use one of {', '.join(UNET_KINDS)}")
