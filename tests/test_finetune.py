"""Fine-tuning: `init=` and `freeze=` in training. Frozen tensors (parameters and BN statistics, raw and EMA) stay
bit-identical under a strong weight decay while the rest moves, frozen parts cost no backward work, and every bad
input on this path is one line; end to end: image folder -> run -> `effnet convert` -> `effnet predict`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _hub_cache import offline_hub
from _weights import random_twin
from flax import nnx
from PIL import Image

import effnet_torch
from effnet_jax import EfficientNet
from effnet_jax.cli import main as cli_main
from effnet_jax.train import loop
from effnet_jax.train.config import from_preset
from effnet_jax.train.freeze import frozen_modules
from effnet_jax.train.mesh import to_global
from effnet_jax.train.start import model_start
from effnet_jax.weights import state_dict_from_model
from effnet_spec import STAGES, resolve
from effnet_spec.contract import modules, tensors
from effnet_torch.importers import export_state_dict

pytestmark = pytest.mark.integration  # fine-tunes from saved full-size weights

STEPS = 3
# SGD with a large lr and weight decay: anything the optimizer or the decay could reach would visibly move.
STRONG = ["optimizer=sgd", "lr=0.1", "weight_decay=0.5", "warmup_epochs=0", "momentum=0.9"]


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    """Random b0 weights, all seven stages (what the refusals read)."""
    path = tmp_path_factory.mktemp("init") / "b0.safetensors"
    effnet_torch.save_checkpoint(random_twin("effnet", seed=3), path)
    return str(path)


@pytest.fixture(scope="module")
def short_init(tmp_path_factory):
    """Random b0 weights cut to three stages, for the runs that compile a step: what `freeze=` fixes and what it
    costs does not depend on the stages after the frozen ones, and three (5 blocks) compile several times faster
    than seven (16)."""
    path = tmp_path_factory.mktemp("init") / "b0-3-stages.safetensors"
    effnet_torch.save_checkpoint(random_twin("effnet", seed=3, stages=3), path)
    return str(path)


def _cfg(init, workdir, *extra):
    sets = [f"init={init}", "resolution=32", "global_batch=8", f"steps={STEPS}", f"workdir={workdir}",
            "progress=false", "ema_decay=0.5"]  # fmt: skip
    return from_preset("finetune", [*sets, *STRONG, *extra])


def _as_state_dict(run, weights) -> dict[str, np.ndarray]:
    return state_dict_from_model(nnx.merge(run.graphdef, weights, run.state["rest"]))


MODES = ("bn", "backbone", "stages:2")


@pytest.fixture(scope="module")
def stepped(short_init, tmp_path_factory):
    """{freeze: result} after STEPS train steps under each mode, through the loop's own phases and compiled step."""
    out = {}
    for freeze in MODES:
        cfg = _cfg(short_init, tmp_path_factory.mktemp("run"), f"freeze={freeze}")
        mesh = loop.make_mesh(cfg)
        data, run = loop.make_data_and_run(cfg, mesh)
        step = loop.make_steps(cfg, mesh, run, data.stages)[0][0]
        before = _as_state_dict(run, run.state["weights"])
        batches = [to_global(next(run.data_iter), mesh) for _ in range(STEPS)]
        compiled = step.lower(run.state, batches[0], jnp.int32(0), run.root_key).compile()
        cost = compiled.cost_analysis()
        state = run.state
        for i, batch in enumerate(batches):
            state, _ = compiled(state, batch, jnp.int32(i), run.root_key)
        out[freeze] = {"spec": run.spec, "before": before, "raw": _as_state_dict(run, state["weights"]),
                       "ema": _as_state_dict(run, state["ema"]),
                       "flops": (cost[0] if isinstance(cost, list) else cost)["flops"]}  # fmt: skip
    return out


