"""ConvNet-D (D = 3..6), the dataset-distillation workhorse.

D blocks of 3x3 conv (width 128, padding 1) -> norm -> ReLU -> 2x2 average
pooling, then one linear layer on the flattened map. The module layout
(``features.{4i+0..3}``, ``classifier``) is that of the MTT/RDED ConvNet, so their
checkpoints load directly. ``norm='instance'`` is PAD's expert variant: GroupNorm
with one group per channel (instance norm with affine parameters, no running stats).
"""
from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, num_classes: int, depth: int = 3, width: int = 128, norm: str = "batch",
                 input_size: int = 32, in_channels: int = 3):
        super().__init__()
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be batch, instance or none, not {norm}")
        layers: list[nn.Module] = []
        c, s = in_channels, input_size
        for _ in range(depth):
            layers.append(nn.Conv2d(c, width, kernel_size=3, padding=1))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            elif norm == "instance":
                layers.append(nn.GroupNorm(width, width, affine=True))
            else:
                layers.append(nn.Identity())
            layers.append(nn.ReLU(inplace=True))
            layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            c, s = width, s // 2
        if s < 1:
            raise ValueError(f"input size {input_size} is too small for a depth-{depth} ConvNet")
        self.features = nn.Sequential(*layers)
        self.depth, self.width, self.norm, self.input_size = depth, width, norm, input_size
        self.feature_dim = width * s * s
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))
