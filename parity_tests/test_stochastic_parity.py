"""Randomness parity: drop-path and dropout with shared keep-masks, with rates 0, their statistics, and
`forward_intermediates` in eval mode.

Reduced stage tables keep the compiles short: b0's first four stages (8 blocks, 4 of them residual) at 64 px for
train mode (the last map is 4x4, so train-mode BN sees 64 values per channel, see test_train_parity), and one
block per stage (every reduction 2..32) for the intermediates.
"""

from __future__ import annotations

import math
from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _twins import DEVICE, images, make_pair, max_abs, nhwc, torch_state, worst
from flax import nnx

import effnet_jax
import effnet_torch
from effnet_jax.model.layers import Dropout, DropPath
from effnet_spec import STAGES, resolve

pytestmark = pytest.mark.integration  # full-size b0 in both twins

# Train-mode outputs, as test_train_parity.TRAIN_ATOL: a 4-sample batch std amplifies float32 summation noise.
TRAIN_ATOL = 1e-4
# BN running statistics after one update, as test_train_parity.BN_ATOL (the acceptance bound).
BN_ATOL = 1e-5
# Eval-mode backbone outputs, as test_eval_parity.FEATURES_ATOL: float32, precision "highest", summation order only.
FEATURES_ATOL = 1e-4
# Statistical checks: a binomial count is within 5 sigma of its mean with probability 1 - 6e-7 (fixed seeds anyway).
SIGMAS = 5.0
N_SAMPLES = 20_000
# Kept values are x / keep computed in float32 by both twins: equal up to float32 rounding of 1/keep.
SCALE_RTOL = 1e-6

TRAIN_STAGES = STAGES[:4]
ONE_PER_STAGE = tuple(replace(r, repeats=2 if i == 1 else 1) for i, r in enumerate(STAGES))
BATCH, RES = 4, 64


@nnx.jit
def _train_forward(model, x, drop_path_masks, dropout_mask):
    return model(x, drop_path_masks=drop_path_masks, dropout_mask=dropout_mask)


