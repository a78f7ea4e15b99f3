"""Classification network for class activation maps (METHODS.md C13; Zhou et al., CVPR 2016).

The encoder of the segmentation :class:`~weakseg.models.unet.UNet` (same blocks, same
channels), global average pooling and one linear layer ``(w_c, b_c)`` per class. Because
pooling and the linear layer are both linear, the classifier's logit of class ``c`` is the
spatial mean of the **class map**

.. math::

    M_c(x, y) = \\sum_k w^c_k\\, \\tilde A_k(x, y) + b_c ,
    \\qquad \\mathrm{logit}_c = \\frac{1}{HW} \\sum_{x, y} M_c(x, y),

with :math:`\\tilde A_k` the last encoder feature maps bilinearly up-sampled to the image
size (pooling the up-sampled maps instead of the coarse ones: the same classifier up to the
interpolation's border weights). :meth:`UNetCAM.forward` returns the maps ``M`` as
``(B, C, H, W)`` "logits", so the trainer, checkpoints and evaluation treat the classifier
like any segmentation network, and the loss ``tag_bce`` (:mod:`weakseg.losses.tags`) pools
them. The class activation map is ``CAM_c = ReLU(M_c − b_c)`` normalised to ``[0, 1]`` per
image and class (:meth:`UNetCAM.cam`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.models.unet import UNet

__all__ = ["UNetCAM", "normalise_maps"]


def normalise_maps(maps: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """``ReLU(maps)`` divided by its maximum per image and class (all-zero maps stay 0).

    Shape:
        ``(B, C, *spatial)`` → same shape, values in ``[0, 1]``.
    """
    pos = maps.clamp_min(0)
    peak = pos.amax(dim=tuple(range(2, maps.ndim)), keepdim=True)
    return pos / peak.clamp_min(eps)


class UNetCAM(nn.Module):
    """U-Net encoder + global average pooling + linear classifier; returns class maps.

    Args:
        in_channels, num_classes, base_channels, depth, dropout: as for
            :class:`~weakseg.models.unet.UNet` (``num_classes`` includes the background,
            whose map is trained only if the loss includes it).
        spatial_dims: 2 only (CAMs are computed per slice).

    Example:
        >>> net = UNetCAM(num_classes=3, base_channels=4, depth=2).eval()
        >>> net(torch.rand(2, 1, 16, 16)).shape, net.cam(torch.rand(2, 1, 16, 16)).shape
        (torch.Size([2, 3, 16, 16]), torch.Size([2, 3, 16, 16]))
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 4, base_channels: int = 16,
                 depth: int = 4, dropout: float = 0.5, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"unet2d_cam is a 2D model; spatial_dims must be 2, got "
                             f"{spatial_dims}")
        unet = UNet(in_channels=in_channels, num_classes=num_classes,
                    base_channels=base_channels, depth=depth, dropout=dropout, spatial_dims=2)
        self.spatial_dims = 2
        self.depth = depth
        self.pool = unet.pool
        self.encoder = unet.encoder                      # same blocks as the U-Net's encoder
        self.classifier = nn.Linear(base_channels * 2**depth, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last encoder feature maps ``A`` ``(B, K, H / 2^depth, W / 2^depth)``."""
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
        return x

    def _weighted(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_k w^c_k A_k`` up-sampled to the image size (no bias)."""
        a = self.features(x)
        m = torch.einsum("bkhw,ck->bchw", a, self.classifier.weight)
        return F.interpolate(m, size=x.shape[2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class maps ``M`` ``(B, C, H, W)``; their spatial mean is the classifier's logit."""
        return self._weighted(x) + self.classifier.bias.view(1, -1, 1, 1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Image-level logits ``(B, C)`` (global average of :meth:`forward`)."""
        return self.forward(x).mean(dim=(2, 3))

    @torch.no_grad()
    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``(B, C, H, W)`` in ``[0, 1]``: ``ReLU(Σ_k w^c_k A_k)``
        up-sampled, divided by its maximum per image and class."""
        return normalise_maps(self._weighted(x))
