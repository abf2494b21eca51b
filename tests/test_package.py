"""The package's front door: lazy names, and `effnet summary` without jax."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import effnet_jax
from effnet_jax._lazy import exports


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


@pytest.mark.parametrize("package", ["effnet_jax", "effnet_jax.model", "effnet_jax.train"])
def test_every_public_name_resolves_to_its_module(package):
    # Each lazy package spells its names once, in its TYPE_CHECKING block; all of them load from where it says.
    pkg = importlib.import_module(package)
    where = exports(pkg.__file__)
    assert pkg.__all__ == sorted(where) and len(where) >= 4
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        sub = f"{package}.{where[name]}"
        assert obj is getattr(importlib.import_module(sub), name), name
        module = getattr(obj, "__module__", sub)  # a table (PRESETS) has none
        assert module.startswith((sub, "effnet_spec.")), (name, module)
    assert set(pkg.__all__) <= set(dir(pkg))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="EfficientNetV2"):
        effnet_jax.EfficientNetV2  # noqa: B018


def test_from_pretrained_reaches_the_run_reader_in_a_fresh_process(tmp_path):
    # model and weights never import train (tests/test_layout.py); the package root wires the call that goes up, so
    # a process that imported only the model module still reads a directory as a training run.
    code = (
        "import sys; from effnet_jax.model.efficientnet import EfficientNet\n"
        "assert 'effnet_jax.train' not in sys.modules\n"
        "try: EfficientNet.from_pretrained(sys.argv[1])\n"
        "except FileNotFoundError as e: print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"no training checkpoint in {str(tmp_path)!r}"), out.stdout + out.stderr
