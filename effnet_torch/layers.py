"""The PyTorch twin's building blocks: conv+BN, BatchNorm honouring the conventions, DropPath, SE, padding.

Each layer translates one `Conventions` field in exactly one place (padding in `ConvBN`, BN constants and the
running-variance rule in `BatchNorm`, the activation in `make_activation`). Nothing here knows a channel count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effnet_spec import Conventions, pad_amounts

__all__ = ["BatchNorm", "ConvBN", "DropPath", "SqueezeExcite", "make_activation", "init_conv_", "apply_keep_mask"]


def make_activation(name: str) -> nn.Module:
    """The activation a `Conventions.activation` names ("silu" or "relu6")."""
    if name == "silu":
        return nn.SiLU()
    if name == "relu6":
        return nn.ReLU6()
    raise ValueError(f"unknown activation {name!r}; expected 'silu' or 'relu6'")


def init_conv_(conv: nn.Conv2d) -> None:
    """Reference init (TF EfficientNet, torchvision): normal(0, sqrt(2 / fan_out)), fan_out over groups."""
    k_h, k_w = conv.kernel_size
    fan_out = k_h * k_w * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with eps/momentum from the conventions and a choice of running-variance update.

    `running_var="unbiased"` is PyTorch's own rule (the n/(n-1)-corrected batch variance feeds the running
    average); `"biased"` feeds the plain batch variance, as Flax does. Normalisation uses the biased
    batch variance in train mode either way.
    """

    def __init__(self, num_features: int, conv: Conventions):
        super().__init__(num_features, eps=conv.bn_eps, momentum=conv.torch_momentum)
        self.biased_running_var = conv.running_var == "biased"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.biased_running_var):
            return super().forward(x)
        self._check_input_dim(x)
        y = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            m = self.momentum
            self.running_mean.mul_(1.0 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
            self.running_var.mul_(1.0 - m).add_(var.to(self.running_var.dtype), alpha=m)
            self.num_batches_tracked.add_(1)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", running_var={'biased' if self.biased_running_var else 'unbiased'}"


class ConvBN(nn.Module):
    """conv (no bias) -> BN -> optional activation, padded per `conv.padding`.

    `tf_same` pads from the actual input size at every call (extra pixel bottom/right), so any H, W works;
    `symmetric` uses the conv's own fixed padding.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        conv: Conventions,
        *,
        groups: int = 1,
        act: bool = True,
    ):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, conv.padding
        fixed = pad_amounts("symmetric", 0, kernel, stride)[0] if conv.padding == "symmetric" else 0
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=fixed, groups=groups, bias=False)
        self.bn = BatchNorm(out_ch, conv)
        self.act = make_activation(conv.activation) if act else nn.Identity()
        init_conv_(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "tf_same":
            top, bottom = pad_amounts("tf_same", x.shape[-2], self.kernel, self.stride)
            left, right = pad_amounts("tf_same", x.shape[-1], self.kernel, self.stride)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Global average pool -> reduce (1x1, bias) -> SiLU -> excite (1x1, bias) -> sigmoid gate."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.excite = nn.Conv2d(squeeze, channels, 1, bias=True)
        init_conv_(self.reduce)
        init_conv_(self.excite)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.excite(F.silu(self.reduce(s)))
        return x * torch.sigmoid(s)


def apply_keep_mask(x: torch.Tensor, mask: torch.Tensor, rate: float, what: str, shape: tuple[int, ...]):
    """x * mask / (1 - rate), with `mask` checked to be `shape` and broadcast over x's trailing dims."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{what}: expected a keep-mask of shape {shape}, got {got}")
    mask = mask.to(device=x.device, dtype=x.dtype).reshape(shape + (1,) * (x.ndim - len(shape)))
    return x * mask / (1.0 - rate)


class DropPath(nn.Module):
    """Per-sample stochastic depth on a residual branch: drop whole samples, scale the kept by 1/keep.

    Acts only in train mode. A precomputed 0/1 keep-mask of shape (N,) replaces the random draw, so parity
    tests can feed both twins the same randomness.
    """

    def __init__(self, rate: float):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath: rate must lie in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return x
        if mask is None:
            if self.rate == 0.0:
                return x
            mask = torch.empty(x.shape[0], device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.rate)
        return apply_keep_mask(x, mask, self.rate, "DropPath", (x.shape[0],))

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"
