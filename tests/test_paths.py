"""Bad output paths get one line and a non-zero exit before any work: `effnet convert` OUT, `effnet train`'s
workdir, `effnet eval --checkpoint`. A read-only disk is a read-only tmpfs (root can mount one; skipped otherwise)."""

from __future__ import annotations

import os
import subprocess

import pytest

from effnet_jax.cli import main as cli_main


@pytest.fixture
def read_only_dir(tmp_path):
    path = tmp_path / "ro"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _convert(out, capsys):
    rc = cli_main(["convert", "/no/such/weights.pth", str(out)])
    return rc, capsys.readouterr().err


def test_convert_refuses_an_output_it_cannot_write(tmp_path, read_only_dir, capsys):
    rc, err = _convert(tmp_path, capsys)
    assert rc == 2 and f"cannot write {tmp_path}: it is a directory" in err
    rc, err = _convert(tmp_path / "missing" / "b0.safetensors", capsys)
    assert rc == 2 and "does not exist" in err and not (tmp_path / "missing").exists()
    rc, err = _convert(read_only_dir / "b0.safetensors", capsys)
    assert rc == 2 and "is not writable (Read-only file system)" in err
    assert len(err.strip().splitlines()) == 1


def test_train_refuses_a_workdir_it_cannot_use(tmp_path, read_only_dir, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert cli_main(["train", "--preset", "smoke", "--set", f"workdir={afile}"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err and afile.read_text() == "mine"
    assert cli_main(["train", "--preset", "smoke", "--set", f"workdir={read_only_dir / 'run'}"]) == 2
    assert "is not writable: Read-only file system" in capsys.readouterr().err


def test_eval_of_a_mistyped_run_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "runs" / "digtis"
    assert cli_main(["eval", "--checkpoint", str(typo)]) == 2
    assert "no training run at" in capsys.readouterr().err
    assert not os.path.exists(typo) and not os.path.exists(typo.parent)
