"""Memory preflight: a compiled step that cannot fit is refused in one line before it runs, not ended by the
kernel's OOM killer with the single word "Killed" (or a raw `RESOURCE_EXHAUSTED` error on an accelerator).

An XLA executable knows its memory before it runs: `compiled.memory_analysis()` gives its temporaries, arguments,
outputs and the outputs that reuse donated arguments. `check` adds what the caller holds beside it on the host (the
input pipeline's batches) and compares the sum with what the process can use:

- on the CPU, the smallest headroom among the host's available RAM (`MemAvailable`), the cgroup's limit (v2
  `memory.max`, v1 `memory.limit_in_bytes`, on the process's cgroup and its ancestors) less its usage without page
  cache, and `ulimit -v` (RLIMIT_AS) less the address space in use;
- on a GPU/TPU, the device's `bytes_limit` less its `bytes_in_use`;

plus the bytes the step's arguments already hold (a train state allocated before the step compiled is in both).

`EFFNET_MEMORY_LIMIT=SIZE` (bytes, or 512M, 8G, ...) caps what a step may use, below what is measured; `=off` skips
the check (where swap or overcommit lets a process use more than these numbers say).
"""

from __future__ import annotations

import os
import re
import resource

from .. import env

__all__ = ["ENV", "NotEnoughMemory", "check", "fmt", "host_headroom", "is_out_of_memory", "stated_limit"]

ENV = env.MEMORY_LIMIT
PROC = "/proc"  # where meminfo, self/status and self/cgroup are read (tests point it at fakes)
CGROUP = "/sys/fs/cgroup"
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge page-rounded number


class NotEnoughMemory(ValueError, MemoryError):
    """A step needs more memory than the process can use; the message states both and how to fit."""