@pytest.mark.parametrize("freeze", MODES)
def test_frozen_tensors_stay_bit_identical_and_the_rest_moves(stepped, freeze, short_init):
    r = stepped[freeze]
    spec = r["spec"]
    frozen = {m.name for m in frozen_modules(spec, freeze)}
    source = state_dict_from_model(EfficientNet.from_pretrained(short_init))
    names = [t.name for t in tensors(spec)]
    fixed = [t.name for t in tensors(spec) if t.module.name in frozen]
    assert fixed and len(fixed) < len(names)
    for k in fixed:  # parameters, BN statistics and counters; raw weights and their EMA
        assert np.array_equal(r["before"][k], source[k]), f"{freeze}: {k} did not start as the init weights"
        assert np.array_equal(r["raw"][k], source[k]), f"{freeze}: frozen {k} moved"
        assert np.array_equal(r["ema"][k], source[k]), f"{freeze}: frozen {k} moved in the EMA"
    # The rest moves: every trainable kernel (weight decay alone moves those), and nearly every other tensor (a
    # random network can saturate a sigmoid somewhere, whose bias then gets an exactly zero gradient).
    free = [t for t in tensors(spec) if t.name not in fixed]
    moved = {t.name for t in free if not np.array_equal(r["raw"][t.name], r["before"][t.name])}
    kernels = {t.name for t in free if t.role in ("conv_kernel", "depthwise_kernel", "linear_weight")}
    assert kernels and kernels <= moved, f"{freeze}: trainable kernels that did not move: {sorted(kernels - moved)}"
    assert len(moved) >= 0.9 * len(free), f"{freeze}: only {len(moved)} of {len(free)} trainable tensors moved"


def test_each_mode_fixes_what_it_says(stepped):
    spec = stepped["bn"]["spec"]
    every = modules(spec)
    assert frozen_modules(spec, "bn") == [m for m in every if m.kind == "bn"]
    assert frozen_modules(spec, "backbone") == [m for m in every if m.part != "classifier"]
    upper = frozen_modules(spec, "stages:2")
    assert {spec.blocks[m.block].stage for m in upper if m.block is not None} == {0, 1}
    assert {m.part for m in upper if m.block is None} == {"stem.conv", "stem.bn"}
    assert frozen_modules(spec, "none") == [] and frozen_modules(spec, "stages:0") == upper[:2]


def test_frozen_parts_cost_no_backward_work(stepped):
    """The compiled step's cost: with only the classifier trained it is about the forward pass alone, far below a
    step that differentiates every conv (`bn` fixes BN only); freezing two of the three stages lands in between."""
    full, head_only, upper = (stepped[m]["flops"] for m in ("bn", "backbone", "stages:2"))
    assert head_only < 0.5 * full, (head_only, full)
    assert head_only < upper < full, (head_only, upper, full)


# --- bad input ------------------------------------------------------------------------------------------------


def _train_cli(args, capsys) -> tuple[int, str]:
    code = cli_main(["train", *args])
    return code, capsys.readouterr().err.strip()


def test_bad_fine_tuning_input_is_one_line(init_file, tmp_path, capsys, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "hub")  # no network here: fail at once, not after 5 retries
    w = str(tmp_path / "w")
    cases = [
        (["--preset", "finetune"], "init is not set"),
        (["--preset", "finetune", "--set", f"init={tmp_path / 'nope.pth'}"], "no such file"),
        (["--preset", "finetune", "--set", "init=hf-hub:timm/x"], "hf-hub:timm/x"),
        (["--set", f"init={init_file}", "--set", "variant=b3"], "holds b0 weights, but the config says variant=b3"),
        (["--preset", "finetune", "--set", f"init={init_file}", "--set", "freeze=stages:99"], "K must lie in 0..7"),
        (["--set", "freeze=backbone"], "needs init="),
        (["--preset", "finetune", "--set", "freeze=layers"], "freeze must be one of none, bn, backbone, stages:K"),
        (["--preset", "finetune", "--set", f"init={init_file}", "--set", "weight_source=timm_tf"],
         "weight_source=timm_tf means padding tf_same"),
        (["--preset", "finetune", "--set", f"init={init_file}", "--set", "stages=2"], "stages=2 truncates"),
    ]  # fmt: skip
    grey, short, cut = tmp_path / "grey.safetensors", tmp_path / "two_stages.safetensors", tmp_path / "cut.safetensors"
    effnet_torch.save_checkpoint(effnet_torch.EfficientNet.from_name("b0", in_channels=1), grey)
    effnet_torch.save_checkpoint(effnet_torch.EfficientNet(resolve("b0", stages=STAGES[:2])), short)
    cut.write_bytes(Path(init_file).read_bytes()[:5000])
    finetune = ["--preset", "finetune", "--set"]
    cases += [
        ([*finetune, f"init={grey}"], "takes 1-channel input; training reads RGB images"),
        ([*finetune, f"init={short}", "--set", "freeze=stages:3"], "the model has 2 stages; K must lie in 0..2"),
        ([*finetune, f"init={cut}"], "not a readable safetensors file"),
        ([*finetune, f"init={tmp_path}"], "no training checkpoint"),
    ]
    for args, text in cases:
        code, err = _train_cli([*args, "--set", f"workdir={w}"], capsys)
        assert code == 2 and text in err and len(err.splitlines()) == 1, (args, err)
        assert not os.path.exists(w), f"{args}: a refused run must not create its workdir"


