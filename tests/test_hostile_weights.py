"""Hostile weights (issue 28): files that contradict themselves, or the names given for them, are refused when read,
in a few lines, by both twins and every command; files effnet writes in another library's layout read back as they
were written (`effnet convert --to timm`, then `effnet predict`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from _disk import snapshot
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as st_save

import effnet_jax
import effnet_torch
from effnet_jax.cli import main as cli_main
from effnet_jax.predict import classify
from effnet_jax.weights import read_pretrained
from effnet_spec import STAGES, Preprocessing, conventions_for, make_header, resolve
from effnet_spec.contract import SHOWN, shapes
from effnet_torch.importers import read_state_dict

ONE_STAGE = STAGES[:1]  # one block: the cheapest model to compile for the `effnet predict` cases


def _tiny(conventions: str = "effnet", *, seed: int = 0, stages=STAGES[:2]) -> effnet_torch.EfficientNet:
    torch.manual_seed(seed)
    spec = resolve("b0", stages=stages, num_classes=5, conventions=conventions_for(conventions))
    net = effnet_torch.EfficientNet(spec).eval()
    with torch.no_grad():  # BN statistics that are not the identity, so padding and eps show in the outputs
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1)
    return net


def _meta(path) -> dict[str, str]:
    with safe_open(os.fspath(path), framework="pt") as f:
        return f.metadata()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "x.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


# --- group 6: weights that contradict themselves -----------------------------------------------------------------


def _zeros(spec) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in shapes(spec).items()}  # fmt: skip


def _other_architecture(path):
    """One stage's tensors under a header that names two: dozens of differences, for a few lines of report."""
    sd = _zeros(resolve("b0", stages=ONE_STAGE, num_classes=5))
    path.write_bytes(st_save(sd, metadata=make_header(resolve("b0", stages=STAGES[:3], num_classes=5))))


def _edited(edit):
    def write(path):
        net = _tiny()
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        meta = make_header(net.spec, Preprocessing(resolution=32))
        edit(sd, meta)
        path.write_bytes(st_save(sd, metadata=meta))

    return write


def _class_names(sd, meta):
    pre = json.loads(meta["preprocessing"])
    meta["preprocessing"] = json.dumps({**pre, "class_names": ["a", "b", "c"]})  # for 5 classes


def _negative_var(sd, meta):
    sd["blocks.0.depthwise.bn.running_var"][3] = -0.5


def _huge(sd, meta):
    sd["classifier.weight"][1, 2] = 3e30  # finite, but the logits overflow float32


CASES = {
    "header names another architecture": (_other_architecture, "tensors do not match its own header"),
    "5 class names": (_edited(_class_names), "class_names has 3 name(s) for 5 classes"),
    "negative running variance": (_edited(_negative_var), "blocks.0.depthwise.bn.running_var: a negative running"),
    "finite but huge": (_edited(_huge), "classifier.weight: holds 3e+30, beyond 1e+08 in magnitude"),
}


def _api(read):
    def run(path, out, capsys):
        with pytest.raises(ValueError) as e:  # CheckpointMismatchError and ImportError_ are ValueErrors
            read(path)
        return str(e.value)

    return run


def _cli(*argv):
    def run(path, out, capsys):
        args = [a.format(path=path, out=out) for a in argv]
        assert cli_main(args) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and "Traceback" not in captured.err
        return captured.err

    return run