def fmt(n: int) -> str:
    """Bytes for a person: 1.5 GiB, 12 MiB, 64 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GiB" else f"{n / scale:.0f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def parse_size(text: str) -> int:
    """'4096', '512M', '8G', '1.5GiB' -> bytes (K, M, G, T are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{ENV}={text!r}: expected a size such as 512M or 8G (or off)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def stated_limit() -> int | None:
    """The budget EFFNET_MEMORY_LIMIT states (None: unset); 'off' comes back as -1."""
    raw = env.text(ENV)
    if not raw:
        return None
    if raw.lower() in env.FALSE + ("none",):
        return -1
    return parse_size(raw)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _fields(text: str | None) -> dict[str, int]:
    """'key value' or 'Key: value kB' lines -> {key: int} (kB values in bytes)."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
    return out


def _cgroup_headroom() -> tuple[int, str] | None:
    """The tightest cgroup memory limit less its usage (page cache excluded: the kernel reclaims it first), over
    the process's cgroup and its ancestors, v2 or v1."""
    best = None
    for line in (_read(os.path.join(PROC, "self/cgroup")) or "").splitlines():
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root, limit_file, usage_file, name = CGROUP, "memory.max", "memory.current", "cgroup memory.max"
            cache = ("active_file", "inactive_file")
        elif "memory" in controllers.split(","):
            root, limit_file, usage_file = (
                os.path.join(CGROUP, "memory"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
            name, cache = "cgroup memory.limit_in_bytes", ("total_active_file", "total_inactive_file")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            here = os.path.join(root, *parts[:depth])
            limit = (_read(os.path.join(here, limit_file)) or "").strip()
            usage = (_read(os.path.join(here, usage_file)) or "").strip()
            if not (limit.isdigit() and usage.isdigit()) or int(limit) >= _UNLIMITED:
                continue
            stat = _fields(_read(os.path.join(here, "memory.stat")))
            used = max(0, int(usage) - sum(stat.get(k, 0) for k in cache))
            room = int(limit) - used
            if best is None or room < best[0]:
                best = (room, f"{name} {fmt(int(limit))} less {fmt(used)} in use")
    return best


def host_headroom() -> list[tuple[int, str]]:
    """(bytes this process can still allocate on the host, what says so), for every limit found."""
    found = []
    available = _fields(_read(os.path.join(PROC, "meminfo"))).get("MemAvailable")
    if available is not None:
        found.append((available, "host RAM available (MemAvailable)"))
    cgroup = _cgroup_headroom()
    if cgroup:
        found.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        size = _fields(_read(os.path.join(PROC, "self/status"))).get("VmSize", 0)
        found.append((soft - size, f"ulimit -v {fmt(soft)} less {fmt(size)} of address space in use"))
    return found


def _device_headroom(device) -> list[tuple[int, str]]:
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return []
    limit, used = stats["bytes_limit"], stats.get("bytes_in_use", 0)
    return [(limit - used, f"{device.platform} device memory {fmt(limit)} less {fmt(used)} in use")]


def _held(args, device) -> int:
    """Bytes `args`' arrays hold on `device` (every local device when None: the CPU's share one RAM)."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(args):
        for shard in getattr(leaf, "addressable_shards", ()):
            if device is None or shard.device == device:
                total += shard.data.nbytes
    return total


def check(compiled, *, what: str, fits: str, held=(), host_extra: int = 0) -> tuple[int, int] | None:
    """Refuse `compiled` (a `jax.stages.Compiled`) when it cannot fit, before it runs; (need, usable) when it fits,
    None when there is nothing to compare (the check is off, no analysis or no limit known).

    Args:
      what: the step's name for the message ("the train step").
      fits: the ways to fit, for the message ("a smaller global_batch (now 64), ...").
      held: the step's arguments already allocated (a train state): counted in its need and in what it can use.
      host_extra: host bytes the caller holds beside the step (the input pipeline's batches); added on the CPU.

    Raises:
      NotEnoughMemory: one line with the need, what the process can use, and `fits`.
      ValueError: an unusable EFFNET_MEMORY_LIMIT.
    """
    stated = stated_limit()
    if stated == -1:
        return None
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # a backend without the analysis: nothing to check against  # noqa: BLE001
        return None
    if analysis is None:
        return None
    devices = _devices(compiled)
    cpu = not devices or devices[0].platform == "cpu"
    copies = max(1, len(devices)) if cpu else 1  # every CPU device runs its copy of the program in the same RAM
    temp = analysis.temp_size_in_bytes * copies
    args = analysis.argument_size_in_bytes * copies
    outs = (analysis.output_size_in_bytes - analysis.alias_size_in_bytes) * copies
    extra = host_extra if cpu else 0  # on an accelerator the host's batches are not in the device's pool
    need = temp + args + outs + extra
    if cpu:
        limits, holds = host_headroom(), _held(held, None)
    else:  # the fullest device decides
        limits = [x for d in devices for x in _device_headroom(d)]
        holds = _held(held, devices[0])
    can = [(room + holds, where) for room, where in limits]
    if stated is not None:
        can.append((stated, ENV))
    if not can:
        return None
    usable, where = min(can, key=lambda x: x[0])
    if need <= usable:
        return need, usable
    detail = f"XLA: {fmt(temp)} temporaries, {fmt(args)} arguments, {fmt(outs)} new outputs"
    if extra:
        detail += f"; {fmt(extra)} of input batches"
    also = f", plus the {fmt(holds)} its arguments already hold" if holds and where != ENV else ""
    raise NotEnoughMemory(
        f"{what} needs {fmt(need)} of memory ({detail}) but this process can use {fmt(usable)} ({where}{also}); "
        f"to fit: {fits}"
    )


def _devices(compiled) -> list:
    """The local devices `compiled` runs on."""
    import jax

    devices = set()
    for sharding in jax.tree.leaves(compiled.input_shardings):
        devices |= getattr(sharding, "device_set", set())
    local = [d for d in devices if d.process_index == jax.process_index()]
    return sorted(local, key=lambda d: d.id)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: Python's, XLA's RESOURCE_EXHAUSTED, or torch's CPU allocator."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "can't allocate memory" in text
