"""TrainConfig: presets, `key=value` overrides parsed by field type, and the errors promised for bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest

from effnet_jax.train.config import (
    BASE,
    DEFAULT_PRESET,
    PRESETS,
    TrainConfig,
    apply_overrides,
    from_dict,
    from_preset,
    to_json,
)
from effnet_spec import VARIANTS


def test_every_field_has_a_unit_comment():
    """Each field is documented in place (the config is the user's reference)."""
    import inspect

    src = inspect.getsource(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{f.name}:"))
        assert "#" in line, f"field {f.name} has no comment"


def test_presets_cover_defaults_and_every_variant():
    assert DEFAULT_PRESET == "digits"
    assert {"digits", "smoke", *VARIANTS} <= set(PRESETS)
    assert PRESETS["smoke"].data == "synthetic" and PRESETS["smoke"].steps == 2
    assert PRESETS["b3"].variant == "b3" and PRESETS["b3"].optimizer == "rmsprop"


def test_digits_preset_shows_each_digit_as_it_is_and_at_the_scale_it_trains_on():
    """A mirrored 2 is not a 2; and the eval crop's share of the area lies in the train crops' range, so the val
    digits are not bigger or smaller than any the model saw (the preset's accuracy rests on both)."""
    cfg = PRESETS["digits"]
    assert cfg.flip is False and cfg.augment == "none"
    assert cfg.crop_min_area <= cfg.eval_crop**2 <= 1.0


def test_base_is_the_paper_recipe():
    assert (BASE.rmsprop_decay, BASE.momentum, BASE.rmsprop_eps) == (0.9, 0.9, 1e-3)
    assert (BASE.lr_per_256, BASE.warmup_epochs, BASE.lr_decay_rate, BASE.lr_decay_epochs) == (0.016, 5, 0.97, 2.4)
    assert (BASE.weight_decay, BASE.label_smoothing, BASE.ema_decay) == (1e-5, 0.1, 0.9999)


def test_overrides_parse_by_field_type():
    cfg = from_preset("smoke", ["lr=0.1", "steps=10", "flip=false", "workdir=/tmp/x", "resume=YES", "dropout=0.3"])
    assert cfg.lr == 0.1 and isinstance(cfg.lr, float)
    assert cfg.steps == 10 and isinstance(cfg.steps, int)
    assert cfg.flip is False and cfg.resume is True
    assert cfg.workdir == "/tmp/x" and cfg.dropout == 0.3
    assert PRESETS["smoke"].steps == 2, "presets must not be mutated"


@pytest.mark.parametrize(
    "override, message",
    [
        ("lrr=0.1", "unknown config key 'lrr'; valid keys: "),
        ("steps=ten", "config key 'steps' expects int, got 'ten'"),
        ("flip=maybe", "config key 'flip' expects a bool"),
        ("steps", "is not key=value"),
        ("optimizer=lamb", "optimizer must be one of"),
        ("global_batch=0", "global_batch must be >= 1"),
        ("steps=-5", "steps and epochs must be >= 0; got -5"),
        ("lr=-1", "lr must be >= 0"),
        ("lr=nan", "lr must be a finite number; got nan"),
        ("ema_decay=inf", "ema_decay must be a finite number; got inf"),
        ("warmup_epochs=-1", "warmup_epochs must be >= 0"),
        ("weight_decay=-0.1", "weight_decay must be >= 0"),
        ("momentum=1.5", "momentum must lie in"),
        ("dropout=1", "drop_path and dropout must be < 1"),
    ],
)
def test_bad_overrides_raise_clear_errors(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        from_preset("smoke", [override])
    if "unknown config key" in message:
        assert "global_batch" in str(e.value) and "ema_decay" in str(e.value), "the error lists the valid keys"


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'b99'"):
        from_preset("b99")


def test_json_round_trip():
    cfg = apply_overrides(PRESETS["digits"], ["seed=3"])
    assert TrainConfig(**json.loads(to_json(cfg))) == cfg


def test_a_config_saved_under_the_old_key_name_still_loads():
    saved = json.loads(to_json(PRESETS["digits"]))
    saved["weights_convention"] = saved.pop("weight_source")  # as runs before the rename wrote it
    assert from_dict(saved) == PRESETS["digits"]
    saved["not_a_key"] = 1
    with pytest.raises(ValueError, match=r"saved config has unknown keys \['not_a_key'\]"):
        from_dict(saved)


def test_weight_source_is_checked():
    with pytest.raises(ValueError, match="weight_source must be one of effnet, torchvision"):
        from_preset("smoke", ["weight_source=keras"])
