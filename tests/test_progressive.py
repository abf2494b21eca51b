"""Progressive learning (`train.progressive`), mixup and CutMix (`train.mixing`) and their place in the input
stream; the end-to-end run of a V2 preset with stages (one compile per stage, exact resume inside a stage)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import optax
import pytest

from effnet_jax.train import data as data_lib
from effnet_jax.train import loop as train_mod
from effnet_jax.train import mixing, preflight
from effnet_jax.train.augment import TrainTransform
from effnet_jax.train.checkpoint import Checkpointer
from effnet_jax.train.config import BASE, PRESETS, from_preset
from effnet_jax.train.modeling import cross_entropy
from effnet_jax.train.progressive import plan, stage_at

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _cfg(**kw):
    return dataclasses.replace(BASE, **kw)


# --- the plan --------------------------------------------------------------------------------------------------


def test_plan_ramps_linearly_from_the_papers_starts_to_the_config():
    cfg = _cfg(progressive=4, augment="randaugment", randaugment_m=15, mixup=0.2, cutmix=0.4)
    stages = plan(cfg, 1000, 300, 0.3)
    assert [(s.first, s.end) for s in stages] == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert [s.size for s in stages] == [128, 185, 243, 300]  # 128 + 172 k / 3, rounded
    np.testing.assert_allclose([s.randaugment_m for s in stages], [5, 25 / 3, 35 / 3, 15])
    np.testing.assert_allclose([s.dropout for s in stages], [0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])
    np.testing.assert_allclose([s.mixup for s in stages], [0, 0.2 / 3, 0.4 / 3, 0.2])
    np.testing.assert_allclose([s.cutmix for s in stages], [0, 0.4 / 3, 0.8 / 3, 0.4])
    assert [stage_at(stages, step).index for step in (0, 249, 250, 999, 1000)] == [0, 0, 1, 3, 3]


def test_plan_keeps_mixing_that_is_off_off_and_a_run_without_stages_is_one_stage():
    stages = plan(_cfg(progressive=3, progressive_mixup=0.1, mixup=0.5), 9, 64, 0.2)
    assert [s.cutmix for s in stages] == [0, 0, 0] and stages[0].mixup == pytest.approx(0.1)
    assert [s.size for s in stages] == [32, 48, 64]  # below 256 px the ramp starts at half the side
    (one,) = plan(_cfg(mixup=0.3, randaugment_m=7), 50, 224, 0.25)
    assert (one.first, one.end, one.size, one.randaugment_m, one.dropout, one.mixup) == (0, 50, 224, 7, 0.25, 0.3)


@pytest.mark.parametrize(
    "kw, steps, message",
    [
        (dict(progressive=4), 3, "progressive=4 stages need at least 4 steps; the run has 3"),
        (dict(progressive=2, progressive_size=400), 10, "progressive_size=400 is above the train side 300"),
    ],
)
def test_plan_refuses_what_cannot_be_staged(kw, steps, message):
    with pytest.raises(ValueError, match=message):
        plan(_cfg(**kw), steps, 300, 0.2)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["progressive_size=64"], "progressive_size is read only with progressive=N"),
        (["progressive_dropout=0.2", "progressive_mixup=0.1"], "progressive_dropout, progressive_mixup are read"),
        (["progressive=1"], "progressive=1 is one stage"),
        (["mixup=-0.1"], "mixup must lie in 0..100"),
        (["progressive=2", "progressive_dropout=1"], r"progressive_dropout must lie in \[0, 1\)"),
        (["progressive=2", "progressive_magnitude=31"], "progressive_magnitude must lie in 0..30"),
        (["init=x.safetensors", "eval_resolution=300"], "eval_resolution=300 with init= needs resolution="),
    ],
)
def test_config_refuses_progressive_settings_that_would_be_ignored_or_out_of_range(sets, message):
    with pytest.raises(ValueError, match=message):
        from_preset("finetune", sets)


def test_v2_presets_are_the_papers_recipe():
    s, m, b0 = PRESETS["v2_s"], PRESETS["v2_m"], PRESETS["v2_b0"]
    assert (s.progressive, s.augment, s.randaugment_m, s.mixup, s.cutmix) == (4, "randaugment", 10, 0, 0)
    assert (m.randaugment_m, m.mixup, m.cutmix, PRESETS["v2_l"].mixup) == (15, 0.2, 0.2, 0.5)
    assert (b0.progressive, b0.augment, b0.mixup) == (4, "autoaugment", 0)
    assert (s.optimizer, s.lr_per_256, s.global_batch, s.resolution) == ("rmsprop", 0.016, 4096, 0)


# --- mixup and CutMix --------------------------------------------------------------------------------------------


def _batch(rows, size, mixup, cutmix, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(rows, size, size, 3)).astype(np.float32)
    draws = [mixing.draw(np.random.default_rng([seed, i]), size, i, rows, mixup, cutmix) for i in range(rows)]
    batch = {"image": images, "label": np.arange(rows, dtype=np.int32)}
    batch.update({k: np.stack([d[k] for d in draws]) for k in draws[0]})
    return images, mixing.mix_batch(batch)


def test_mixup_blends_each_row_with_the_mirrored_row_at_a_weight_of_at_least_a_half():
    images, out = _batch(6, 8, mixup=0.4, cutmix=0.0)
    w = out["mix"]
    assert set(out) == {"image", "label", "label_mix", "mix"}
    assert np.all(w >= 0.5) and np.all(w <= 1) and len(set(w.tolist())) == 6
    np.testing.assert_array_equal(out["label_mix"], [5, 4, 3, 2, 1, 0])
    want = w[:, None, None, None] * images + (1 - w[:, None, None, None]) * images[::-1]
    np.testing.assert_allclose(out["image"], want, rtol=1e-6)


def test_cutmix_pastes_a_box_from_the_mirrored_row_and_weighs_the_label_by_what_is_left():
    images, out = _batch(5, 16, mixup=0.0, cutmix=1.0)
    for i in range(5):
        pasted = np.all(out["image"][i] == images[4 - i], axis=-1) & np.any(images[i] != images[4 - i], axis=-1)
        kept = np.all(out["image"][i] == images[i], axis=-1)
        assert np.all(pasted | kept)
        if i != 2:  # the middle row is its own partner
            ys, xs = np.nonzero(pasted)
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) if len(ys) else 0
            assert box == pasted.sum(), "the pasted pixels form one box"
            assert out["mix"][i] == pytest.approx(1 - pasted.sum() / 256)


def test_both_on_mix_the_first_half_of_the_rows_and_cut_the_second():
    _, out = _batch(8, 8, mixup=1.0, cutmix=1.0)
    draws = [mixing.draw(np.random.default_rng([0, i]), 8, i, 8, 1.0, 1.0) for i in range(8)]
    assert [float(d["mix_blend"]) for d in draws] == [1, 1, 1, 1, 0, 0, 0, 0]


def test_the_mixed_loss_is_the_cross_entropy_against_the_mixed_smoothed_targets():
    logits = jax.random.normal(jax.random.key(0), (4, 10))
    a, b, w = np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1]), np.array([0.9, 0.6, 0.5, 0.75], np.float32)
    got = cross_entropy(logits, a, 0.1, label_mix=b, mix=w)
    targets = w[:, None] * optax.smooth_labels(jax.nn.one_hot(a, 10), 0.1) + (1 - w[:, None]) * optax.smooth_labels(
        jax.nn.one_hot(b, 10), 0.1
    )
    np.testing.assert_allclose(got, optax.softmax_cross_entropy(logits, targets).mean(), rtol=1e-6)


# --- the stream --------------------------------------------------------------------------------------------------


def test_each_stage_feeds_its_own_side_and_mixing_and_a_stream_started_inside_a_stage_is_the_same():
    src = data_lib.DigitsSource("train")
    stages = (
        data_lib.StageInput(2, TrainTransform(12, MEAN, STD, augment="randaugment", randaugment_m=5)),
        data_lib.StageInput(
            5, TrainTransform(20, MEAN, STD, augment="randaugment", randaugment_m=9), mixup=0.2, cutmix=0.5
        ),  # fmt: skip
    )
    kw = dict(seed=3, steps=5, batches=data_lib.Batches(4))
    full = list(data_lib.train_dataset(src, stages, **kw))
    assert [b["image"].shape[1] for b in full] == [12, 12, 20, 20, 20]
    assert ["mix" in b for b in full] == [False, False, True, True, True]
    later = list(data_lib.train_dataset(src, stages, start=3, **kw))
    for x, y in zip(full[3:], later, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # a stage without mixing draws nothing more: its batches are those of the plain transform
    plain = list(data_lib.train_dataset(src, stages[0].transform, **{**kw, "steps": 2}))
    np.testing.assert_array_equal(plain[1]["image"], full[1]["image"])


# --- end to end ------------------------------------------------------------------------------------------------


V2_RUN = [
    "data=digits", "stages=2", "resolution=32", "eval_resolution=40", "progressive=3", "progressive_size=16",
    "augment=randaugment", "mixup=0.4", "cutmix=0.4", "flip=false", "global_batch=16", "eval_batch=120", "steps=9",
    "ckpt_every=4", "keep=3", "log_every=1", "eval_every=0", "progress=false", "weight_source=torchvision",
]  # fmt: skip


@pytest.mark.slow
def test_a_v2_preset_trains_every_stage_compiled_once_and_resumes_inside_a_stage_exactly(tmp_path, monkeypatch):
    compiles = []
    real = preflight.compile_checked

    def counted(fn, args, **kw):
        batch = next(a for a in args if isinstance(a, dict) and "image" in a)
        compiles.append((kw["what"], batch["image"].shape[1]))
        return real(fn, args, **kw)

    monkeypatch.setattr(preflight, "compile_checked", counted)
    full = tmp_path / "full"
    summary = train_mod.train(from_preset("v2_b0", [*V2_RUN, f"workdir={full}"]))
    assert summary["steps"] == 9
    # each stage's step once, at its side, then the eval step at the eval side: nothing compiles again (the loop
    # calls the compiled executables, which cannot retrace)
    assert compiles == [("the train step of stage 1", 16), ("the train step of stage 2", 24),
                        ("the train step of stage 3", 32), ("the eval step", 40)]  # fmt: skip
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    marks = [(r["step"], r["size"], round(r["dropout"], 3), round(r["mixup"], 3)) for r in rows if r["kind"] == "stage"]
    assert marks == [(0, 16, 0.1, 0.0), (3, 24, 0.15, 0.2), (6, 32, 0.2, 0.4)]  # v2_b0's dropout 0.2
    header = json.loads((full / "config.json").read_text())
    assert header["progressive"] == 3
    # resume from the checkpoint at step 4, inside the second stage (steps 3-5)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for step in Checkpointer(str(part / "checkpoints")).all_steps():
        if step > 4:
            shutil.rmtree(part / "checkpoints" / str(step))
    compiles.clear()
    resumed = train_mod.train(from_preset("v2_b0", [*V2_RUN, f"workdir={part}", "resume=true"]))
    assert resumed["resumed_at_step"] == 4 and resumed["steps"] == 9
    assert [c[0] for c in compiles] == ["the train step of stage 2", "the train step of stage 3", "the eval step"]
    a, b = _ema(full, 9), _ema(part, 9)
    for k in a:  # same program, same inputs, same keys on the same CPU: bit-identical
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    again = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again if r["kind"] == "stage"] == [0, 3, 6]


def _ema(workdir, step):
    import orbax.checkpoint as ocp

    ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    got = ckpt.manager.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore()))
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(got["ema"])[0]}


def test_a_stages_dropout_is_its_graphdefs_and_the_same_rate_keeps_the_graphdef():
    from flax import nnx

    from effnet_jax.train.modeling import WEIGHTS, build_model
    from effnet_jax.train.step import with_dropout

    model = nnx.eval_shape(lambda: build_model(from_preset("smoke", ["dropout=0.2"]), 4))
    graphdef, weights, rest = nnx.split(model, WEIGHTS, ...)
    state = {"weights": weights, "rest": rest}
    assert with_dropout(graphdef, state, 0.2) is graphdef
    staged = with_dropout(graphdef, state, 0.05)
    assert nnx.merge(staged, weights, rest).dropout.rate == 0.05
    assert nnx.merge(graphdef, weights, rest).dropout.rate == 0.2  # the run's own graphdef is untouched
