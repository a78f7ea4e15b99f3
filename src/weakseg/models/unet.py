"""U-Net for 2D slices (and 3D volumes) in the shape of the WSL4MIS benchmark's.

Encoder channels ``c, 2c, 4c, 8c, 16c`` (``c = 16`` gives 16-32-64-128-256 and
about 1.8 M parameters in 2D), each level two 3×3 convolutions with batch norm
and LeakyReLU, dropout growing with depth, max-pool down, 1×1 conv + bilinear
up-sampling and concatenation in the decoder (Luo et al., MICCAI 2022;
Ronneberger et al., MICCAI 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


def _nd(spatial_dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if spatial_dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
    if spatial_dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float, spatial_dims: int) -> None:
        super().__init__()
        conv, norm, _ = _nd(spatial_dims)
        drop = nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d
        self.body = nn.Sequential(
            conv(cin, cout, 3, padding=1),
            norm(cout),
            nn.LeakyReLU(0.01, inplace=True),
            drop(dropout) if dropout > 0 else nn.Identity(),
            conv(cout, cout, 3, padding=1),
            norm(cout),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNet(nn.Module):
    """U-Net returning logits ``(B, num_classes, *spatial)``.

    Args:
        in_channels: image channels.
        num_classes: output classes (background included).
        base_channels: channels of the first level (doubles per level).
        depth: number of down-sampling steps (input sides must divide ``2**depth``).
        dropout: dropout of the deepest level; level ``i`` uses
            ``dropout * (0.1, 0.2, 0.4, 0.6, 1.0)[i]`` as in WSL4MIS (0.05 … 0.5).
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 4,
        base_channels: int = 16,
        depth: int = 4,
        dropout: float = 0.5,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1:
            raise ValueError(f"depth and base_channels must be ≥ 1, got {depth}, {base_channels}")
        conv, _, pool = _nd(spatial_dims)
        chans = [base_channels * 2**i for i in range(depth + 1)]
        fractions = [0.1, 0.2, 0.4, 0.6] + [1.0] * max(0, depth - 3)
        fractions = fractions[:depth] + [1.0]
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.pool = pool(2)
        self.encoder = nn.ModuleList(
            _Block(in_channels if i == 0 else chans[i - 1], chans[i], dropout * fractions[i],
                   spatial_dims)
            for i in range(depth + 1)
        )
        self.reduce = nn.ModuleList(conv(chans[i + 1], chans[i], 1) for i in range(depth))
        self.decoder = nn.ModuleList(
            _Block(2 * chans[i], chans[i], 0.0, spatial_dims) for i in range(depth)
        )
        self.head = conv(chans[0], num_classes, 3, padding=1)
        self._mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.depth)):
            skip = skips.pop()
            x = F.interpolate(self.reduce[i](x), size=skip.shape[2:], mode=self._mode,
                              align_corners=True)
            x = self.decoder[i](torch.cat([skip, x], dim=1))
        return self.head(x)