def _bn_stats(sd):
    return {k: v for k, v in sd.items() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize("scan", [False, True], ids=["blocks", "scanned"])
def test_same_keep_masks_same_train_outputs(scan):
    """Rates 0.5 so a kept branch is scaled by up to 2x: a wrong scale or mask broadcast cannot hide. Scanned: the
    JAX twin runs each stage's repeated blocks as one scan, its drop-path rates and masks as scanned data."""
    options = effnet_jax.ModelOptions(scan=scan)
    tm, jm = make_pair("b0", stages=TRAIN_STAGES, drop_path=0.5, dropout=0.5, options=options)
    tm.train()
    jm.train()
    residual = [b.index for b in tm.spec.blocks if b.residual]
    assert len(residual) >= 3
    base = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    masks = [np.roll(base, b.index) if b.residual else None for b in tm.spec.blocks]  # every sample dropped somewhere
    drop = (np.random.default_rng(0).random((BATCH, tm.spec.head_ch)) > 0.5).astype(np.float32)
    xt, xj = images((BATCH, 3, RES, RES), seed=11)
    yt = tm(
        xt,
        drop_path_masks=[None if m is None else torch.from_numpy(m).to(DEVICE) for m in masks],
        dropout_mask=torch.from_numpy(drop).to(DEVICE),
    )
    yj = _train_forward(jm, xj, [None if m is None else jnp.asarray(m) for m in masks], jnp.asarray(drop))
    d = max_abs(yt, yj)
    assert d <= TRAIN_ATOL, f"train logits with shared keep-masks: max|diff| {d:.3g}"
    st, sj = _bn_stats(torch_state(tm)), _bn_stats(effnet_jax.state_dict_from_model(jm))
    diffs = {k: max_abs(st[k], sj[k]) for k in st}
    assert max(diffs.values()) <= BN_ATOL, f"BN statistics after a masked train step: {worst(diffs)}"
    with torch.no_grad():  # the masks must matter, or the comparison above proves nothing about them
        ones = tm(xt, drop_path_masks=[None if m is None else torch.ones(BATCH, device=DEVICE) for m in masks])
    assert max_abs(ones, yt) > 100 * TRAIN_ATOL


def test_rates_zero_train_outputs_agree_without_masks():
    tm, jm = make_pair("b0", stages=TRAIN_STAGES, drop_path=0.0, dropout=0.0)
    tm.train()
    jm.train()
    xt, xj = images((BATCH, 3, RES, RES), seed=12)
    yt = tm(xt)
    a, b = _train_forward(jm, xj, None, None), _train_forward(jm, xj, None, None)
    np.testing.assert_array_equal(a, b, err_msg="rate 0 must draw nothing: two train calls must agree")
    d = max_abs(yt, a)
    assert d <= TRAIN_ATOL, f"train logits with rates 0: max|diff| {d:.3g}"


def _binomial_ok(kept: float, keep: float, n: int) -> tuple[bool, str]:
    sigma = math.sqrt(keep * (1 - keep) / n)
    return abs(kept - keep) <= SIGMAS * sigma, f"kept share {kept:.4f}, expected {keep:.4f} +- {SIGMAS * sigma:.4f}"


def _check_draw(out: np.ndarray, rate: float, what: str) -> float:
    """Values in {0, 1/keep}, keep rate and mean within the binomial bound; returns the kept value."""
    keep, n = 1.0 - rate, out.size
    kept_mask = out != 0
    kept_vals = out[kept_mask]
    np.testing.assert_allclose(kept_vals, 1.0 / keep, rtol=SCALE_RTOL, err_msg=f"{what}: kept values are not 1/keep")
    ok, msg = _binomial_ok(float(kept_mask.mean()), keep, n)
    assert ok, f"{what} rate {rate:.3f}: {msg}"
    # E[out] = 1 (the input): the output has variance (1 - keep) / keep per draw.
    bound = SIGMAS * math.sqrt((1 - keep) / keep / n)
    assert abs(float(out.mean()) - 1.0) <= bound, (
        f"{what} rate {rate:.3f}: mean {out.mean():.4f}, expected 1 +- {bound:.4f}"
    )
    return float(kept_vals[0])


def test_block_drop_path_rates_are_the_spec_rates_in_both_twins():
    spec = resolve("b0")
    jm = nnx.eval_shape(lambda: effnet_jax.EfficientNet(spec, rngs=nnx.Rngs(0)))
    with torch.device("meta"):
        tm = effnet_torch.EfficientNet(spec)
    for b in spec.blocks:
        if b.residual:
            assert jm.blocks[b.index].drop_path.rate == tm.blocks[b.index].drop_path.rate == b.drop_path
            assert b.drop_path == pytest.approx(0.2 * b.index / len(spec.blocks))
        else:
            assert not hasattr(tm.blocks[b.index], "drop_path") and not hasattr(jm.blocks[b.index], "drop_path")


_RATES = sorted({b.drop_path for b in resolve("b0").blocks if b.residual})[::3]  # b0's smallest to largest


@pytest.mark.parametrize("rate", _RATES, ids=[f"{r:.3f}" for r in _RATES])
def test_drop_path_statistics_match_between_twins(rate):
    """Whole samples dropped at `rate`, kept ones scaled by 1/keep, in both twins (fixed seeds)."""
    x = np.ones((N_SAMPLES, 2, 2, 3), np.float32)
    jax_out = np.asarray(DropPath(rate, rngs=nnx.Rngs(dropout=int(rate * 1e6)))(jnp.asarray(x)))
    torch.manual_seed(int(rate * 1e6))
    torch_out = effnet_torch.DropPath(rate).train()(torch.from_numpy(x)).numpy()
    scales = []
    for what, out in (("JAX DropPath", jax_out), ("torch DropPath", torch_out)):
        per_sample = out.reshape(N_SAMPLES, -1)
        assert np.all(per_sample == per_sample[:, :1]), f"{what} must act on whole samples"
        scales.append(_check_draw(per_sample[:, 0], rate, what))
    np.testing.assert_allclose(scales[0], scales[1], rtol=SCALE_RTOL)


def test_dropout_statistics_match_between_twins():
    spec = resolve("b0", stages=STAGES[:1], num_classes=0)
    rate, rows = spec.dropout, N_SAMPLES // spec.head_ch + 1
    x = np.ones((rows, spec.head_ch), np.float32)
    jax_out = np.asarray(Dropout(rate, rngs=nnx.Rngs(dropout=3))(jnp.asarray(x)))
    torch.manual_seed(3)
    tm = effnet_torch.EfficientNet(spec).train()  # the torch twin's dropout lives in forward_classifier
    with torch.no_grad():
        torch_out = tm.forward_classifier(torch.from_numpy(x)[:, :, None, None], pre_logits=True).numpy()
    scales = []
    for what, out in (("JAX dropout", jax_out), ("torch dropout", torch_out)):
        assert out.shape == x.shape
        dropped_per_row = (out == 0).sum(axis=1)
        assert np.all((dropped_per_row > 0) & (dropped_per_row < spec.head_ch)), f"{what} must be element-wise"
        scales.append(_check_draw(out.reshape(-1), rate, what))
    np.testing.assert_allclose(scales[0], scales[1], rtol=SCALE_RTOL)


@nnx.jit
def _intermediates(model, x):
    return model.forward_intermediates(x)


@pytest.mark.parametrize("weights", ["effnet", "timm_tf"], ids=["symmetric", "tf_same"])
def test_forward_intermediates_parity(weights):
    tm, jm = make_pair("b0", weight_source=weights, stages=ONE_PER_STAGE)
    tm.eval()
    jm.eval()
    xt, xj = images((2, 3, 65, 47), seed=13)  # odd, non-square: tf_same pads differ per axis
    with torch.no_grad():
        ft = tm.forward_intermediates(xt)
    fj = _intermediates(jm, xj)
    assert [f.reduction for f in tm.spec.feature_info] == [2, 4, 8, 16, 32]
    assert len(ft) == len(fj) == 5
    for f, a, b in zip(tm.spec.feature_info, ft, fj):
        d = max_abs(nhwc(a), b)
        assert d <= FEATURES_ATOL, f"{weights} reduction {f.reduction}: max|diff| {d:.3g}"
