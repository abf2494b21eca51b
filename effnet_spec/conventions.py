"""Numerical conventions, stored in units that mean the same thing in both frameworks.

`bn_decay` is the share of the old running statistic kept at each update (TF/Flax "momentum"); PyTorch's
`momentum` is `1 - bn_decay`. Each twin translates a field in exactly one place.

Per weight source (docs/design.md, "Weight sources"):
- torchvision b0-b4, timm `efficientnet_*`: symmetric padding, eps 1e-5, PyTorch momentum 0.1 (decay 0.9).
- torchvision b5-b7: symmetric padding, eps 1e-3, momentum 0.01 (decay 0.99).
- torchvision V2 (S, M, L): symmetric padding, eps 1e-3, PyTorch's default momentum 0.1 (decay 0.9).
- timm `tf_efficientnet_*` and `tf_efficientnetv2_*`, efficientnet_pytorch, TF/Keras: TF SAME padding, eps 1e-3,
  decay 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Conventions", "SOURCES", "conventions_for", "PADDINGS", "ACTIVATIONS", "RUNNING_VARS"]

PADDINGS = ("symmetric", "tf_same")
ACTIVATIONS = ("silu", "relu6")
RUNNING_VARS = ("unbiased", "biased")


@dataclass(frozen=True, kw_only=True)
class Conventions:
    padding: str = "symmetric"  # "symmetric": k//2 on every side; "tf_same": TF SAME, extra pixel bottom/right
    bn_eps: float = 1e-3  # added to the variance inside the sqrt
    bn_decay: float = 0.99  # running = decay * running + (1 - decay) * batch
    running_var: str = "unbiased"  # batch variance fed to the running average: n/(n-1) corrected or not
    activation: str = "silu"  # filled in from the family by the resolver

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"Conventions: padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Conventions: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.running_var not in RUNNING_VARS:
            raise ValueError(f"Conventions: running_var must be one of {RUNNING_VARS}, got {self.running_var!r}")
        if not self.bn_eps > 0:
            raise ValueError(f"Conventions: bn_eps must be > 0, got {self.bn_eps}")
        if not 0.0 <= self.bn_decay < 1.0:
            raise ValueError(f"Conventions: bn_decay must lie in [0, 1), got {self.bn_decay}")

    @property
    def torch_momentum(self) -> float:
        """PyTorch's BatchNorm momentum for this decay (the share of the *new* statistic)."""
        return 1.0 - self.bn_decay


_SYM_TORCH = Conventions(padding="symmetric", bn_eps=1e-5, bn_decay=0.9)
_TF = Conventions(padding="tf_same", bn_eps=1e-3, bn_decay=0.99)

# Weight sources and their conventions. "effnet" is this library's own default: the paper's BN constants
# with symmetric padding (shape-independent, and what the fast paths are tuned for).
SOURCES: dict[str, Conventions] = {
    "effnet": Conventions(padding="symmetric", bn_eps=1e-3, bn_decay=0.99),
    "torchvision": _SYM_TORCH,
    "timm": _SYM_TORCH,
    "timm_tf": _TF,
    "efficientnet_pytorch": _TF,
    "tf": _TF,
}

# torchvision builds b5-b7 with BatchNorm2d(eps=1e-3, momentum=0.01), and every V2 with BatchNorm2d(eps=1e-3).
_TORCHVISION_TF_BN = ("b5", "b6", "b7")
_TORCHVISION_V2 = ("v2_s", "v2_m", "v2_l", "v2_xl", "v2_b0", "v2_b1", "v2_b2", "v2_b3")


def conventions_for(weight_source: str, variant: str | None = None) -> Conventions:
    """The conventions a weight source uses for a variant.

    Raises:
        ValueError: unknown weight source.
    """
    if weight_source not in SOURCES:
        raise ValueError(f"unknown weight source {weight_source!r}; expected one of: {', '.join(SOURCES)}")
    conv = SOURCES[weight_source]
    if weight_source == "torchvision" and variant in _TORCHVISION_TF_BN:
        conv = replace(conv, bn_eps=1e-3, bn_decay=0.99)
    if weight_source == "torchvision" and variant in _TORCHVISION_V2:
        conv = replace(conv, bn_eps=1e-3)
    return conv
