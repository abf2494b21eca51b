"""`host_memory`: glibc keeps XLA CPU's freed temporaries, so a repeated call stops page-faulting."""

from __future__ import annotations

import ast
import resource
import subprocess
import sys
import textwrap

import pytest

from effnet_jax import cli
from effnet_jax.ops import host_memory

# A jitted function whose buffers (32 x 512 x 512 float32 = 32 MB each) are freed after every call. Run in
# a fresh process because the settings only take for threads that have not allocated yet.
_PROBE = textwrap.dedent(
    """
    import resource, sys
    if sys.argv[1] == "1":
        from effnet_jax.ops.host_memory import retain_host_memory
        assert retain_host_memory()
    import jax, jax.numpy as jnp

    @jax.jit
    def f(x):
        y = jnp.tanh(x @ x)
        return (jnp.tanh(y @ x) @ y).sum()

    x = jnp.full((32, 512, 512), 0.01, jnp.float32)
    f(x).block_until_ready()
    f(x).block_until_ready()
    faults = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(faults)
    """
)


def _faulted_mb(retain: bool) -> list[float]:
    """MB faulted in by each of four calls after two warm-up calls."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "1" if retain else "0"], capture_output=True, text=True, check=True
    ).stdout
    return [n * resource.getpagesize() / 2**20 for n in ast.literal_eval(out.splitlines()[-1])]


@pytest.mark.integration  # two processes that each run a large XLA program three times
@pytest.mark.skipif(host_memory.glibc_version() is None, reason="the settings are glibc's")
def test_retained_memory_stops_the_third_call_from_faulting():
    # Without the settings every call maps its 32 MB buffers afresh (~800 MB fault in per call); with them
    # calls reuse what earlier calls freed. A call can still grow the heap when the previous call's buffers
    # are freed late (a busy machine), so the retained bound is on the best of four calls; 4 MB leaves room
    # for stray first touches elsewhere in the process.
    assert min(_faulted_mb(retain=False)) > 64
    assert min(_faulted_mb(retain=True)) < 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("0", False), ("False", False), (" off ", False), ("1", True), ("on", True)],
)
def test_wanted_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(host_memory.ENV, raising=False)
    else:
        monkeypatch.setenv(host_memory.ENV, value)
    assert host_memory.wanted() is expected


def test_wanted_names_a_bad_value(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "sometimes")
    with pytest.raises(ValueError, match="EFFNET_RETAIN_HOST_MEMORY='sometimes'"):
        host_memory.wanted()


@pytest.mark.parametrize(("value", "calls"), [("1", 1), ("0", 0)])
def test_cli_retains_host_memory_only_when_asked(monkeypatch, capsys, value, calls):
    seen = []
    monkeypatch.setenv(host_memory.ENV, value)
    monkeypatch.setattr(host_memory, "retain_host_memory", lambda: seen.append(1) or True)
    assert cli.main(["summary", "b0"]) == 0
    assert len(seen) == calls
    assert "params: 5,288,548" in capsys.readouterr().out
