"""Eval-mode parity: logits and `forward_features` of the NNX twin equal the torch twin's, every variant.

Each case is (variant x padding convention). Big variants run at a reduced resolution: parity is a property
of the weights and the ops, not of the image size, and compile time dominates. One jitted function per case
(measured cheaper than eager dispatch for big variants: b7 at 32 px, 12 s jit vs 29 s eager on 2 cores).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from _twins import images, make_pair, max_abs, nhwc
from flax import nnx

import effnet_jax
import effnet_torch
from effnet_spec import VARIANTS, resolve

# Acceptance bound: float32 with precision pinned to "highest"; the twins differ only in summation order across
# up to ~55 blocks (observed max |diff| ~1e-6 on logits of magnitude ~1-10).
LOGITS_ATOL = 1e-4
# forward_features is the unpooled map after the head's activation: same argument, same bound.
FEATURES_ATOL = 1e-4

PADDINGS = {"symmetric": "effnet", "tf_same": "timm_tf"}  # weight source that selects each padding convention
SMALL = ("b0", "b1", "b2", "b3", "lite0", "lite1", "lite2")  # at 64 px
BIG = ("b4", "b5", "b6", "b7", "lite3", "lite4")  # at 32 px
FAST = ("b0", "lite0")  # one per family in the default group; each case costs ~10 s of compile on 2 cores


def _case(variant: str, padding: str):
    res = 64 if variant in SMALL else 32
    marks = [] if variant in FAST else [pytest.mark.slow]
    return pytest.param(variant, padding, res, marks=marks, id=f"{variant}-{padding}-{res}px")


CASES = [_case(v, p) for v in SMALL + BIG for p in PADDINGS]


@nnx.jit
def _eval(model, x):
    feats = model.forward_features(x)
    return feats, model.forward_classifier(feats)


def _check(variant: str, padding: str, shape_nchw: tuple[int, ...]) -> None:
    tm, jm = make_pair(variant, weights=PADDINGS[padding])
    assert tm.spec.conv.padding == padding
    tm.eval()
    jm.eval()
    xt, xj = images(shape_nchw)
    with torch.no_grad():
        ft = tm.forward_features(xt)
        lt = tm.forward_classifier(ft)
    fj, lj = _eval(jm, xj)
    assert lj.dtype == np.float32
    assert float(lt.abs().max()) > 0.1, "logits too small for the absolute tolerance to mean anything"
    d_feat, d_logit = max_abs(nhwc(ft), fj), max_abs(lt, lj)
    assert d_feat <= FEATURES_ATOL, f"{variant}/{padding} {shape_nchw}: features max|diff| {d_feat:.3g}"
    assert d_logit <= LOGITS_ATOL, f"{variant}/{padding} {shape_nchw}: logits max|diff| {d_logit:.3g}"


def test_cases_cover_every_b_and_lite_variant():
    named = {v for v in VARIANTS if v.startswith("lite") or v in {f"b{i}" for i in range(8)}}
    assert named == set(SMALL + BIG)


@pytest.mark.parametrize("variant, padding, res", CASES)
def test_eval_logits_and_features(variant, padding, res):
    _check(variant, padding, (2, 3, res, res))


@pytest.mark.parametrize("padding", PADDINGS)
def test_odd_non_square_batch_one(padding):
    """97x131: tf_same pads differ per axis and per stride-2 conv; symmetric floors differently. Batch 1."""
    _check("b0", padding, (1, 3, 97, 131))


@pytest.mark.parametrize(
    "variant", [pytest.param(v, marks=[pytest.mark.slow] if v in ("b8", "l2") else []) for v in VARIANTS]
)
def test_param_count_equals_twin(variant):
    """Abstract models on both sides (nnx.eval_shape, torch meta device): no weights are materialised."""
    spec = resolve(variant)
    jm = nnx.eval_shape(lambda: effnet_jax.EfficientNet(spec, rngs=nnx.Rngs(0)))
    n_jax = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(jm, nnx.Param)))
    with torch.device("meta"):
        tm = effnet_torch.EfficientNet(spec)
    n_torch = sum(p.numel() for p in tm.parameters())
    assert n_jax == n_torch, f"{variant}: JAX {n_jax:,} != torch {n_torch:,}"
