"""effnet_torch.hub against a real Hugging Face cache on disk, offline: files found, ids and configs checked, and
every failure one line that names the id and the fix. The Hub itself is never reached (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _hub_cache import make_hub_cache, offline_hub
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from effnet_spec import Preprocessing, default_preprocessing, imagenet_class_names, resolve
from effnet_torch import hub
from effnet_torch.hub import HubError, HubWeights, fetch, hub_preprocessing, is_hub_id

REPO = "timm/tf_efficientnet_b1.ns_jft_in1k"
ID = "hf-hub:" + REPO
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TENSORS = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


def timm_config(architecture: str = "tf_efficientnet_b1", num_classes: int = 1000, **extra) -> dict:
    """A config.json as timm pushes it (`timm.models.push_to_hf_hub`), for an Noisy-Student b1."""
    cfg = {
        "tag": "ns_jft_in1k",
        "custom_load": False,
        "input_size": [3, 240, 240],
        "fixed_input_size": False,
        "interpolation": "bicubic",
        "crop_pct": 0.882,
        "crop_mode": "center",
        "mean": MEAN,
        "std": STD,
        "num_classes": num_classes,
        "pool_size": [8, 8],
        "first_conv": "conv_stem",
        "classifier": "classifier",
    }
    return {"architecture": architecture, "num_classes": num_classes, "num_features": 1280, "global_pool": "avg",
            "pretrained_cfg": cfg, **extra}  # fmt: skip


def config_bytes(config: dict) -> bytes:
    return json.dumps(config, indent=4).encode()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache, offline (`offline_hub`; test_env_is_read_by_a_fresh_process covers the env alone)."""
    return offline_hub(monkeypatch, tmp_path / "hub")


def one_line_error(source: str) -> str:
    with pytest.raises(HubError) as e:
        fetch(source)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg, msg
    return msg


def test_is_hub_id():
    assert is_hub_id("hf-hub:timm/efficientnet_b0.ra_in1k")
    assert not is_hub_id("timm/efficientnet_b0.ra_in1k")
    assert not is_hub_id("weights/hf-hub:x.safetensors")
    assert not is_hub_id(None)
    assert issubclass(HubError, ValueError)


def test_fetch_finds_safetensors_and_config_in_the_cache(cache):
    weights = st_save(TENSORS)
    snapshot = make_hub_cache(cache, REPO, {"config.json": config_bytes(timm_config()), "model.safetensors": weights,
                                            "pytorch_model.bin": b"not read"})  # fmt: skip
    got = fetch(ID)
    assert isinstance(got, HubWeights)
    assert os.path.basename(got.weights_path) == "model.safetensors"  # preferred over the .bin beside it
    assert os.path.samefile(got.weights_path, os.path.join(snapshot, "model.safetensors"))
    assert torch.equal(load_file(got.weights_path)["w"], TENSORS["w"])
    assert got.repo_id == REPO
    assert got.architecture == "tf_efficientnet_b1"
    assert got.model_name == "tf_efficientnet_b1.ns_jft_in1k"
    assert got.num_classes == 1000
    assert got.pretrained_cfg == timm_config()["pretrained_cfg"]
    assert got.label_names is None


def test_falls_back_to_pytorch_model_bin_without_safetensors(cache):
    bin_path = os.path.join(cache, "w.bin")
    os.makedirs(cache)
    torch.save(TENSORS, bin_path)
    with open(bin_path, "rb") as f:
        data = f.read()
    snapshot = make_hub_cache(cache, REPO, {"config.json": config_bytes(timm_config()), "pytorch_model.bin": data})
    got = fetch(ID)
    assert os.path.samefile(got.weights_path, os.path.join(snapshot, "pytorch_model.bin"))
    assert torch.equal(torch.load(got.weights_path, weights_only=True)["w"], TENSORS["w"])


def test_revision_after_at_picks_that_snapshot(cache):
    old = timm_config(num_classes=10)
    make_hub_cache(cache, REPO, {"config.json": config_bytes(old), "model.safetensors": st_save(TENSORS)}, "v1")
    assert fetch(ID + "@v1").num_classes == 10
    commit = "0123456789abcdef0123456789abcdef01234567"
    make_hub_cache(cache, REPO, {"config.json": config_bytes(timm_config()), "model.safetensors": b"x"}, commit)
    assert fetch(f"{ID}@{commit}").num_classes == 1000
    msg = one_line_error(ID)  # no refs/main in the cache
    assert "config.json is not in the local Hugging Face cache" in msg


def test_model_name_tag_and_label_names(cache):
    labels = ["cat", "dog", "bird"]
    config = timm_config(architecture="efficientnet_b0", num_classes=3, label_names=labels)
    del config["pretrained_cfg"]["tag"]
    files = {"config.json": config_bytes(config), "model.safetensors": st_save(TENSORS)}
    make_hub_cache(cache, "timm/efficientnet_b0.ra_in1k", files)
    got = fetch("hf-hub:timm/efficientnet_b0.ra_in1k")
    assert got.model_name == "efficientnet_b0.ra_in1k"  # the tag from timm's <arch>.<tag> repo name
    assert got.label_names == tuple(labels)

    config = timm_config(architecture="efficientnet_b0", label_names=labels)  # 3 names for 1000 classes
    del config["pretrained_cfg"]
    make_hub_cache(cache, "me/my-finetune", {"config.json": config_bytes(config), "model.safetensors": b"x"})
    got = fetch("hf-hub:me/my-finetune")
    assert got.model_name == "efficientnet_b0"  # no tag anywhere
    assert got.label_names is None
    assert got.pretrained_cfg == {}