READERS = {
    "jax load_checkpoint": _api(effnet_jax.load_checkpoint),
    "torch load_checkpoint": _api(effnet_torch.load_checkpoint),
    "jax from_pretrained": _api(effnet_jax.EfficientNet.from_pretrained),
    "torch from_pretrained": _api(effnet_torch.EfficientNet.from_pretrained),
    "convert": _cli("convert", "{path}", "{out}"),
    "convert --to timm": _cli("convert", "{path}", "{out}", "--to", "timm"),
    "predict": None,  # needs the image: below
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(CASES))
def test_weights_that_contradict_themselves_are_refused_in_a_few_lines(case, reader, tmp_path, image, capsys):
    write, words = CASES[case]
    src = tmp_path / "w.safetensors"
    write(src)
    before = snapshot(tmp_path)
    run = READERS[reader] or _cli("predict", image, "--weights", "{path}")
    message = run(src, tmp_path / "out.safetensors", capsys)
    assert words in message, message
    lines = message.strip().splitlines()
    assert len(lines) <= SHOWN + 2, message  # the count, the first few problems, "... and N more"
    if case == "header names another architecture":
        assert "problem(s)" in lines[0] and lines[-1].strip().startswith("... and "), message
    else:
        assert len(lines) <= 2, message
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_a_header_that_names_another_variant_says_which_the_tensors_are(tmp_path, capsys):
    """b0's tensors (zeros: no model built) under a header that names b1: hundreds of differences, a few lines."""
    src = tmp_path / "b1.safetensors"
    src.write_bytes(st_save(_zeros(resolve("b0", num_classes=5)), metadata=make_header(resolve("b1", num_classes=5))))
    for read in (effnet_jax.load_checkpoint, effnet_torch.EfficientNet.from_pretrained):  # numpy and torch readers
        with pytest.raises(ValueError) as e:
            read(src)
        lines = str(e.value).splitlines()
        assert "(the header names 'b1'; the tensors fit 'b0')" in lines[0] and "problem(s)" in lines[0]
        assert len(lines) == SHOWN + 2 and lines[-1].strip().startswith("... and ")


@pytest.mark.parametrize(
    ("names", "words"),
    [
        (["--model", "b1"], "its header says 'b0', not 'b1'"),
        (["--model", "tf_efficientnet_b0"], "names TF-ported weights"),
        (["--weight-source", "timm"], "weight source 'timm' means padding symmetric, bn eps 1e-05"),
        (["--weight-source", "timm_tf"], "weight source 'timm_tf' means padding tf_same"),
    ],
)
def test_names_that_contradict_the_header_are_refused_in_one_line(names, words, tmp_path, image, capsys):
    src = tmp_path / "w.safetensors"
    effnet_torch.save_checkpoint(_tiny(), src, Preprocessing(resolution=32))  # effnet conventions
    before = snapshot(tmp_path)
    for argv in (["predict", image, "--weights", str(src)], ["convert", str(src), str(tmp_path / "o.safetensors")]):
        assert cli_main(argv + names) == 1
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ValueError, match=words):
        effnet_torch.EfficientNet.from_pretrained(src, **{n.strip("-").replace("-", "_"): v for n, v in [names]})
    assert snapshot(tmp_path) == before


def test_names_that_agree_with_the_header_are_accepted(tmp_path):
    src = tmp_path / "tf.safetensors"
    effnet_torch.save_checkpoint(_tiny("timm_tf"), src, Preprocessing(resolution=32))
    for kwargs in ({"weight_source": "timm_tf"}, {"weight_source": "effnet"}, {"model": "tf_efficientnet_b0"}):
        assert read_pretrained(src, **kwargs).spec.conv.padding == "tf_same"
        assert effnet_torch.EfficientNet.from_pretrained(src, **kwargs).spec.conv.padding == "tf_same"


def test_predict_refuses_outputs_that_overflow_instead_of_printing_nan(tmp_path, image, capsys):
    """Every weight within the load checks' bound, yet the product of the layers overflows float32."""
    net = _tiny(stages=ONE_STAGE)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith(".weight"):  # convs, BN scales and the classifier
                t.mul_(1e7)
    src = tmp_path / "big.safetensors"
    effnet_torch.save_checkpoint(net, src, Preprocessing(resolution=32))
    assert cli_main(["predict", image, "--weights", str(src)]) == 1
    out = capsys.readouterr()
    assert "nan" not in out.out.lower() and out.out == ""
    assert "outputs are not finite (inf or NaN) for " + image in out.err and len(out.err.strip().splitlines()) == 1


# --- group 12: weights written for another library read back the same --------------------------------------------


