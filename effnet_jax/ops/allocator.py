"""A fast malloc for the `effnet` command: re-execute once with tcmalloc (or jemalloc, mimalloc) preloaded.

XLA CPU mallocs each call's temporaries in one large block and frees it when the call returns; glibc serves such
blocks with a fresh `mmap` and unmaps them on free, so every step faults its pages in and the kernel zeroes them
(`ops/host_memory.py`, `benchmarks/results/allocators-cpu.md`). tcmalloc, jemalloc and mimalloc keep freed memory
for reuse without glibc's single-arena lock. An allocator must be in place before the process's first malloc,
so the `effnet` command re-executes itself with `LD_PRELOAD` (the way Cloud TPU VMs preload tcmalloc for every
process); a library user starts Python that way (`allocator_hint` says how).

EFFNET_ALLOCATOR=auto (default) | tcmalloc | jemalloc | mimalloc | glibc (keep glibc's) | /path/to/libX.so

Stdlib only, and jax stays unimported: this runs before anything else in the process.
"""

from __future__ import annotations

import glob
import os
import platform
import subprocess
import sys
import warnings

from .. import env

__all__ = ["ENV", "KNOWN", "SlowAllocatorWarning", "active", "allocator_hint", "find", "hint_once", "preload"]

ENV = env.ALLOCATOR
_REEXEC = "EFFNET_ALLOCATOR_REEXEC"  # set in the re-executed process: never loop

# The shared objects of each allocator, best first. Debian/Ubuntu: libtcmalloc-minimal4, libjemalloc2,
# libmimalloc2.0; PyPI: cmeel-mimalloc (installs under site-packages/cmeel.prefix/lib).
KNOWN: dict[str, tuple[str, ...]] = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
    "mimalloc": ("libmimalloc.so.3", "libmimalloc.so.2", "libmimalloc.so"),
}
AUTO = ("tcmalloc", "jemalloc", "mimalloc")  # the order measured best first on the b0 CPU train step


def _glibc_linux() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _system_libraries() -> dict[str, str]:
    """soname -> path of the libraries the dynamic linker knows (`ldconfig -p`); empty where there is none."""
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        x86_64 = platform.machine() in ("x86_64", "AMD64")
        found = {}
        for line in out.splitlines():
            name, sep, path = line.strip().partition(" => ")
            if sep and (not x86_64 or "x86-64" in name):  # not the 32-bit copies
                found.setdefault(name.split(" ", 1)[0], path.strip())
        return found
    return {}


def _pip_libraries() -> dict[str, str]:
    """soname -> path of allocators installed from PyPI (cmeel-mimalloc) in this interpreter's site-packages."""
    found = {}
    for entry in sys.path:
        for path in glob.glob(os.path.join(glob.escape(entry or "."), "cmeel.prefix", "lib", "lib*malloc*.so*")):
            found.setdefault(os.path.basename(path), path)
    return found


def find(name: str = "auto") -> tuple[str, str] | None:
    """(allocator, path) for `name` ("auto": the first of AUTO present), or None if none is installed."""
    names = AUTO if name == "auto" else (name,)
    libraries = {**_system_libraries(), **_pip_libraries()}  # one installed into this environment wins
    for allocator in names:
        for soname in KNOWN[allocator]:
            if soname in libraries and os.path.exists(libraries[soname]):
                return allocator, libraries[soname]
    return None


