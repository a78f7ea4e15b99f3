"""Network registry: ``MODELS.build(name, in_channels=..., num_classes=..., **params)``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from weakseg.models.cam import UNetCAM
from weakseg.models.unet import UNet
from weakseg.registry import Registry

__all__ = ["MODELS", "UNet", "UNetCAM"]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


MODELS.register("unet2d", help="2D U-Net 16-32-64-128-256 (≈1.8 M params), WSL4MIS shape")(
    partial(UNet, spatial_dims=2)
)
MODELS.register("unet3d", help="3D U-Net, same blocks with 3D convolutions")(
    partial(UNet, spatial_dims=3)
)
MODELS.register("unet2d_cam", help="U-Net encoder + global average pooling + linear: a "
                "classifier from image tags whose class maps are CAMs (C13)")(UNetCAM)
