"""The persistent compilation cache (effnet_jax.compilation_cache): a second process loads what the first compiled,
a process killed while writing an entry leaves nothing a later one reads, and a bad folder is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from effnet_jax import cli

# Compiles one function with the cache in argv[1]; prints the cache hits and misses JAX recorded, as JSON. argv[2]
# "kill" SIGKILLs the process at the moment the entry would be renamed into place (a kill in the middle of a write).
_PROBE = """
import json, os, signal, sys
from jax import monitoring
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
if sys.argv[2] == "kill":
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
from effnet_jax import compilation_cache
compilation_cache.enable(sys.argv[1], min_compile_time_s=0)
import jax, jax.numpy as jnp
y = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))(jnp.arange(64.0).reshape(8, 8))
print(json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits"), "sum": float(y.sum())}))
"""


def _probe(cache, mode="plain") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFFNET_COMPILATION_CACHE")}
    return subprocess.run(
        [sys.executable, "-c", _PROBE, str(cache), mode], env=env, capture_output=True, text=True, timeout=120
    )


def _entries(cache) -> list[str]:
    return sorted(n for n in os.listdir(cache) if n.endswith("-cache"))


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    first = _probe(tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["hits"] == 0 and _entries(tmp_path)
    second = _probe(tmp_path)
    assert second.returncode == 0, second.stderr
    got = json.loads(second.stdout)
    assert got["hits"] >= 1, "the second process compiled again instead of loading the cached executable"
    assert got["sum"] == json.loads(first.stdout)["sum"]


def test_a_process_killed_while_writing_leaves_no_entry_a_later_run_reads(tmp_path):
    killed = _probe(tmp_path, "kill")
    assert killed.returncode == -9
    assert _entries(tmp_path) == [], "an entry appeared before its bytes were all written"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")], "the kill came before any write"
    after = _probe(tmp_path)
    assert after.returncode == 0 and "Error reading persistent compilation cache" not in after.stderr, after.stderr
    assert json.loads(after.stdout)["hits"] == 0 and _entries(tmp_path)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        (
            "EFFNET_COMPILATION_CACHE",
            "/proc/effnet-cache",
            "EFFNET_COMPILATION_CACHE: cannot create /proc/effnet-cache",
        ),
        ("EFFNET_COMPILATION_CACHE_MIN_S", "soon", "EFFNET_COMPILATION_CACHE_MIN_S='soon': expected seconds"),
    ],
)
def test_a_bad_cache_setting_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, name, value, expected):
    monkeypatch.setenv("EFFNET_COMPILATION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(name, value)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "no-run")], fast_malloc=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"effnet: error: {expected}"), err
