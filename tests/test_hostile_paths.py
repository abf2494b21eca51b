"""Hostile paths and flags (issue 28, groups 1 and 11), through the CLI's `main(argv)` in-process: an OUT that is the
input (the same path, a symbolic link, a hard link, a linked folder) is refused by `convert`, `export` and `prepare`
before anything is read or written; a file argument that is not a regular file is named as what it is (a named
pipe never blocks the command); flags that disagree are refused naming both; a refused run leaves no workdir; the
run's records are strict JSON. Each CLI case asserts the exit code, the one line, and that nothing on disk changed.

No case reads real weights: a refusal that came after reading the input would fail on the garbage input instead,
with another message, so the order is tested too."""

from __future__ import annotations

import errno
import json
import math
import os
import threading

import pytest
from _disk import effnet, snapshot

GARBAGE = b"\x80 the user's only copy of their weights"


# ------------------------------------------------------------------------------------ OUT that is the input (group 1)


def _inputs(tmp_path):
    """A weights file and an image folder (one class), and an alias folder linked to theirs."""
    (tmp_path / "in" / "images" / "cat").mkdir(parents=True)
    (tmp_path / "in" / "my.pth").write_bytes(GARBAGE)
    (tmp_path / "in" / "images" / "cat" / "a.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "alias").symlink_to(tmp_path / "in", target_is_directory=True)
    return tmp_path / "in" / "my.pth", tmp_path / "in" / "images"


def _out(src, how, tmp_path):
    if how == "same path":
        return src
    if how == "relative path":
        return os.path.relpath(src)
    if how == "linked folder":
        return tmp_path / "alias" / os.path.relpath(src, tmp_path / "in")
    out = tmp_path / f"out-{how.replace(' ', '-')}{src.suffix}"
    if how == "symbolic link":
        out.symlink_to(src)
    elif how == "hard link":
        os.link(src, out)
    return out


COMMANDS = {
    "convert": lambda src, out: ["convert", src, out],
    "convert --to timm": lambda src, out: ["convert", src, out, "--to", "timm"],
    "export": lambda src, out: ["export", src, out, "--format", "torch-export", "--no-verify"],
}


@pytest.mark.parametrize("how", ["same path", "relative path", "symbolic link", "hard link", "linked folder"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_out_that_is_the_weights_is_refused_before_anything(command, how, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src, _ = _inputs(tmp_path)
    out = _out(src, how, tmp_path)
    before = snapshot(tmp_path)
    rc = effnet(COMMANDS[command](src, out))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"cannot write {out}: it is the input {src} (" in err[0] and "give another output path" in err[0], err
    assert snapshot(tmp_path) == before
    assert src.read_bytes() == GARBAGE


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("same path", "is FOLDER"),
        ("symbolic link", "is FOLDER"),
        ("linked folder", "is FOLDER"),
        ("inside", "is inside FOLDER"),
    ],
)
def test_prepare_into_its_own_folder_is_refused_before_anything(how, message, tmp_path, capsys):
    _, folder = _inputs(tmp_path)
    out = folder / "shards" if how == "inside" else _out(folder, how, tmp_path)
    before = snapshot(tmp_path)
    rc = effnet(["prepare", folder, out])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0] and str(folder) in err[0], err
    assert snapshot(tmp_path) == before


def test_the_python_apis_refuse_too(tmp_path):
    from effnet_jax.export import export
    from effnet_jax.train.prepare import prepare
    from effnet_torch.importers import export_checkpoint, import_checkpoint

    src, folder = _inputs(tmp_path)
    os.link(src, tmp_path / "hard.pth")
    before = snapshot(tmp_path)
    calls = [
        lambda: import_checkpoint(src, tmp_path / "hard.pth"),
        lambda: export_checkpoint(src, tmp_path / "alias" / "my.pth", "timm"),
        lambda: export(src, src, format="torch-export", verify=False),
        lambda: prepare(folder, tmp_path / "alias" / "images"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="it is the input|is FOLDER"):
            call()
    assert snapshot(tmp_path) == before


def test_an_out_beside_the_input_is_not_refused():
    from effnet_spec.paths import overwrites_source

    assert overwrites_source("/no/such/in.pth", "/no/such/in.pth") is None  # no input: the reader says so
    assert overwrites_source(__file__ + ".out", __file__) is None
    assert overwrites_source(__file__, __file__) == "the same path"


# ----------------------------------------------------------------------- a file that is not a file (group 11)


@pytest.fixture
def special(tmp_path):
    """The path of a device, or of a named pipe with a writer waiting: a command that opened the pipe would read
    an empty file and fail with another message, instead of hanging the test run."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    done = threading.Event()

    def writer():  # polls, never blocks: a blocking open could miss the release at teardown and hang the join
        while not done.wait(0.005):
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader waits on the pipe
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                continue
            os.close(fd)  # the reader now reads an empty file

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    yield lambda kind: str(pipe) if kind == "named pipe" else kind
    done.set()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the pipe's writer did not stop"


FILE_ARGS = {  # command -> (argv for the path X, exit code)
    "convert SRC": (lambda x, t: ["convert", x, t / "out.safetensors"], 1),
    "export WEIGHTS": (lambda x, t: ["export", x, t / "out.pt2", "--format", "torch-export", "--no-verify"], 1),
    "predict --weights": (lambda x, t: ["predict", t / "cat.png", "--weights", x], 1),
    "train init=": (lambda x, t: ["train", "--preset", "finetune", "--set", f"init={x}", "--workdir", t / "run"], 2),
    "scaling --coefficients": (lambda x, t: ["scaling", "--coefficients", x, "--out", t / "study"], 2),
}


@pytest.mark.parametrize("kind", ["/dev/null", "/dev/zero", "named pipe"])
@pytest.mark.parametrize("command", sorted(FILE_ARGS))
def test_a_device_or_pipe_given_as_a_file_is_named(command, kind, special, tmp_path, capsys):
    path = special(kind)
    argv, code = FILE_ARGS[command]
    before = snapshot(tmp_path)
    rc = effnet(argv(path, tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    what = "a named pipe" if kind == "named pipe" else "a character device"
    assert rc == code and len(err) == 1, err
    assert f"{path}" in err[0] and f"not a regular file (it is {what})" in err[0] and "no such file" not in err[0], err
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ flags that disagree, refused runs (group 11)

REFUSED = [
    (
        ["train", "--preset", "digits", "--preset", "smoke"],
        "--preset is given 2 times with different values ('digits', 'smoke')",
    ),  # fmt: skip
    (
        ["train", "--set", "workdir=a", "--workdir", "b"],
        "'workdir' is given two values: '--set workdir=a' and '--workdir b'",
    ),  # fmt: skip
    (["train", "--data", "synthetic", "--set", "data=digits"], "'data' is given two values"),
    (["train", "--workdir", "a", "--workdir", "b"], "--workdir is given 2 times"),
    (["train", "--set", "seed=1", "--set", "seed=2"], "'seed' is given two values"),
    (["train", "--set", "seed=-1"], "seed must be >= 0"),
    (["search", "--preset", "digits", "--preset", "smoke", "--dry-run"], "--preset is given 2 times"),
    (["search", "--base", "b0", "--set", "variant=b1", "--dry-run"], "'variant' is given two values"),
    (["scaling", "--coefficients", "1.2,1.1,1.15", "--preset", "digits", "--preset", "smoke"], "--preset is given"),
]


@pytest.mark.parametrize(("argv", "message"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_flags_that_disagree_are_refused_naming_both(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = effnet(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert os.listdir(tmp_path) == []


def test_a_flag_repeated_with_the_same_value_is_one_value(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--preset", "smoke", "--preset", "smoke", "--workdir", "w", "--set", "workdir=w", "--print-config"]
    assert effnet(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["workdir"] == "w" and cfg["steps"] == 2  # the smoke preset's
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "seed=-1"], "seed must be >= 0"),
        (["--set", "data={tmp}/no-such-folder"], "no-such-folder"),
        (["--set", "val_data={tmp}/no-such-val"], "no-such-val"),
    ],
)
def test_a_refused_run_leaves_no_workdir(extra, message, tmp_path, capsys):
    """Refusals found before the workdir is made (the config) and after (the data is read under the workdir's lock):
    either way the folders the run would have created are gone."""
    workdir = tmp_path / "runs" / "new"
    argv = ["train", "--preset", "smoke", "--set", "progress=false", "--workdir", workdir]
    rc = effnet([*argv, *(a.format(tmp=tmp_path) for a in extra)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and message in err[-1], err
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- strict JSON records (group 11)


def _strict_loads(line: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_metrics_rows_are_strict_json_and_logging_creates_nothing_before_its_first_row(tmp_path):
    from effnet_jax.train.metrics import Logger, best_logged, strict_json

    logger = Logger(str(tmp_path))
    assert os.listdir(tmp_path) == []  # a run refused before its first row leaves neither file
    logger.write(1, "val", {"top1": 0.5, "loss": math.nan})
    logger.write(2, "val", {"top1": math.nan, "loss": math.inf})
    logger.close()
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tb"]
    rows = [_strict_loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["top1"], r["loss"]) for r in rows] == [(0.5, None), (None, None)]
    assert best_logged(str(tmp_path / "metrics.jsonl"), "val", "top1", up_to_step=2) == 0.5
    assert _strict_loads(strict_json({"final_val": {"loss": -math.inf}, "xs": [1.0, math.nan]})) == {
        "final_val": {"loss": None},
        "xs": [1.0, None],
    }
