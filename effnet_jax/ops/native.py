"""Native CPU kernels: built on first use with the system's C++ compiler, called through XLA FFI.

XLA CPU runs the depthwise kernel gradient (a k*k-way reduction over N, H, W per channel) slowly;
`csrc/depthwise_kgrad.cc`, a plain loop vectorised over channels, is several times faster at B0's shapes
(`benchmarks/results/depthwise-kgrad-ffi-cpu.md`). `depthwise`'s CPU path uses it when `available()`.

XLA CPU also runs a dense conv with few input channels (the stem: 3x3, stride 2, C = 3) at ~10 GFLOP/s, its
contraction being only kh*kw*C deep; `csrc/dense_small_cin.cc` computes its forward and kernel gradient with
a block of output pixels x output channels in registers, ~6x faster for b0's stem (`benchmarks/results/stem-cpu.md`).
`dense.dense_conv` uses it on CPU when `available()`.

Train-mode BatchNorm + activation (`csrc/bn_act.cc`): XLA CPU runs the column reductions and the elementwise passes
around them as several loops over the activation; one call for the forward (statistics, then `act(x * a + b)`) and
one for the backward of `bn_act.batch_norm_act` read each operand twice, vectorised over channels.

The depthwise forward, which XLA CPU runs as k*k strided passes over the input (at inference recomputing a fused
BN + SiLU once per tap), is `csrc/depthwise_fwd.cc`: a block of output pixels x channel vectors in registers over
all taps; `depthwise`'s ``shift_vjp`` uses it on CPU when `available()`. (Its transpose, the input gradient, was
native too until it proved not to pay inside the model: `git show e4e820b:effnet_jax/ops/csrc/depthwise_dgrad.cc`.)

The library (all sources) is compiled once per (sources, jax version, CPU) with `g++ -O3 -march=native` against
jaxlib's FFI headers and cached in `$EFFNET_CACHE_DIR` (default `~/.cache/effnet`), written atomically so concurrent
processes never load a half-written file. The build happens inside the first `jit` that reaches a native kernel,
so it says so in one line on stderr, and a compiler that runs past `BUILD_TIMEOUT_S` is killed. No compiler, a
failed or timed-out build or `EFFNET_NATIVE=0` leaves `available()` False (with one warning for a failure) and
callers keep the XLA formulation, which computes the same function. The custom calls have no sharding rule: under
`jit` with a batch sharded over several CPU devices XLA gathers its operands onto each device (correct, not fast).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

from .. import env

__all__ = [
    "ACTIVATIONS",
    "BUILD_TIMEOUT_S",
    "ENV",
    "available",
    "bn_act_backward",
    "bn_act_forward",
    "dense_small_cin_conv",
    "dense_small_cin_kernel_grad",
    "depthwise_conv",
    "depthwise_kernel_grad",
    "usable",
]

ENV = env.NATIVE
_SOURCES = ("depthwise_kgrad.cc", "dense_small_cin.cc", "depthwise_fwd.cc", "bn_act.cc")
_HEADERS = ("parallel.h", "vec.h")  # included by the sources: part of the cache key, copied beside them
_TARGET = "effnet_depthwise_kgrad"
_DW_FWD = "effnet_depthwise_fwd"
_DENSE_FWD = "effnet_dense_small_cin_fwd"
_DENSE_KGRAD = "effnet_dense_small_cin_kgrad"
_BN_FWD = "effnet_bn_act_fwd"
_BN_BWD = "effnet_bn_act_bwd"
# FFI target -> exported handler symbol
_TARGETS = {
    _TARGET: "EffnetDepthwiseKgrad",
    _DW_FWD: "EffnetDepthwiseFwd",
    _DENSE_FWD: "EffnetDenseSmallCinFwd",
    _DENSE_KGRAD: "EffnetDenseSmallCinKgrad",
    _BN_FWD: "EffnetBnActFwd",
    _BN_BWD: "EffnetBnActBwd",
}
# Under jax.vmap each custom call runs once per example (a loop): the kernels take unbatched operands, and BN's
# statistics stay per example, as XLA's formulation computes them under vmap.
_VMAP = "sequential"
# activation name -> the code bn_act.cc's `Act` gives it
ACTIVATIONS = {None: 0, "silu": 1, "relu6": 2}
_FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-w")
# Seconds the compiler may run (about 30 s on a busy 2-core VM); a hung or crawling build costs a user's first jit
# no more than this, and then XLA's formulation runs.
BUILD_TIMEOUT_S = 300.0

_loaded: bool | None = None  # None: not tried yet in this process


def _wanted() -> bool:
    return env.flag(ENV, default=True)


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its feature flags (a shared home may span machines)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + "".join(lines)


def cache_dir() -> str:
    return env.text(env.CACHE_DIR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "effnet"
    )


def _build() -> str:
    """Path of the compiled library, building it first if this (sources and headers, jax, CPU) has none cached."""
    names = (*_SOURCES, *_HEADERS)
    files = {name: resources.files(__package__).joinpath("csrc", name).read_bytes() for name in names}
    parts = [name.encode() + b"\0" + files[name] for name in names]
    parts += [jax.__version__.encode(), " ".join(_FLAGS).encode(), _cpu_id().encode()]
    key = hashlib.sha256(b"\0".join(parts))
    folder = cache_dir()
    path = os.path.join(folder, f"effnet_native-{key.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise FileNotFoundError("no C++ compiler (g++ or c++ on PATH, or $CXX)")
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for name, text in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(text)
        srcs = [os.path.join(tmp, name) for name in _SOURCES]
        out = os.path.join(tmp, "lib.so")
        print(f"[effnet] building the native CPU kernels with {cxx} (once, cached in {folder})", file=sys.stderr)
        _compile([cxx, *_FLAGS, "-I", jax.ffi.include_dir(), *srcs, "-o", out])
        os.replace(out, path)  # atomic: another process sees the old state or the whole file
    return path


def _compile(cmd: list[str]) -> None:
    """Run the compiler; on a timeout kill its whole process group (g++ leaves cc1plus and ld running otherwise).

    Raises:
        TimeoutError: past `BUILD_TIMEOUT_S`.
        RuntimeError: the compiler failed (its stderr's tail in the message).
    """
    with subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            _, err = proc.communicate(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"{cmd[0]} ran past {BUILD_TIMEOUT_S:g} s and was stopped") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err.strip()[-2000:]}")


def available() -> bool:
    """Whether the native kernels are built and registered with XLA (tried once per process)."""
    global _loaded
    if _loaded is None:
        _loaded = False
        if _wanted():
            try:
                lib = ctypes.CDLL(_build())
                for target, symbol in _TARGETS.items():
                    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
                _loaded = True
            except (OSError, RuntimeError, AttributeError) as e:
                warnings.warn(
                    f"effnet: native CPU kernels unavailable, using the XLA formulation ({e}); "
                    f"set {ENV}=0 to skip the attempt",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _loaded


def usable(*operands) -> bool:
    """Whether the native kernels can take these operands: float32, concrete shapes (a symbolic one means jax.export,
    whose artifact must not name effnet's custom-call targets), and the library built (tried last, so nothing is
    built for a call that could not use it). The CPU platform is chosen by the caller's `lax.platform_dependent`."""
    return all(o.dtype == jnp.float32 and all(isinstance(d, int) for d in o.shape) for o in operands) and available()


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Depthwise conv of NHWC `x` with a (kh, kw, 1, C) kernel, explicit padding; float32, CPU only, no autodiff rule.

    Same function as `depthwise._shift_forward`; call only when `available()` and on the CPU platform
    (`depthwise`'s custom VJP wraps it).
    """
    kh, kw, _, c = kernel.shape
    (pt, pb), (pl, pr) = padding
    n, h, w, _ = x.shape
    ho, wo = (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1
    call = jax.ffi.ffi_call(_DW_FWD, jax.ShapeDtypeStruct((n, ho, wo, c), jnp.float32), vmap_method=_VMAP)
    return call(
        x.astype(jnp.float32),
        kernel.astype(jnp.float32).reshape(kh * kw, c),
        kh=np.int64(kh),
        kw=np.int64(kw),
        s=np.int64(stride),
        pt=np.int64(pt),
        pl=np.int64(pl),
    )


def depthwise_kernel_grad(x: jax.Array, g: jax.Array, kernel_shape, stride: int, padding) -> jax.Array:
    """dk (kh, kw, 1, C) of a depthwise conv of NHWC `x` whose output gradient is `g`; float32, CPU only.

    Same contract as `depthwise._kernel_grad`; call only when `available()` and on the CPU platform.
    """
    kh, kw, _, c = kernel_shape
    (pt, _), (pl, _) = padding
    call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct((kh * kw, c), jnp.float32), vmap_method=_VMAP)
    dk = call(
        x.astype(jnp.float32),
        g.astype(jnp.float32),
        kh=np.int64(kh),
        kw=np.int64(kw),
        s=np.int64(stride),
        pt=np.int64(pt),
        pl=np.int64(pl),
    )
    return dk.reshape(kernel_shape)


def _dense_attrs(stride: int, padding) -> dict:
    (pt, _), (pl, _) = padding
    return dict(s=np.int64(stride), pt=np.int64(pt), pl=np.int64(pl))


def dense_small_cin_conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Dense conv of NHWC `x` with an HWIO `kernel`, explicit padding; float32, CPU only, no autodiff rule.

    Meant for few input channels (the stem); same function as `lax.conv_general_dilated` with these dimension
    numbers. Call only when `available()` and on the CPU platform (`dense.dense_conv` wraps it in a VJP).
    """
    kh, kw, _, d = kernel.shape
    (pt, pb), (pl, pr) = padding
    n, h, w, _ = x.shape
    ho, wo = (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1
    call = jax.ffi.ffi_call(_DENSE_FWD, jax.ShapeDtypeStruct((n, ho, wo, d), jnp.float32), vmap_method=_VMAP)
    return call(x.astype(jnp.float32), kernel.astype(jnp.float32), **_dense_attrs(stride, padding))


def dense_small_cin_kernel_grad(x: jax.Array, g: jax.Array, kernel_shape, stride: int, padding) -> jax.Array:
    """dk (kh, kw, C, D) of `dense_small_cin_conv` whose output gradient is `g`; float32, CPU only."""
    call = jax.ffi.ffi_call(_DENSE_KGRAD, jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32), vmap_method=_VMAP)
    return call(x.astype(jnp.float32), g.astype(jnp.float32), **_dense_attrs(stride, padding))


def bn_act_forward(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, act: str | None):
    """(y, mean, biased var, rstd) of train-mode BN of (M, C) float32 `x` then `act`; CPU only, no autodiff rule."""
    m, c = x.shape
    vec = jax.ShapeDtypeStruct((c,), jnp.float32)
    call = jax.ffi.ffi_call(_BN_FWD, (jax.ShapeDtypeStruct((m, c), jnp.float32), vec, vec, vec), vmap_method=_VMAP)
    f32 = lambda v: v.astype(jnp.float32)  # noqa: E731
    return call(f32(x), f32(scale), f32(bias), eps=np.float32(eps), act=np.int64(ACTIVATIONS[act]))


def bn_act_backward(x, g, scale, bias, mean, rstd, act: str | None):
    """(dx, dscale, dbias) of `bn_act_forward`'s y with cotangent `g` (the statistics' own cotangents excluded)."""
    m, c = x.shape
    vec = jax.ShapeDtypeStruct((c,), jnp.float32)
    call = jax.ffi.ffi_call(_BN_BWD, (jax.ShapeDtypeStruct((m, c), jnp.float32), vec, vec), vmap_method=_VMAP)
    operands = (v.astype(jnp.float32) for v in (x, g, scale, bias, mean, rstd))
    return call(*operands, act=np.int64(ACTIVATIONS[act]))