def active() -> str | None:
    """The allocator this process runs on, read from its own memory map: "tcmalloc", "jemalloc", "mimalloc",
    or None (glibc's malloc, or not Linux)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    for allocator in AUTO:
        if f"lib{allocator}" in maps:
            return allocator
    return None


def _choice() -> str:
    """EFFNET_ALLOCATOR, checked. Raises ValueError naming the variable."""
    choice = env.text(ENV, "auto")
    if choice in ("auto", "glibc", *KNOWN) or os.path.sep in choice:
        return choice
    raise ValueError(f"{ENV}={choice!r}: expected auto, glibc, {', '.join(KNOWN)} or a path to a shared library")


def preload(argv: list[str]) -> str:
    """Before the first heavy allocation: re-execute this process with a fast allocator preloaded, as
    EFFNET_ALLOCATOR says. Returns (in the process that goes on) one line saying what is in use; does not return
    where it re-executes. `argv` is the command line to run again (`sys.orig_argv`).

    Raises:
        ValueError: a bad EFFNET_ALLOCATOR value (a path the dynamic linker would refuse included), or a bad
            EFFNET_RETAIN_HOST_MEMORY one.
    """
    choice = _choice()
    running = active()
    reexecuted = os.environ.pop(_REEXEC, None)  # not inherited by the processes this one starts
    if running:
        how = "re-executed with LD_PRELOAD" if reexecuted else "already preloaded"
        return f"allocator: {running} ({how}; {ENV}=glibc keeps glibc's malloc)"
    if reexecuted and _mapped(reexecuted):  # a library of the user's own that `active` does not know by name
        return f"allocator: {reexecuted} (re-executed with LD_PRELOAD; {ENV}=glibc keeps glibc's malloc)"
    if reexecuted:  # preloaded, yet not in our maps: the dynamic linker refused it (and said so, once)
        rest = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p and p != reexecuted]
        if rest:  # the processes this one starts must not repeat the linker's complaint
            os.environ["LD_PRELOAD"] = ":".join(rest)
        else:
            os.environ.pop("LD_PRELOAD", None)
        return f"allocator: glibc malloc ({reexecuted} could not be preloaded)"
    if choice == "glibc" or not _glibc_linux() or env.flag(env.RETAIN_HOST_MEMORY, default=False):
        return "allocator: glibc malloc (as asked)" if choice == "glibc" else "allocator: the platform's malloc"
    if os.path.sep in choice:
        problem = _not_preloadable(choice)
        if problem:
            raise ValueError(f"{ENV}={choice!r}: {problem}")
        found = (os.path.basename(choice), choice)
    else:
        found = find(choice)
    if found is None:
        wanted = "tcmalloc, jemalloc or mimalloc" if choice == "auto" else choice
        return (
            f"allocator: glibc malloc; no {wanted} found, and the CPU train step runs several times slower under "
            "glibc's: install tcmalloc (Debian/Ubuntu: apt install libtcmalloc-minimal4)"
        )
    preloads = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    environ = {**os.environ, "LD_PRELOAD": ":".join([found[1], *preloads]), _REEXEC: found[1]}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], environ)
    raise AssertionError("unreachable")  # pragma: no cover


def _mapped(path: str) -> bool:
    """Whether the shared library at `path` is loaded in this process (in its memory map)."""
    try:
        with open("/proc/self/maps") as f:
            return os.path.realpath(path) in f.read()
    except OSError:
        return False


def _not_preloadable(path: str) -> str | None:
    """Why the dynamic linker would refuse `path` in LD_PRELOAD (it would say so in every process this one starts,
    and go on without it), or None: a missing file, a folder, no ELF shared object, or one built for another
    machine than this interpreter."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
        with open(sys.executable, "rb") as f:
            ours = f.read(20)
    except IsADirectoryError:
        return "is a folder, not a shared library"
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return "not a shared library (no ELF header)"
    order = "little" if head[5] == 1 else "big"
    if int.from_bytes(head[16:18], order) != 3:  # e_type ET_DYN: a shared object
        return "an ELF file but not a shared library"
    if ours[:4] == b"\x7fELF" and (head[4:6] != ours[4:6] or head[18:20] != ours[18:20]):  # class, byte order, machine
        return f"built for another machine than this Python ({sys.executable})"
    return None


def allocator_hint() -> str | None:
    """For library users on CPU: how to get a fast allocator, when this process runs on glibc's malloc."""
    if not _glibc_linux() or active() is not None:
        return None
    found = find()
    how = f"LD_PRELOAD={found[1]} python ..." if found else "apt install libtcmalloc-minimal4, then LD_PRELOAD=it"
    return (
        "effnet: this process uses glibc's malloc, under which XLA CPU's train step runs several times slower; "
        f"start Python with a fast allocator preloaded ({how}), or call effnet_jax.retain_host_memory() first"
    )


class SlowAllocatorWarning(UserWarning):
    """JAX computes on the CPU under glibc's malloc (see `allocator_hint`)."""


_hinted = False


def hint_once() -> None:
    """Warn once per process when JAX computes on the CPU under glibc's malloc: for library users (the `effnet`
    command re-executes instead). Silent under EFFNET_ALLOCATOR=glibc or `retain_host_memory()`."""
    global _hinted
    if _hinted:
        return
    _hinted = True
    from . import host_memory

    if env.text(ENV) == "glibc" or host_memory.retained or not _glibc_linux() or active() is not None:
        return
    import jax

    if jax.default_backend() == "cpu":
        warnings.warn(allocator_hint(), SlowAllocatorWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The `stacklevel` that makes a warning raised by our caller point at the first frame outside effnet_jax, Flax
    and JAX: the user's line that built the model, however deep Flax's module construction goes."""
    inside = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    inside += [os.path.dirname(m.__file__) for m in map(sys.modules.get, ("flax", "jax")) if m and m.__file__]
    inside = tuple(os.path.join(p, "") for p in inside)
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
