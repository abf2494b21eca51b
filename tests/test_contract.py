"""The twin contract (`effnet_spec.contract`): both model classes expose exactly its tensors, for every variant.

The contract is the only place that spells the module tree; these tests are what keeps the two model classes, the
JAX key map and the contract from drifting apart. Models are built without storage (torch's meta device,
`nnx.eval_shape`), so even l2 is instant.
"""

from __future__ import annotations

import pytest
import torch
from flax import nnx

import effnet_jax
import effnet_torch
from effnet_jax.weights.state import JAX_ROLES, key_map
from effnet_spec import VARIANTS, resolve
from effnet_spec.contract import ROLES, Got, check_tensors, mismatch_error, modules, shapes, tensors

# V2-M, L and XL (1,100-2,000 variables): 1.5-2.2 s each to build abstractly in NNX, 0.3-0.9 s in torch on 2 cores
# (measured), 7 s of this file's 35 s; in the slow group, as in tests/test_jax_v2.py. Every other variant, V2-S and
# the V2 base included, stays in the default group.
BIG_V2 = ("v2_m", "v2_l", "v2_xl")
SPECS = [pytest.param(resolve(v), id=v, marks=[pytest.mark.slow] if v in BIG_V2 else []) for v in VARIANTS] + [
    pytest.param(resolve("b0", num_classes=0), id="b0-headless"),
    pytest.param(resolve("lite0", num_classes=7, in_channels=1), id="lite0-1ch-7cls"),
    pytest.param(resolve(2.5), id="phi2.5"),
]


def _jax_tensors(spec) -> dict[tuple, tuple[int, ...]]:
    """Path -> shape of every Param and BatchStat the NNX model holds (its RNG state excluded)."""
    model = nnx.eval_shape(lambda: effnet_jax.EfficientNet(spec, rngs=nnx.Rngs(0)))
    return {
        tuple(path): tuple(node.get_value().shape)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, (nnx.Param, nnx.BatchStat))
    }


@pytest.mark.parametrize("spec", SPECS)
def test_torch_twin_state_dict_is_the_contract(spec):
    with torch.device("meta"):
        model = effnet_torch.EfficientNet(spec)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == [t.name for t in tensors(spec)], "same keys, in the contract's (forward) order"
    assert got == shapes(spec)


@pytest.mark.parametrize("spec", SPECS)
def test_jax_twin_holds_exactly_the_contract(spec):
    got = _jax_tensors(spec)
    want = {e.jax_path: e.layout.jax_shape(e.tensor.shape) for e in key_map(spec)}
    assert sorted(got, key=str) == sorted(want, key=str)
    assert got == want


def test_every_role_has_a_layout_in_both_twins():
    assert set(JAX_ROLES) == set(ROLES)
    spec = resolve("b0")
    used = {t.role for t in tensors(spec)}
    assert used == set(ROLES), f"b0 uses every role; unused: {set(ROLES) - used}"


def test_modules_follow_the_spec():
    spec = resolve("b0")
    by_part: dict[str, int] = {}
    for m in modules(spec):
        by_part[m.part] = by_part.get(m.part, 0) + 1
    # b0: 16 blocks, the first without expand; every block has SE.
    assert by_part["depthwise.conv"] == by_part["se.reduce"] == by_part["project.bn"] == 16
    assert by_part["expand.conv"] == 15
    assert by_part["stem.conv"] == by_part["head.conv"] == by_part["classifier"] == 1
    assert {m.block for m in modules(spec) if m.block is not None} == set(range(16))
    lite = resolve("lite0")
    assert not any(m.part.startswith("se.") for m in modules(lite)), "Lite has no squeeze-and-excitation"


def test_one_report_for_every_kind_of_mismatch():
    spec = resolve("b0", num_classes=3)
    got: dict = {t.name: Got(t.shape, "int" if t.integer else "float") for t in tensors(spec)}
    del got["classifier.weight"], got["classifier.bias"]
    got["stem.conv.weight"] = Got((32, 1, 3, 3), "float")
    got["head.bn.num_batches_tracked"] = Got((), "int", "int64", 2**40)
    got["stem.bn.weight"] = Got((32,), "int", "int32")
    got["extra"] = (1,)
    lines = check_tensors(tensors(spec), got)
    assert lines == [
        "- classifier.bias",
        "- classifier.weight",
        "+ extra",
        "value head.bn.num_batches_tracked: 1099511627776 does not fit the int32 counter",
        "dtype stem.bn.weight: expected a float array, got int32",
        "shape stem.conv.weight: expected (32, 3, 3, 3) OIHW, got (32, 1, 3, 3)",
    ]
    err = mismatch_error("checkpoint does not match EfficientNet(b0)", lines)
    assert isinstance(err, ValueError)
    text = str(err).splitlines()
    assert text[0] == "checkpoint does not match EfficientNet(b0): 6 problem(s)"
    assert text[1].strip() == "- classifier.{bias,weight}", "one line per module"
    assert effnet_jax.CheckpointMismatchError is effnet_torch.CheckpointMismatchError is type(err)
