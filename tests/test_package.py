"""The package's front door: lazy names, and `effnet summary` without jax."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import effnet_jax


def test_summary_command_and_host_memory_do_not_import_jax():
    # host_memory must run before jax starts its threads, and `effnet summary` is spec-only.
    code = (
        "import sys; from effnet_jax import cli; from effnet_jax.ops import host_memory; cli.main(['summary', 'b0']); "
        "print(sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"


def test_the_training_config_and_print_config_do_not_import_jax():
    # The config validates dtype against ModelOptions' own tuple without loading jax, so `--print-config` and a
    # bad `--set` answer at once.
    code = (
        "import sys; from effnet_jax import cli; "
        "rc = cli.main(['train', '--print-config', '--set', 'dtype=bfloat16']); "
        "print(rc, sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "0 []"
    assert '"dtype": "bfloat16"' in out


def test_every_public_name_resolves_to_its_module():
    assert sorted(effnet_jax.__all__) == sorted(effnet_jax._EXPORTS)
    for name in effnet_jax.__all__:
        obj = getattr(effnet_jax, name)
        sub = f"effnet_jax.{effnet_jax._EXPORTS[name]}"
        assert obj is getattr(importlib.import_module(sub), name), name
        assert obj.__module__.startswith((sub, "effnet_spec.")), (name, obj.__module__)
    assert set(effnet_jax.__all__) <= set(dir(effnet_jax))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="EfficientNetV2"):
        effnet_jax.EfficientNetV2  # noqa: B018
