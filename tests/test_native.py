"""`native`: the C++ kernels equal their XLA formulations, are used where built, and fall back cleanly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnet_jax.ops import depthwise, native

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built here (no C++ compiler)")

# (N, H, W, C, k, stride, ((top, bottom), (left, right))): B0-like cases, TF-"same" asymmetric pads, channel
# counts off the vector width, a width smaller than the kernel, taps that never meet an input column.
CASES = [
    (2, 12, 12, 32, 3, 1, ((1, 1), (1, 1))),
    (2, 12, 12, 24, 3, 2, ((1, 1), (1, 1))),
    (2, 11, 11, 16, 3, 2, ((0, 1), (0, 1))),
    (2, 13, 9, 17, 5, 1, ((2, 2), (2, 2))),
    (2, 12, 12, 40, 5, 2, ((1, 2), (1, 2))),
    (3, 7, 7, 1, 5, 2, ((2, 2), (2, 2))),
    (1, 4, 1, 8, 5, 2, ((2, 2), (2, 2))),
    (1, 6, 2, 3, 3, 1, ((0, 0), (1, 0))),
    (4, 5, 6, 33, 3, 1, ((0, 0), (0, 0))),
]


def _operands(n, h, w, c, k, s, pad):
    oh = (h + sum(pad[0]) - k) // s + 1
    ow = (w + sum(pad[1]) - k) // s + 1
    kx, kg = jax.random.split(jax.random.key(n * 1000 + h * 10 + c))
    return jax.random.normal(kx, (n, h, w, c)), jax.random.normal(kg, (n, oh, ow, c))


@needs_native
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}h{c[1]}w{c[2]}c{c[3]}k{c[4]}s{c[5]}p{c[6]}")
def test_native_kernel_grad_equals_xla(case):
    n, h, w, c, k, s, pad = case
    x, g = _operands(*case)
    shape = (k, k, 1, c)
    want = np.asarray(depthwise._kernel_grad(x, g, shape, s, pad), np.float64)
    got = np.asarray(jax.jit(lambda x, g: native.depthwise_kernel_grad(x, g, shape, s, pad))(x, g), np.float64)
    # Each entry sums up to N*Ho*Wo float32 products of N(0, 1) numbers in a different order in each
    # implementation: 1e-5 of the largest entry is ~100x that rounding and far below any indexing slip.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


# Forward cases beyond CASES: channel counts around the vector widths (1, 7, 17, 40, 72 = 64 + 8), inputs smaller
# than the kernel (every tap checked), and widths where the 4-pixel interior blocks leave a remainder.
FWD_CASES = CASES + [
    (2, 9, 11, 7, 3, 1, ((1, 1), (1, 1))),
    (1, 2, 2, 17, 5, 1, ((2, 2), (2, 2))),
    (2, 1, 3, 40, 3, 2, ((1, 1), (1, 1))),
    (2, 3, 2, 72, 5, 2, ((1, 2), (1, 2))),
    (1, 15, 13, 80, 5, 1, ((2, 2), (2, 2))),
    (2, 10, 10, 96, 3, 2, ((0, 1), (0, 1))),
]


@needs_native
@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: f"n{c[0]}h{c[1]}w{c[2]}c{c[3]}k{c[4]}s{c[5]}p{c[6]}")
def test_native_forward_equals_grouped_conv(case):
    n, h, w, c, k, s, pad = case
    x, _ = _operands(*case)
    kernel = jax.random.normal(jax.random.key(c), (k, k, 1, c))
    want = np.asarray(depthwise._grouped(x, kernel, s, pad), np.float64)
    got = np.asarray(jax.jit(lambda x, kernel: native.depthwise_conv(x, kernel, s, pad))(x, kernel), np.float64)
    assert got.shape == want.shape
    # Each output sums at most k*k = 25 float32 products of N(0, 1) numbers, in another order than XLA's conv:
    # 1e-5 of the largest output is ~100x that rounding and far below a wrong tap or a missed border.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@needs_native
@pytest.mark.parametrize("case", [CASES[3], CASES[4], FWD_CASES[-3]], ids=lambda c: f"c{c[3]}k{c[4]}s{c[5]}")
def test_gradients_through_native_forward_match_grouped(case):
    n, h, w, c, k, s, pad = case
    x, g = _operands(*case)
    kernel = jax.random.normal(jax.random.key(c), (k, k, 1, c))

    def vjp(impl):
        y, pull = jax.vjp(lambda x, kk: depthwise.depthwise_conv(x, kk, s, pad, impl), x, kernel)
        return (y, *pull(g))

    hlo = jax.jit(lambda x, kk: depthwise.depthwise_conv(x, kk, s, pad, "shift_vjp")).lower(x, kernel).as_text()
    assert native._DW_FWD in hlo
    with jax.default_matmul_precision("highest"):
        want = jax.jit(lambda: vjp("grouped"))()
    got = jax.jit(lambda: vjp("shift_vjp"))()
    for name, a, b in zip(("y", "dx", "dkernel"), got, want, strict=True):
        b = np.asarray(b, np.float64)
        # y, dx: sums of <= 25 products; dkernel: N*Ho*Wo products, as in test_native_kernel_grad_equals_xla.
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=0, atol=1e-5 * np.abs(b).max(), err_msg=name)


@needs_native
def test_symbolic_batch_keeps_xla_taps():
    # jax.export with a symbolic batch (`effnet export --format stablehlo`) must not reach effnet's custom calls.
    (batch,) = jax.export.symbolic_shape("batch")
    x = jax.ShapeDtypeStruct((batch, 12, 12, 24), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 1, 24), jnp.float32)
    f = jax.jit(lambda x, k: depthwise.depthwise_conv(x, k, 2, ((0, 1), (0, 1)), "shift_vjp"))
    text = jax.export.export(f, platforms=["cpu"])(x, kernel).mlir_module()
    assert set(re.findall(r"custom_call @(\w+)", text)) <= {"shape_assertion"}  # jax's own check of the batch


@needs_native
def test_cpu_gradient_uses_the_native_kernel():
    x, g = _operands(*CASES[0])
    kernel = jnp.ones((3, 3, 1, 32))
    loss = lambda x, kernel: jnp.sum(depthwise.depthwise_conv(x, kernel, 1, ((1, 1), (1, 1)), "shift_vjp") * g)
    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, kernel).as_text()
    assert native._TARGET in hlo


@needs_native
def test_two_native_calls_at_once_do_not_deadlock():
    # XLA may run independent custom calls concurrently on its 2-thread pool; each call's parts are claimed by
    # whoever is free, so neither waits for a task the other is blocking. A deadlock would hang here.
    (x1, g1), (x2, g2) = _operands(*CASES[0]), _operands(*CASES[4])
    f = jax.jit(
        lambda x1, g1, x2, g2: (
            native.depthwise_kernel_grad(x1, g1, (3, 3, 1, 32), 1, ((1, 1), (1, 1))),
            native.depthwise_kernel_grad(x2, g2, (5, 5, 1, 40), 2, ((1, 2), (1, 2))),
        )
    )
    for _ in range(20):
        a, b = f(x1, g1, x2, g2)
    np.testing.assert_allclose(a, depthwise._kernel_grad(x1, g1, (3, 3, 1, 32), 1, ((1, 1), (1, 1))), atol=1e-3)
    np.testing.assert_allclose(b, depthwise._kernel_grad(x2, g2, (5, 5, 1, 40), 2, ((1, 2), (1, 2))), atol=1e-3)


@needs_native
def test_native_dense_and_depthwise_calls_at_once_do_not_deadlock():
    # The stem's forward, its kernel gradient and the depthwise kernel gradient and forward,
    # independent of each other, may run concurrently on XLA's pool (same part-claiming scheme in every source).
    from effnet_jax.ops import dense

    x1, g1 = _operands(*CASES[0])
    x2 = jax.random.normal(jax.random.key(7), (4, 20, 18, 3))
    k2 = jax.random.normal(jax.random.key(8), (3, 3, 3, 32))
    g2 = jax.random.normal(jax.random.key(9), (4, 10, 9, 32))
    k1 = jax.random.normal(jax.random.key(10), (3, 3, 1, 32))
    pad = ((0, 1), (0, 1))
    f = jax.jit(
        lambda x1, g1, x2, k2, g2: (
            native.depthwise_kernel_grad(x1, g1, (3, 3, 1, 32), 1, ((1, 1), (1, 1))),
            native.dense_small_cin_conv(x2, k2, 2, pad),
            native.dense_small_cin_kernel_grad(x2, g2, k2.shape, 2, pad),
            native.depthwise_conv(x1, k1, 1, ((1, 1), (1, 1))),
        )
    )
    for _ in range(20):
        a, y, dk, dw_y = f(x1, g1, x2, k2, g2)
    np.testing.assert_allclose(dw_y, depthwise._grouped(x1, k1, 1, ((1, 1), (1, 1))), atol=1e-4)
    np.testing.assert_allclose(a, depthwise._kernel_grad(x1, g1, (3, 3, 1, 32), 1, ((1, 1), (1, 1))), atol=1e-3)
    np.testing.assert_allclose(y, dense._lax_conv(x2, k2, 2, pad), atol=1e-4)
    want_dk = jax.vjp(lambda k: dense._lax_conv(x2, k, 2, pad), k2)[1](g2)[0]
    np.testing.assert_allclose(dk, want_dk, atol=1e-3)


_PROBE = textwrap.dedent(
    """
    import warnings, jax, jax.numpy as jnp
    from effnet_jax.ops import depthwise, native
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = native.available()
    x = jnp.ones((1, 6, 6, 4))
    loss = lambda x, k: jnp.sum(depthwise.depthwise_conv(x, k, 1, ((1, 1), (1, 1)), "shift_vjp"))
    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, jnp.ones((3, 3, 1, 4))).as_text()
    print(ok, native._TARGET in hlo, len(caught), [str(w.message)[:60] for w in caught])
    """
)


def _probe(tmp_path, stderr: list | None = None, **env) -> str:
    full = {**os.environ, "EFFNET_CACHE_DIR": str(tmp_path / "cache"), **env}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True, check=True)
    if stderr is not None:
        stderr += proc.stderr.splitlines()
    return proc.stdout.splitlines()[-1]


_BUILDING = "[effnet] building the native CPU kernels"


def test_turned_off_means_xla_and_no_build(tmp_path):
    assert _probe(tmp_path, EFFNET_NATIVE="0").startswith("False False 0 ")
    assert not (tmp_path / "cache").exists()


def test_failed_build_warns_once_and_falls_back(tmp_path):
    out = _probe(tmp_path, CXX=shutil.which("false") or "/bin/false")
    assert out.startswith("False False 1 ")
    assert "native CPU kernels unavailable" in out
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written left to load next time


@pytest.mark.integration  # several real g++ builds
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_build_is_cached_by_source_jax_and_cpu_and_says_so_once(tmp_path):
    first, second = [], []
    assert _probe(tmp_path, first).startswith("True True 0 ")
    assert [line for line in first if line.startswith(_BUILDING)] == [
        f"{_BUILDING} with {shutil.which('g++') or shutil.which('c++')} (once, cached in {tmp_path / 'cache'})"
    ], "one line before a user's first jit pauses for the compiler"
    (lib,) = (tmp_path / "cache").glob("effnet_native-*.so")
    stamp = lib.stat().st_mtime_ns
    assert _probe(tmp_path, second, CXX=shutil.which("false") or "/bin/false").startswith("True True 0 ")  # cached
    assert not [line for line in second if _BUILDING in line]
    assert lib.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [lib.name]  # no temp folders left


def test_a_compiler_past_the_timeout_is_stopped_and_xla_runs(tmp_path, monkeypatch):
    slow = tmp_path / "slow-cxx"
    slow.write_text("#!/bin/sh\nsleep 60 &\nsleep 60\n")  # with a child holding stderr open, as g++'s cc1plus does
    slow.chmod(0o755)
    monkeypatch.setenv("CXX", str(slow))
    monkeypatch.setenv(native.env.CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setattr(native, "BUILD_TIMEOUT_S", 1.0)
    monkeypatch.setattr(native, "_loaded", None)
    t0 = time.monotonic()
    with pytest.warns(RuntimeWarning, match=r"native CPU kernels unavailable.*ran past 1 s"):
        assert native.available() is False
    assert time.monotonic() - t0 < 30, "the compiler's whole process group is stopped, not left holding the pipe"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.available() is False  # tried once per process: no second wait, no second warning
    assert not list((tmp_path / "cache").glob("*.so"))


def test_the_build_compiles_every_source_and_keys_on_every_header_it_includes():
    """A header missing from `_HEADERS` would not be copied beside the sources (the build fails) nor be part of the
    cache key (an edited header would load a stale library)."""
    csrc = resources.files("effnet_jax.ops").joinpath("csrc")
    names = sorted(p.name for p in csrc.iterdir())
    assert names == sorted((*native._SOURCES, *native._HEADERS))
    for name in names:
        for header in re.findall(r'#include "([^"]+)"', csrc.joinpath(name).read_text()):
            assert header.startswith("xla/") or header in native._HEADERS, f"{name} includes {header}"


def test_bad_switch_value_is_named(monkeypatch):
    monkeypatch.setenv(native.ENV, "maybe")
    with pytest.raises(ValueError, match="EFFNET_NATIVE='maybe'"):
        native._wanted()
