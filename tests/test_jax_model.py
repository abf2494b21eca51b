"""effnet_jax.EfficientNet on its own: import, bad input, train/eval modes, transforms, dtype policy, shapes.

Models are built from random weights with `model_from_state_dict` (abstract init + fill), not by running the random
init: eager init compiles one kernel per parameter shape, which costs ~15 s on a loaded 2-core box. The spec is b0
with one block per stage (two in stage 1, so there is a residual block with drop-path), so every reduction
(2, 4, 8, 16, 32) and every module kind (expand, SE, residual, head, classifier) is present, at a fraction of the
compile time. Forward passes are jitted: eager dispatch of a whole net compiles op by op and is ~10x slower here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import effnet_jax
from effnet_jax import EfficientNet, ModelOptions, key_map, model_from_state_dict
from effnet_jax.model.layers import BatchNorm, Dropout, DropPath
from effnet_spec import STAGES, ModelSpec, conventions_for, resolve

# One block per stage (stage 1 has two: block 2 is residual), b0 widths: every reduction and module kind, 8 blocks.
TINY_STAGES = tuple(replace(r, repeats=2 if i == 1 else 1) for i, r in enumerate(STAGES))
# Same jitted program on the same device run twice, or after split/merge: float32 results agree to a few ulp at
# most (XLA may fuse a re-traced program differently); logits here are O(1-10).
RECOMPUTE_ATOL = 1e-5
# bfloat16 keeps 8 mantissa bits (relative rounding ~4e-3 per op); through 8 blocks of conv+BN+SiLU the logits drift
# by a few percent of their range. Loose on purpose: it catches a wrong policy (f32 silently used, or garbage), not
# rounding.
BF16_RTOL = 0.05


def tiny_spec(**kwargs) -> ModelSpec:
    kwargs.setdefault("num_classes", 3)
    kwargs.setdefault("stages", TINY_STAGES)
    return resolve("b0", **kwargs)


def random_state_dict(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """A torch-layout state_dict for `spec` with He-scaled kernels and non-trivial BN statistics.

    BN statistics are random (not mean 0 / var 1) so eval mode exercises the running-statistic path, and
    `num_batches_tracked` is a nonzero int64 as torch stores it.
    """
    rng = np.random.default_rng(seed)
    abstract = nnx.eval_shape(lambda: EfficientNet(spec, rngs=nnx.Rngs(0)))
    out = {}
    for e in key_map(spec):
        node = abstract
        for p in e.jax_path:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        shape, leaf = tuple(node.get_value().shape), e.jax_path[-1]
        if e.torch_key == "classifier.weight":  # pooled features are ~0.05 here: scaled so logits are O(1)
            a = rng.standard_normal(shape) * 0.5
        elif leaf == "kernel":
            a = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[:-1]))
        elif leaf in ("scale", "var"):
            a = rng.uniform(0.5, 1.5, shape)
        elif leaf == "num_batches_tracked":
            a = np.array(int(rng.integers(1, 1000)), np.int64)
        else:  # bias, mean
            a = rng.standard_normal(shape) * 0.1
        a = a if leaf == "num_batches_tracked" else a.astype(np.float32)
        out[e.torch_key] = np.array(e.layout.torch_array(a), order="C")  # np.ascontiguousarray makes 0-d 1-d
    return out


def tiny_model(seed: int = 0, *, dtype=jnp.float32, **spec_kwargs) -> EfficientNet:
    """A model of `tiny_spec(**spec_kwargs)` with `random_state_dict` weights, in eval mode."""
    spec = tiny_spec(**spec_kwargs)
    model = model_from_state_dict(
        spec, random_state_dict(spec, seed), rngs=nnx.Rngs(seed), options=ModelOptions(dtype=dtype)
    )
    model.eval()
    return model


def nhwc(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@nnx.jit
def _logits(model, x, drop_path_masks=None, dropout_mask=None):
    return model(x, drop_path_masks=drop_path_masks, dropout_mask=dropout_mask)


@nnx.jit
def _features(model, x):
    return model.forward_features(x)


@nnx.jit
def _pooled(model, x):
    return model.forward_classifier(model.forward_features(x), pre_logits=True)


@nnx.jit
def _intermediates(model, x):
    return model.forward_intermediates(x), model.forward_features(x)


@pytest.fixture(scope="module")
def model() -> EfficientNet:
    return tiny_model()


def _modes(model) -> set[tuple[str, bool]]:
    """Every mode flag in the tree: ('bn', use_running_average) and ('drop', deterministic) pairs."""
    out = set()
    for _, n in nnx.iter_graph(model):
        if isinstance(n, BatchNorm):
            out.add(("bn", n.use_running_average))
        elif isinstance(n, (Dropout, DropPath)):
            out.add(("drop", n.deterministic))
    return out


# ---------------------------------------------------------------------------------------------- import, bad input


def test_public_import():
    from effnet_jax import EfficientNet as E

    assert E is effnet_jax.model.EfficientNet and issubclass(E, nnx.Module)
    spec = resolve("b0")
    abstract = nnx.eval_shape(lambda: E.from_name("b0", rngs=nnx.Rngs(0)))
    assert abstract.spec == spec


@pytest.mark.parametrize(
    "x, got",
    [
        (np.zeros((32, 32, 3), np.float32), r"got shape \(32, 32, 3\) float32"),
        (np.zeros((1, 3, 32, 32), np.float32), r"got shape \(1, 3, 32, 32\) float32"),  # NCHW: 32 channels
        (np.zeros((1, 32, 32, 1), np.float32), r"got shape \(1, 32, 32, 1\) float32"),
        (np.zeros((1, 32, 32, 3), np.uint8), r"got shape \(1, 32, 32, 3\) uint8"),
        (jnp.zeros((1, 32, 32, 3), jnp.int32), r"got shape \(1, 32, 32, 3\) int32"),
        (np.zeros((1, 1, 32, 32, 3), np.float32), r"got shape \(1, 1, 32, 32, 3\) float32"),
        ([[1.0]], r"got a list"),
    ],
    ids=["rank3", "nchw", "channels1", "uint8", "int32", "rank5", "list"],
)
def test_bad_input_names_expected_and_got(model, x, got):
    pattern = r"EfficientNet\(b0\): expected input \(N, H, W, 3\) floating point, " + got
    for fn in (model, model.forward_features, model.forward_intermediates):
        with pytest.raises(ValueError, match=pattern):
            fn(x)


def test_bad_keep_masks_name_expected_and_got(model):
    x = nhwc((2, 32, 32, 3))
    model.train()
    try:
        with pytest.raises(ValueError, match=rf"one entry per block \({len(model.blocks)}\), got 3"):
            model(x, drop_path_masks=[None] * 3)
        with pytest.raises(ValueError, match=r"dropout: expected a keep-mask of shape \(2, 1280\), got \(2, 3\)"):
            model.forward_classifier(jnp.ones((2, 1, 1, 1280)), dropout_mask=jnp.ones((2, 3)))
    finally:
        model.eval()


def test_bad_construction_arguments():
    with pytest.raises(TypeError, match=r"expects a resolved ModelSpec, got str; use EfficientNet\.from_name"):
        EfficientNet("b0", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dtype must be auto, float32 or bfloat16, got float16"):
        EfficientNet(tiny_spec(), rngs=nnx.Rngs(0), options=ModelOptions(dtype=jnp.float16))
    with pytest.raises(ValueError, match=r"unknown variant 'b9'; expected one of: b0, .*lite4"):
        EfficientNet.from_name("b9")


# ---------------------------------------------------------------------------------------------- modes


def test_train_eval_and_view_flip_every_flag_together(model):
    model.train()
    assert _modes(model) == {("bn", False), ("drop", False)}
    model.eval()
    assert _modes(model) == {("bn", True), ("drop", True)}
    view = nnx.view(model, deterministic=False, use_running_average=False)
    assert _modes(view) == {("bn", False), ("drop", False)}
    assert _modes(model) == {("bn", True), ("drop", True)}, "nnx.view must not change the original"
    assert view.stem.conv.kernel is model.stem.conv.kernel, "a view shares the parameters"
    back = nnx.view(view, deterministic=True, use_running_average=True)
    assert _modes(back) == {("bn", True), ("drop", True)}
    counted = {type(n) for _, n in nnx.iter_graph(model) if isinstance(n, (BatchNorm, Dropout, DropPath))}
    assert counted == {BatchNorm, Dropout, DropPath}, "the tiny spec must hold every kind of mode-carrying layer"


def test_eval_is_deterministic_and_ignores_masks(model):
    x = nhwc((2, 32, 32, 3))
    a, b = _logits(model, x), _logits(model, x)
    np.testing.assert_array_equal(a, b)
    zeros = [jnp.zeros(2) if blk.residual else None for blk in model.spec.blocks]
    c = _logits(model, x, zeros, jnp.zeros((2, model.spec.head_ch)))
    np.testing.assert_allclose(c, a, atol=RECOMPUTE_ATOL, err_msg="eval mode must ignore keep-masks")
    assert float(jnp.abs(a).max()) > 0.1, "logits too small for the comparisons to mean anything"


@pytest.fixture(scope="module")
def small() -> EfficientNet:
    """Two stages (3 blocks: expand, SE, one residual block with drop-path) for the costlier compiles."""
    return tiny_model(stages=STAGES[:2])


def test_train_mode_draws_fresh_randomness(small):
    """Two train calls differ only through the dropout/drop-path draws: with all-ones masks they agree."""
    assert any(b.residual for b in small.spec.blocks) and small.spec.dropout > 0
    before = jax.tree.map(lambda a: a, nnx.state(small, nnx.BatchStat))  # arrays now; train mode updates them
    view = nnx.view(small, deterministic=False, use_running_average=False)
    x = nhwc((4, 32, 32, 3), seed=1)
    a, b = _logits(view, x), _logits(view, x)
    assert float(jnp.abs(a - b).max()) > 1e-3, "two train-mode calls gave the same logits: no fresh draws"
    ones = [jnp.ones(4) if blk.residual else None for blk in small.spec.blocks]
    masks = (ones, jnp.ones((4, small.spec.head_ch)))
    c, d = _logits(view, x, *masks), _logits(view, x, *masks)
    np.testing.assert_allclose(c, d, atol=RECOMPUTE_ATOL)
    assert int(view.stem.bn.num_batches_tracked[...]) == int(before["stem"]["bn"]["num_batches_tracked"]) + 4
    nnx.update(small, before)  # restore the BN statistics for the other tests


# ---------------------------------------------------------------------------------------------- transforms


def test_jax_jit_split_merge_give_the_same_outputs(model):
    model.eval()
    x = nhwc((2, 32, 32, 3), seed=2)
    want = _logits(model, x)
    graphdef, state = nnx.split(model)

    @jax.jit
    def pure(graphdef, state, x):
        return nnx.merge(graphdef, state)(x)

    np.testing.assert_allclose(pure(graphdef, state, x), want, atol=RECOMPUTE_ATOL)
    merged = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(_logits(merged, x), want)  # the same cached program on the same weights
    assert nnx.graphdef(merged) == graphdef


def test_jax_grad_of_classifier_bias_is_softmax_minus_onehot(small):
    """d(mean cross-entropy)/d(bias) = mean(softmax - onehot): an exact check that grad flows through the model."""
    model = small
    x, y = nhwc((4, 32, 32, 3), seed=3), jnp.array([0, 1, 2, 1])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def loss_and_grad(params, rest, x, y):
        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)), logits

        return jax.grad(loss, has_aux=True)(params)

    grads, logits = loss_and_grad(params, rest, x, y)
    want = jnp.mean(jax.nn.softmax(logits) - jax.nn.one_hot(y, 3), axis=0)
    np.testing.assert_allclose(grads["classifier"]["bias"][...], want, atol=1e-6)
    leaves = jax.tree.leaves_with_path(grads)
    assert len(leaves) == len(jax.tree.leaves(params))
    zero = [jax.tree_util.keystr(p) for p, g in leaves if not bool(jnp.any(g != 0)) or g.dtype != jnp.float32]
    assert not zero, f"parameters with an all-zero or non-float32 gradient: {zero}"


# ---------------------------------------------------------------------------------------------- dtype policy


def test_bfloat16_policy(small):
    model = small
    bf = tiny_model(dtype=jnp.bfloat16, stages=STAGES[:2])  # same seed: same weights as `small`
    params = jax.tree.leaves(nnx.state(bf, nnx.Param)) + jax.tree.leaves(nnx.state(bf, nnx.BatchStat))
    assert {str(p.dtype) for p in params} == {"float32", "int32"}, "parameters and BN statistics stay float32"
    x = nhwc((2, 32, 32, 3), seed=4)
    ref, got = _logits(model, x), _logits(bf, x)
    assert got.dtype == jnp.float32, "logits are float32 under the bfloat16 policy"
    feats = nnx.eval_shape(lambda m, x: m.forward_features(x), bf, x)  # traced, not compiled
    assert feats.dtype == jnp.bfloat16, "the convolutions must really run in bfloat16"
    err, scale = float(jnp.abs(got - ref).max()), float(jnp.abs(ref).max())
    assert 0 < err <= BF16_RTOL * scale, f"bf16 logits differ from f32 by {err:.3g} (scale {scale:.3g})"


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("weights", ["effnet", "timm_tf"], ids=["symmetric", "tf_same"])
def test_features_and_intermediates_shapes(model, weights):
    m = model if weights == "effnet" else tiny_model(conventions=conventions_for(weights))
    assert m.spec.conv.padding == {"effnet": "symmetric", "timm_tf": "tf_same"}[weights]
    h, w = 63, 40  # odd and non-square: ceil(h / r) != h // r at every reduction
    feats, ff = _intermediates(m, nhwc((2, h, w, 3), seed=5))
    info = m.spec.feature_info
    assert [f.reduction for f in info] == [2, 4, 8, 16, 32]
    got = [tuple(t.shape) for t in feats]
    want = [(2, math.ceil(h / f.reduction), math.ceil(w / f.reduction), f.channels) for f in info]
    assert got == want
    assert tuple(ff.shape) == (2, math.ceil(h / 32), math.ceil(w / 32), m.spec.head_ch)


def test_num_classes_zero_and_in_channels_one():
    m = tiny_model(num_classes=0, in_channels=1, stages=STAGES[:2])
    assert m.classifier is None and m.stem.conv.kernel.shape == (3, 3, 1, 32)
    x = nhwc((2, 32, 32, 1), seed=6)
    pooled, feats = _logits(m, x), _features(m, x)
    assert pooled.shape == (2, m.spec.head_ch) and pooled.dtype == jnp.float32
    np.testing.assert_allclose(pooled, feats.mean(axis=(1, 2)), atol=RECOMPUTE_ATOL)
    assert "classifier.weight" not in effnet_jax.state_dict_from_model(m)
    with pytest.raises(ValueError, match=r"expected input \(N, H, W, 1\) floating point, got shape \(2, 32, 32, 3\)"):
        m(nhwc((2, 32, 32, 3)))


def _check_reset(m: EfficientNet, x: jax.Array) -> None:
    pooled = _logits(m, x, None, None) if m.classifier is None else _pooled(m, x)
    m.reset_classifier(7, rngs=nnx.Rngs(1))
    assert m.spec.num_classes == 7 and m.classifier.kernel.shape == (m.spec.head_ch, 7)
    logits = _logits(m, x)
    want = pooled @ m.classifier.kernel[...] + m.classifier.bias[...]
    np.testing.assert_allclose(logits, want, atol=RECOMPUTE_ATOL, rtol=1e-5)
    assert effnet_jax.state_dict_from_model(m)["classifier.weight"].shape == (7, m.spec.head_ch)
    with pytest.raises(ValueError, match="num_classes must be an int >= 0, got -1"):
        m.reset_classifier(-1, rngs=nnx.Rngs(0))


def test_reset_classifier_changes_classes(small):
    m = nnx.clone(small)
    _check_reset(m, nhwc((2, 32, 32, 3), seed=7))
    m.reset_classifier(0, rngs=nnx.Rngs(0))
    assert m.classifier is None and m.spec.num_classes == 0
    assert "classifier.weight" not in effnet_jax.state_dict_from_model(m)


def test_reset_classifier_on_headless_model():
    m = tiny_model(num_classes=0, stages=STAGES[:2])
    _check_reset(m, nhwc((2, 32, 32, 3), seed=8))