def test_an_export_to_timm_says_how_to_load_it_and_reads_back_as_written(tmp_path, image, capsys, monkeypatch):
    """TF-ported Lite0 (TF SAME padding): timm's layout cannot say so, the export's metadata does."""
    torch.manual_seed(0)
    lite = effnet_torch.EfficientNet.from_name("lite0", weight_source="timm_tf").eval()
    src, out = tmp_path / "lite0.safetensors", tmp_path / "t.safetensors"
    effnet_torch.save_checkpoint(lite, src, Preprocessing(resolution=224, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert cli_main(["convert", str(src), str(out), "--to", "timm"]) == 0
    said = capsys.readouterr().out
    assert "load it in timm as timm.create_model('tf_efficientnet_lite0')" in said, said
    assert "resize the short side to 256 (bicubic), center-crop 224x224" in said and "std (0.5, 0.5, 0.5)" in said
    sd, meta = read_state_dict(out)
    assert "conv_stem.weight" in sd and "stem.conv.weight" not in sd  # timm's keys; the header rides along

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = lite(x)
        back = effnet_torch.EfficientNet.from_pretrained(out)
        assert back.spec == lite.spec and back.preprocessing == effnet_torch.load_checkpoint(src).preprocessing
        assert torch.equal(back(x), want)
        jax_back = read_pretrained(out)
        assert jax_back.spec == lite.spec
        # The same tensors without the metadata are read as plain timm (symmetric padding): another function.
        plain = tmp_path / "plain.safetensors"
        plain.write_bytes(st_save(sd))
        guessed = effnet_torch.EfficientNet.from_pretrained(plain)
        assert guessed.spec.conv.padding == "symmetric" and not torch.allclose(guessed(x), want, atol=1e-3)

    # ... which predict says, rather than classifying without a word (stopped before building the JAX model).
    def built(p):
        raise LookupError(p.origin)

    monkeypatch.setattr(effnet_jax.weights, "build_adapted", built)
    assumed = r"plain.safetensors: assumed timm efficientnet_\* conventions"
    with pytest.warns(UserWarning, match=assumed), pytest.raises(LookupError, match="timm weights"):
        classify([image], plain)

    assert cli_main(["convert", str(out), str(tmp_path / "again.safetensors")]) == 0  # and back into effnet
    assert _meta(tmp_path / "again.safetensors") == _meta(src)
    assert "lite0 from timm" in capsys.readouterr().out


def test_convert_to_timm_then_predict_classifies_the_same(tmp_path, image, capsys):
    net = _tiny("timm_tf", stages=ONE_STAGE, seed=3)
    src, out = tmp_path / "src.safetensors", tmp_path / "t.safetensors"
    effnet_torch.save_checkpoint(net, src, Preprocessing(resolution=32, class_names=tuple("abcde")))
    assert cli_main(["convert", str(src), str(out), "--to", "timm"]) == 0
    assert "timm has no model of this architecture" in capsys.readouterr().out  # one stage: no timm name fits
    assert cli_main(["predict", image, "--weights", str(src), "--top", "5"]) == 0
    first = capsys.readouterr().out
    assert cli_main(["predict", image, "--weights", str(out), "--top", "5"]) == 0
    assert capsys.readouterr().out == first and "%" in first


@pytest.mark.parametrize(
    ("names", "words"),
    [
        (["--weight-source", "timm"], "weight source 'timm' means padding symmetric"),
        (["--weight-source", "torchvision"], "effnet wrote it in the timm layout (its header says so)"),
        (["--model", "lite0"], "its header says 'b0', not 'lite0'"),
    ],
)
def test_names_that_contradict_an_export_are_refused_in_one_line(names, words, tmp_path, capsys):
    net = _tiny("timm_tf", stages=ONE_STAGE)
    src, out = tmp_path / "src.safetensors", tmp_path / "t.safetensors"
    effnet_torch.save_checkpoint(net, src, Preprocessing(resolution=32))
    assert cli_main(["convert", str(src), str(out), "--to", "timm"]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert cli_main(["convert", str(out), str(tmp_path / "back.safetensors"), *names]) == 1
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before
    assert read_pretrained(out, weight_source="timm_tf").spec == net.spec  # an agreeing name is fine
