"""YOLOv5 v7.0 building blocks. Attribute names follow Ultralytics so state-dict keys match 1:1."""

from __future__ import annotations

import torch
from torch import nn


def autopad(kernel: int, padding: int | None = None, dilation: int = 1) -> int:
    """'same' padding for odd kernels, unless given explicitly."""
    if dilation > 1:
        kernel = dilation * (kernel - 1) + 1
    return kernel // 2 if padding is None else padding


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation; `fuse()` folds the norm into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 d: int = 1, act: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        # yolov5 parity: eps 1e-3; momentum stays 0.1 for the stride probe, then DetectionModel sets 0.03
        self.bn = nn.BatchNorm2d(c2, eps=1e-3)
        self.act = nn.SiLU() if act is None else act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "bn" in self._modules:
            return self.act(self.bn(self.conv(x)))
        return self.act(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """Replace conv+bn by one biased conv computing the same function (eval-mode statistics)."""
        if "bn" not in self._modules:
            return
        conv, bn = self.conv, self.bn
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True).requires_grad_(False).to(conv.weight.device)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        # yolov5 parity: the bias in its operation order, so fused outputs match it to the last bit
        fused.bias.copy_(bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps))
        self.conv = fused
        del self.bn


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv, with a residual add when shapes allow."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 act: nn.Module | None = None):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1, act=act)
        self.cv2 = Conv(hidden, c2, 3, 1, g=g, act=act)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions: two 1x1 branches, n bottlenecks on one, merged by a 1x1."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 act: nn.Module | None = None):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1, act=act)
        self.cv2 = Conv(c1, hidden, 1, 1, act=act)
        self.cv3 = Conv(2 * hidden, c2, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, e=1.0, act=act) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools equal pools of size k, 2k-1, 3k-2."""

    def __init__(self, c1: int, c2: int, k: int = 5, act: nn.Module | None = None):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1, act=act)
        self.cv2 = Conv(hidden * 4, c2, 1, 1, act=act)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along a dimension (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)