def weights(cfg: dict, labels: tuple[str, ...] | None = None, num_classes: int = 1000) -> HubWeights:
    return HubWeights(repo_id=REPO, weights_path="unused", architecture="tf_efficientnet_b1",
                      model_name="tf_efficientnet_b1", num_classes=num_classes, pretrained_cfg=cfg,
                      label_names=labels)  # fmt: skip


def test_hub_preprocessing_maps_timm_fields():
    spec = resolve("b1")
    pre = hub_preprocessing(weights(timm_config()["pretrained_cfg"]), spec)
    assert pre == Preprocessing(resolution=240, crop_pct=0.882, interpolation="bicubic", mean=tuple(MEAN),
                                std=tuple(STD), class_names=imagenet_class_names())  # fmt: skip
    assert pre.class_names == imagenet_class_names()  # (compare=True, but be explicit: the 1000 ImageNet names)

    cfg = {"input_size": [3, 260, 300], "interpolation": "lanczos", "mean": [0.5] * 3, "std": [0.5] * 3}
    pre = hub_preprocessing(weights(cfg, labels=("a", "b"), num_classes=2), resolve("b1", num_classes=2))
    assert (pre.resolution, pre.interpolation, pre.mean, pre.class_names) == (300, "bicubic", (0.5,) * 3, ("a", "b"))
    assert pre.crop_pct == default_preprocessing(spec).crop_pct

    pre = hub_preprocessing(weights({"interpolation": "bilinear"}), resolve("b1", num_classes=10))
    assert pre.interpolation == "bilinear" and pre.class_names is None  # 10 classes, no labels: names unknown


def test_hub_preprocessing_missing_fields_take_the_family_default():
    spec = resolve("lite2", in_channels=1)
    pre = hub_preprocessing(weights({}), spec)
    assert pre == default_preprocessing(spec, imagenet_class_names())
    assert pre.interpolation == "bilinear" and pre.mean == (127 / 255,)
    pre = hub_preprocessing(weights({"mean": MEAN, "std": STD}), spec)  # RGB values, one channel: the first
    assert (pre.mean, pre.std) == ((MEAN[0],), (STD[0],))


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"crop_pct": "0.9"}, "crop_pct"),
        ({"input_size": "224"}, "input_size"),
        ({"input_size": [3, 0, 0]}, "input_size"),
        ({"interpolation": 3}, "interpolation"),
        ({"mean": [0.5, "x", 0.5]}, "mean"),
        ({"std": [0.2, 0.2]}, "std"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
    ],
)
def test_hub_preprocessing_refuses_bad_values_naming_repo_and_field(cfg, field):
    with pytest.raises(HubError) as e:
        hub_preprocessing(weights(cfg), resolve("b1"))
    msg = str(e.value)
    assert f"{ID}: config.json pretrained_cfg.{field}" in msg and "\n" not in msg, msg


def test_not_in_cache_offline_says_how_to_get_it(cache):
    msg = one_line_error(ID)
    assert msg.startswith(ID + ": config.json is not in the local Hugging Face cache")
    assert f"({os.path.realpath(cache)})" in msg or f"({cache})" in msg
    assert "HF_HUB_OFFLINE is set" in msg
    assert f"`hf download {REPO}`" in msg and "HF_HUB_CACHE" in msg
    assert "--revision v2`" in one_line_error(ID + "@v2")

    make_hub_cache(cache, REPO, {"config.json": config_bytes(timm_config())})  # config cached, weights not
    msg = one_line_error(ID)
    assert "model.safetensors is not in the local Hugging Face cache" in msg and REPO in msg


@pytest.mark.parametrize(
    "source",
    ["hf-hub:efficientnet_b0", "hf-hub:timm/a/b", "hf-hub:", "hf-hub:timm/x@", "hf-hub:timm/a--b", "hf-hub:timm/ x",
     "hf-hub:timm/x@../../etc", "timm/efficientnet_b0"],
)  # fmt: skip
def test_malformed_id(source):
    msg = one_line_error(source)
    assert msg.startswith(f"malformed Hub id {source!r}") and "hf-hub:<org>/<name>[@revision]" in msg


# V2 loads as timm names it (tf_efficientnetv2_*, efficientnetv2_s/m/l/xl); timm builds no plain efficientnetv2_b*.
@pytest.mark.parametrize("arch", ["resnet50", "efficientnetv2_b0", "tf_efficientnetv2_b4", "efficientnetv2_rw_s",
                                  "efficientnet_b9", "efficientnet_es", "mobilenetv3_large_100", 7])  # fmt: skip