def test_a_head_too_small_for_the_data_is_one_line(init_file, tmp_path, capsys):
    """freeze=backbone trains the classifier alone: a class count below the data's cannot work and is refused."""
    args = ["--preset", "finetune", "--set", f"init={init_file}", "--set", "freeze=backbone", "--set", "num_classes=5",
            "--set", f"workdir={tmp_path / 'w'}"]  # fmt: skip
    code, err = _train_cli(args, capsys)
    assert code == 2 and err.splitlines()[-1] == "effnet train: error: num_classes=5 but 'digits' has 10 classes", err
    assert all(line.startswith("[effnet] ") for line in err.splitlines()[:-1]), "progress notes, then the one error"


def test_a_weight_source_says_how_a_library_file_is_read(tmp_path):
    """timm's TF ports have the keys of its plain weights: weight_source=timm_tf (as `effnet convert
    --weight-source`) reads them with TF SAME padding and eps 1e-3; without it the plain conventions are assumed."""
    net = random_twin("timm_tf", seed=4)
    path = tmp_path / "tf_efficientnet_b0.pth"
    torch.save(dict(export_state_dict(net.state_dict(), net.spec, "timm")), path)
    plain = model_start(from_preset("finetune", [f"init={path}"])).spec
    tf = model_start(from_preset("finetune", [f"init={path}", "weight_source=timm_tf"])).spec
    assert tf.conv == net.spec.conv and tf.conv.padding == "tf_same"
    assert plain.conv.padding == "symmetric" and plain.conv.bn_eps == 1e-5
    with pytest.raises(ValueError, match="in the torchvision layout"):
        model_start(from_preset("finetune", [f"init={path}", "weight_source=torchvision"]))


def test_an_image_folder_with_digit_classes_is_not_a_run(tmp_path):
    for c in ("0", "1"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / c / "a.png")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        EfficientNet.from_pretrained(tmp_path)


# --- end to end ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of small coloured images: the class names are the sub-folder names."""
    root = tmp_path_factory.mktemp("pets")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("bird", "cat", "dog")):
        (root / name).mkdir()
        for i in range(6):
            img = rng.integers(0, 60, (40, 48, 3)).astype(np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_folder_run_to_weights_file_to_predict(short_init, folder, tmp_path, capsys):
    w, out = tmp_path / "run", tmp_path / "pets.safetensors"
    args = ["--preset", "finetune", "--data", str(folder), "--workdir", str(w)]
    sets = [f"init={short_init}", "resolution=32", "global_batch=6", "steps=4", "ckpt_every=2", "freeze=stages:2",
            "progress=false"]  # fmt: skip
    assert cli_main(["train", *args, *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()

    assert cli_main(["convert", str(w), str(out)]) == 0
    said = capsys.readouterr().out
    assert "classes bird, cat, dog" in said and "(ema weights)" in said
    image = str(folder / "cat" / "0.png")
    for weights in (str(out), str(w)):
        assert cli_main(["predict", image, "--weights", weights, "--top", "3"]) == 0
        printed = capsys.readouterr().out
        assert sorted(line.split()[-1] for line in printed.splitlines()[1:]) == ["bird", "cat", "dog"], printed

    from_file, from_run = EfficientNet.from_pretrained(out), EfficientNet.from_pretrained(w)
    assert from_run.preprocessing == from_file.preprocessing
    assert from_file.preprocessing.class_names == ("bird", "cat", "dog")
    assert from_file.preprocessing.resolution == 32 and from_file.spec.conv == EfficientNet.from_pretrained(
        short_init).spec.conv, "the init weights' conventions"  # fmt: skip
    a, b = state_dict_from_model(from_file), state_dict_from_model(from_run)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    raw = state_dict_from_model(EfficientNet.from_pretrained(w, ema=False))
    assert any(not np.array_equal(a[k], raw[k]) for k in a), "--raw / ema=False reads the raw weights"
    assert cli_main(["convert", str(w), str(tmp_path / "raw.safetensors"), "--raw"]) == 0
    assert "(raw weights)" in capsys.readouterr().out

    # A resume never rereads the init weights: the run's checkpoint describes its model.
    shutil.move(short_init, short_init + ".moved")
    try:
        shutil.rmtree(w / "checkpoints" / "4")
        (w / "summary.json").unlink()
        assert cli_main(["train", *args, *[a for s in sets for a in ("--set", s)], "--resume"]) == 0
    finally:
        shutil.move(short_init + ".moved", short_init)
    assert json.loads((w / "summary.json").read_text())["steps"] == 4
