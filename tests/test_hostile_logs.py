"""Readable logs (issue 28, group 13): a run of unreadable images names each file once, in one line, then one line
ends it; a redirected run prints plain progress lines, not bar frames; an unusable EFFNET_RETAIN_HOST_MEMORY or
EFFNET_ALLOCATOR value is one line and exit 2. All in-process, no jax compile."""

from __future__ import annotations

import io
import os
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from effnet_jax import cli, logs
from effnet_jax.ops import allocator, host_memory
from effnet_jax.train.data import MAX_SUBSTITUTES, ImageFolderSource
from effnet_jax.train.progress import PlainProgress, progress_bar

# ------------------------------------------------------------------------------------- unreadable images


def test_a_run_of_unreadable_images_names_each_file_once_then_one_line_ends_it(tmp_path):
    bad = MAX_SUBSTITUTES + 50  # the first 150 files in sort order cannot be read; the probe finds a readable one
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    for i in range(bad):
        (tmp_path / "a" / f"{i:03d}.png").write_bytes(b"not a png")
    for i in range(bad // 3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b" / f"{i}.png")
    src = ImageFolderSource(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors = []
        for i in range(0, bad, 10):  # each item tries the files after it until one reads: the same bad ones again
            try:
                src[i]
            except ValueError as e:
                errors.append(str(e))
    named = [str(w.message).split("'")[1] for w in caught if issubclass(w.category, logs.UnreadableImageWarning)]
    assert len(named) == len(set(named)) == bad, "each unreadable file named once (was once per item that met it)"
    assert src.skipped > bad, "the files were met several times"
    assert len(errors) == 6 and "100 consecutive images" in errors[0]
    assert f"{MAX_SUBSTITUTES} unreadable images skipped in this process, the first '{tmp_path}/a/000.png'" in errors[0]
    with logs.one_line_warnings():  # as the CLI prints them: one line, no source location
        text = warnings.formatwarning(caught[0].message, caught[0].category, caught[0].filename, caught[0].lineno)
    assert (
        text.count("\n") == 1 and text.startswith("[effnet] warning: skipping unreadable image") and ".py" not in text
    )
    assert warnings.formatwarning is not logs._one_line, "restored after"


def test_the_command_prints_a_warning_as_one_line(capsys, monkeypatch):
    seen = []

    def subcommand(args):
        seen.append(warnings.formatwarning("a library\nsays this", FutureWarning, "/x/lib.py", 3))
        return 0

    monkeypatch.setattr("effnet_jax.cli.summary.main", subcommand)
    assert cli.main(["summary", "b0"]) == 0
    assert seen == ["[effnet] warning: FutureWarning: a library says this\n"]


# ------------------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_redirected_run_prints_plain_lines_a_terminal_gets_the_bar():
    log = io.StringIO()
    bar = progress_bar(100, 0, stream=log, every_s=3600)
    assert isinstance(bar, PlainProgress)
    for step in range(10, 101, 10):
        bar.set_postfix(loss=f"{1 / step:.3f}")
        bar.update(10)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2, "the first line, then only the last within the interval"
    assert lines[0] == "[effnet] step 10/100 (10%) loss=0.100; 0:00 elapsed"
    assert lines[1] == "[effnet] step 100/100 (100%) loss=0.010; 0:00 elapsed"
    every = progress_bar(4, 0, stream=(log := io.StringIO()), every_s=0)
    for _ in range(4):
        every.update(1)
    assert len(log.getvalue().splitlines()) == 4 and "left" in log.getvalue().splitlines()[1]
    assert not isinstance(progress_bar(10, stream=_Terminal()), PlainProgress), "a terminal keeps tqdm's bar"
    quiet = progress_bar(10, stream=(log := io.StringIO()), enabled=False)
    quiet.update(10)
    quiet.close()
    assert log.getvalue() == ""


# ------------------------------------------------------------------------------------- environment switches


def _elf(cls: int = 2, e_type: int = 3) -> bytes:
    with open(sys.executable, "rb") as f:
        ours = bytearray(f.read(64))
    ours[4], ours[16:18] = cls, e_type.to_bytes(2, "little" if ours[5] == 1 else "big")
    return bytes(ours)


ALLOCATOR_CASES = [  # (what EFFNET_ALLOCATOR names, how it is made, the reason in the line)
    ("missing", None, "no such file"),
    ("folder", "dir", "is a folder, not a shared library"),
    ("text", b"not a library\n", "not a shared library (no ELF header)"),
    ("relocatable", _elf(e_type=1), "an ELF file but not a shared library"),
    ("other-machine", _elf(cls=1), "built for another machine than this Python"),
]


@pytest.mark.parametrize(("name", "content", "reason"), ALLOCATOR_CASES, ids=[c[0] for c in ALLOCATOR_CASES])
def test_an_allocator_the_linker_would_refuse_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, name, content,
                                                                     reason):  # fmt: skip
    path = tmp_path / f"lib{name}.so"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    before = sorted(os.listdir(tmp_path))
    monkeypatch.setenv(allocator.ENV, str(path))
    monkeypatch.delenv(host_memory.ENV, raising=False)
    monkeypatch.setattr(allocator, "active", lambda: None)
    monkeypatch.setattr(allocator, "_glibc_linux", lambda: True)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed with a library the linker refuses"))
    assert cli.main(["predict", "--help"], fast_malloc=True) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"effnet: error: EFFNET_ALLOCATOR={str(path)!r}: {reason}") and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("command", [["summary", "b0"], ["predict", "--help"]])
def test_an_unusable_retain_host_memory_value_is_one_line_and_exit_2(monkeypatch, capsys, command):
    monkeypatch.setenv(host_memory.ENV, "maybe")
    monkeypatch.setenv(allocator.ENV, "glibc")
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed"))
    assert cli.main(command, fast_malloc=True) == 2
    captured = capsys.readouterr()
    assert captured.err == ("effnet: error: EFFNET_RETAIN_HOST_MEMORY='maybe': expected 1/true/yes/on or "
                            "0/false/no/off\n") and captured.out == ""  # fmt: skip


def test_retain_host_memory_0_still_gets_the_fast_allocator(monkeypatch):
    """`=0` means off: it used to count as set, and the command stayed on glibc's malloc."""
    monkeypatch.setenv(host_memory.ENV, "0")
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator, "active", lambda: None)
    monkeypatch.setattr(allocator, "_glibc_linux", lambda: True)
    monkeypatch.setattr(allocator, "find", lambda name="auto": ("tcmalloc", "/lib/libtcmalloc_minimal.so.4"))

    def execve(exe, argv, environ):
        raise SystemExit(environ["LD_PRELOAD"])

    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(SystemExit, match="libtcmalloc_minimal"):
        allocator.preload(["effnet", "train"])


def test_a_library_the_linker_refused_is_not_preloaded_again_in_child_processes(monkeypatch):
    monkeypatch.setenv("EFFNET_ALLOCATOR_REEXEC", "/opt/libbroken.so")
    monkeypatch.setenv("LD_PRELOAD", "/opt/libbroken.so:/opt/libother.so")
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator, "active", lambda: None)
    assert (
        allocator.preload(["effnet", "train"]) == "allocator: glibc malloc (/opt/libbroken.so could not be preloaded)"
    )
    assert os.environ["LD_PRELOAD"] == "/opt/libother.so"