def test_non_efficientnet_architecture(cache, arch):
    make_hub_cache(cache, "timm/other", {"config.json": config_bytes(timm_config(architecture=arch))})
    msg = one_line_error("hf-hub:timm/other")
    assert msg.startswith(f"hf-hub:timm/other: architecture {arch!r} is not supported")
    assert "only timm EfficientNet / EfficientNet-Lite / EfficientNetV2 weights load" in msg


@pytest.mark.parametrize(
    "text, says",
    [(b"{not json", "is not a readable JSON file (JSONDecodeError"), (b"[1, 2]", "must hold a JSON object, got list"),
     (b'{"num_classes": 1000}', "has no 'architecture'"), (b"\xff\xfe", "is not a readable JSON file")],
)  # fmt: skip
def test_config_not_json_or_not_timm(cache, text, says):
    snapshot = make_hub_cache(cache, REPO, {"config.json": text, "model.safetensors": b"x"})
    msg = one_line_error(ID)
    assert msg.startswith(ID + ": ") and says in msg
    assert os.path.join(os.path.basename(snapshot), "config.json") in msg  # names the file


@pytest.mark.parametrize(
    "change, says",
    [({"num_classes": "1000"}, "num_classes must be an int >= 0"), ({"pretrained_cfg": [1]}, "pretrained_cfg must be"),
     ({"pretrained_cfg": {"tag": "a b"}}, "pretrained_cfg.tag must be")],
)  # fmt: skip
def test_bad_config_fields(cache, change, says):
    make_hub_cache(cache, REPO, {"config.json": config_bytes({**timm_config(), **change}), "model.safetensors": b"x"})
    assert says in one_line_error(ID)


def test_without_huggingface_hub_gives_the_install_hint(monkeypatch):
    for name in [m for m in sys.modules if m == "huggingface_hub" or m.startswith("huggingface_hub.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now raises ImportError
    msg = one_line_error(ID)
    assert msg.startswith(ID + ": ") and "needs huggingface_hub: pip install 'effnet[hub]'" in msg


def http_error(cls, status: int = 404):
    httpx2 = pytest.importorskip("httpx2")
    response = httpx2.Response(status, request=httpx2.Request("HEAD", "https://huggingface.co/x"))
    return cls(f"{status} Client Error.\n\nmore details", response=response)


def test_online_errors_map_to_one_line(cache, monkeypatch):
    """What hf_hub_download raises online (faked: there is no network here)."""
    import huggingface_hub
    from huggingface_hub import errors

    config = config_bytes(timm_config())
    raised: dict[str, Exception] = {}
    asked: list[str] = []

    def fake_download(repo_id, filename, revision=None):
        asked.append(filename)
        if filename in raised:
            raise raised[filename]
        snapshot = make_hub_cache(cache, repo_id, {filename: config if filename == "config.json" else b"w"})
        return os.path.join(snapshot, filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    raised["model.safetensors"] = http_error(errors.RemoteEntryNotFoundError)
    assert fetch(ID).weights_path.endswith("pytorch_model.bin")
    assert asked == ["config.json", "model.safetensors", "pytorch_model.bin"]

    raised["pytorch_model.bin"] = http_error(errors.RemoteEntryNotFoundError)
    assert "has neither model.safetensors nor pytorch_model.bin" in one_line_error(ID)

    cases = [
        (errors.RemoteEntryNotFoundError, "has no config.json"),
        (errors.RepositoryNotFoundError, f"repository {REPO} was not found on the Hub"),
        (errors.GatedRepoError, f"repository {REPO} is gated"),
        (errors.RevisionNotFoundError, "revision 'main' of"),
        (errors.HfHubHTTPError, "could not fetch config.json of"),
    ]
    for cls, says in cases:
        raised["config.json"] = http_error(cls)
        msg = one_line_error(ID)
        assert says in msg and msg.startswith(ID + ": "), (cls, msg)
    raised["config.json"] = errors.HFValidationError("Repo id must use alphanumeric chars")
    assert "huggingface_hub refuses the id" in one_line_error(ID)


def test_env_is_read_by_a_fresh_process(tmp_path):
    """The variables alone, as a user sets them: huggingface_hub reads them when first imported."""
    pytest.importorskip("huggingface_hub")
    cache = str(tmp_path / "hub")
    make_hub_cache(cache, REPO, {"config.json": config_bytes(timm_config()), "model.safetensors": st_save(TENSORS)})
    code = (
        "from effnet_torch.hub import fetch, HubError\n"
        f"print(fetch({ID!r}).weights_path)\n"
        "try:\n    fetch('hf-hub:timm/efficientnet_b0.ra_in1k')\n"
        "except HubError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    assert lines[0].endswith("model.safetensors") and os.path.realpath(lines[0]).startswith(os.path.realpath(cache))
    assert "not in the local Hugging Face cache" in lines[1] and "HF_HUB_OFFLINE is set" in lines[1]


def test_product_code_imports_no_hub_at_module_level():
    assert "huggingface_hub" not in hub.__dict__
