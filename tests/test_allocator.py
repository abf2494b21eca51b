"""The `effnet` command re-executes on a fast malloc (ops.allocator): used when present, opt-out, absent, bad
values; the one-time hint for library users. The proofs read the re-executed process's own memory map."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from effnet_jax.ops import allocator

# The train extra (so dev) installs cmeel-mimalloc on Linux, so there is always one allocator to preload.
MIMALLOC = allocator.find("mimalloc")


def _effnet(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
    environ.update(env)
    cmd = [sys.executable, "-m", *args]
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=120)


def _note(r: subprocess.CompletedProcess) -> str:
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("[effnet] allocator:")]
    return line


@pytest.mark.skipif(MIMALLOC is None, reason="cmeel-mimalloc (the train extra, Linux) is not installed")
def test_the_command_runs_on_the_allocator_asked_for():
    r = _effnet("effnet_jax", "predict", "--help", EFFNET_ALLOCATOR="mimalloc")
    assert r.returncode == 0, r.stderr
    # `active()` in the re-executed process found the library in /proc/self/maps.
    assert _note(r).startswith("[effnet] allocator: mimalloc (re-executed with LD_PRELOAD")
    by_path = _effnet("effnet_jax", "eval", "--help", EFFNET_ALLOCATOR=MIMALLOC[1])
    assert _note(by_path).startswith("[effnet] allocator: mimalloc (re-executed"), by_path.stderr


def test_by_default_the_best_installed_one_is_used_also_by_python_m_effnet_jax_train():
    best = allocator.find()
    r = _effnet("effnet_jax.train", "--help")
    assert r.returncode == 0, r.stderr
    if best is None:
        assert "no tcmalloc, jemalloc or mimalloc found" in _note(r)
    else:
        assert _note(r).startswith(f"[effnet] allocator: {best[0]} (re-executed with LD_PRELOAD"), r.stderr


def test_opting_out_keeps_glibc_and_does_not_re_execute():
    r = _effnet("effnet_jax", "predict", "--help", EFFNET_ALLOCATOR="glibc")
    assert r.returncode == 0 and _note(r) == "[effnet] allocator: glibc malloc (as asked)"


def test_commands_that_do_not_compute_are_left_alone():
    r = _effnet("effnet_jax", "summary", "b0")
    assert r.returncode == 0 and "allocator" not in r.stderr


@pytest.mark.parametrize(
    "value, message",
    [
        ("bogus", "expected auto, glibc, tcmalloc, jemalloc, mimalloc or a path to a shared library"),
        ("/nowhere/libx.so", "no such file"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(value, message):
    r = _effnet("effnet_jax", "predict", "--help", EFFNET_ALLOCATOR=value)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"effnet: error: EFFNET_ALLOCATOR={value!r}: {message}"


def test_a_machine_without_one_runs_with_a_single_note(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator, "find", lambda name="auto": None)
    monkeypatch.setattr(allocator, "active", lambda: None)
    monkeypatch.setattr(allocator, "_glibc_linux", lambda: True)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed without an allocator"))
    note = allocator.preload(["effnet", "train"])
    assert note.startswith("allocator: glibc malloc; no tcmalloc, jemalloc or mimalloc found") and "apt install" in note


def test_library_users_get_a_one_time_hint_on_glibc(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator, "active", lambda: None)
    monkeypatch.setattr(allocator, "_glibc_linux", lambda: True)
    monkeypatch.setattr(allocator, "_hinted", False)
    from flax import nnx

    from effnet_jax import EfficientNet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        EfficientNet.from_name("b0", num_classes=3, rngs=nnx.Rngs(0))
        EfficientNet.from_name("b0", num_classes=3, rngs=nnx.Rngs(0))
    hints = [w for w in caught if issubclass(w.category, allocator.SlowAllocatorWarning)]
    assert len(hints) == 1, [str(w.message) for w in caught]
    assert hints[0].filename == __file__, "the warning points at the line that built the model, not inside Flax"
    assert "glibc's malloc" in str(hints[0].message) and ("LD_PRELOAD=" in str(hints[0].message) or "apt install" in
                                                          str(hints[0].message))  # fmt: skip
    monkeypatch.setattr(allocator, "_hinted", False)
    monkeypatch.setattr(allocator, "active", lambda: "tcmalloc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        allocator.hint_once()
    assert not caught, "no hint on a fast allocator"
