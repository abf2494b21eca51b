"""Compound scaling as data (`Coefficients`), the search space, and every refusal of `effnet search` / `effnet
scaling`: spec-level and in-process, no training (the runs themselves are in test_search_runs.py)."""

from __future__ import annotations

import math
import os

import pytest

import effnet_spec
from effnet_jax.cli import main as cli
from effnet_jax.search import space
from effnet_jax.train.config import TrainConfig, from_preset
from effnet_jax.train.modeling import config_spec, resolution_of
from effnet_spec import (
    STAGES,
    Coefficients,
    compound,
    count_macs,
    load_coefficients,
    resolve,
    round_filters,
    round_repeats,
)


def _arch(spec):
    return (
        spec.stem_ch,
        spec.head_ch,
        [(b.in_ch, b.mid_ch, b.out_ch, b.kernel, b.stride, b.se_ch) for b in spec.blocks],
    )


@pytest.mark.parametrize("phi", [0.0, 0.5, 1.0, 2.0, 3.5, 7.0])
def test_compound_with_the_paper_constants_is_the_formula_on_b0_at_224(phi):
    """Today's compound(phi): width 1.1^phi, depth 1.2^phi, side 224 * 1.15^phi to the nearest multiple of 8,
    dropout 0.2 + 0.05 phi; the name and every number unchanged by the generalisation to other bases."""
    v = compound(phi)
    assert v.name == f"phi{phi:g}" and v.family == "efficientnet"
    assert (v.width, v.depth) == (1.1**phi, 1.2**phi)
    assert v.resolution == int(round(224 * 1.15**phi / 8)) * 8
    assert v.dropout == min(0.5, 0.2 + 0.05 * phi)
    assert compound(phi, family="lite").family == "lite"
    assert resolve(phi).variant == v
    assert Coefficients().variant(phi) == v  # the default coefficients are the paper's, on b0 at 224


def test_custom_coefficients_follow_the_formula_and_the_rounding_rules():
    c = Coefficients(alpha=1.3, beta=1.05, gamma=1.1, base="b0", resolution=16)
    v = c.variant(2.0)
    assert math.isclose(v.depth, 1.3**2) and math.isclose(v.width, 1.05**2)
    assert c.step == 1 and v.resolution == round(16 * 1.1**2)  # a 16 px base rounds to whole pixels, not 8s
    spec = resolve(2.0, coefficients=c)
    assert spec.stage_repeats() == tuple(round_repeats(r.repeats, 1.3**2) for r in STAGES)
    assert spec.stage_channels() == tuple(round_filters(r.out_ch, 1.05**2) for r in STAGES)
    assert spec.head_ch == round_filters(1280, 1.05**2)
    # another base: its own coefficients times the scaling (b2's depth 1.2, width 1.1)
    b2 = Coefficients(alpha=1.1, beta=1.2, gamma=1.0, base="b2").variant(1.0)
    assert (
        math.isclose(b2.depth, 1.2 * 1.1) and math.isclose(b2.width, 1.1 * 1.2) and b2.resolution == 260
    )  # gamma 1: the base side, not rounded to 256
    # phi = 0 is the base itself, at the coefficients' side
    assert _arch(resolve(0.0, coefficients=c)) == _arch(resolve("b0")) and c.variant(0).resolution == 16


def test_a_coefficients_file_round_trips_through_summary_from_name_and_train(tmp_path, capsys):
    from effnet_jax import EfficientNet

    c = Coefficients(alpha=1.3, beta=1.05, gamma=1.1, base="b0", resolution=16, provenance={"search": {"x": 1}})
    path = tmp_path / "coefficients.json"
    path.write_text(c.to_json())
    assert load_coefficients(str(path)) == c and load_coefficients(str(path)).provenance == {"search": {"x": 1}}
    want = resolve(2.0, coefficients=c, num_classes=10)

    assert cli(["summary", "--phi", "2", "--coefficients", str(path), "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == effnet_spec.summary(want).strip()
    assert f"{count_macs(want) / 1e9:.3f} G" in out

    model = EfficientNet.from_name(2.0, num_classes=10, coefficients=str(path))
    assert model.spec == want

    cfg = from_preset("digits", ["phi=2", f"coefficients={path}"])
    assert _arch(config_spec(cfg)) == _arch(resolve(2.0, coefficients=c)) and resolution_of(cfg) == 19
    inline = from_preset("digits", ["phi=2", "coefficients=1.3,1.05,1.1"])  # on the preset's b0 at 16 px
    assert _arch(config_spec(inline)) == _arch(config_spec(cfg)) and resolution_of(inline) == 19
    paper = from_preset("digits", ["phi=1"])  # the paper's constants on the preset's base and side
    assert resolution_of(paper) == round(16 * 1.15) and config_spec(paper).stage_repeats()[1] == 3


@pytest.mark.parametrize(
    "body, message",
    [
        ("not json", "is not readable JSON"),
        ('{"alpha": 1.2, "beta": 1.1, "gamma": 1.15, "base": "b0"}', "is not an effnet coefficients file"),
        ('{"format": "effnet-coefficients/1", "alpha": 0.9, "beta": 1, "gamma": 1, "base": "b0"}', "alpha must be"),
        ('{"format": "effnet-coefficients/1", "alpha": 1.2, "beta": 1, "gamma": 1, "base": "b99"}', "base must be"),
        ('{"format": "effnet-coefficients/1", "alpha": 1.2, "beta": 1, "gamma": 1}', "lacks base"),
        (
            '{"format": "effnet-coefficients/1", "alpha": 1, "beta": 1, "gamma": 1, "base": "b0", "w": 2}',
            "unknown keys",
        ),
        ('{"format": "effnet-coefficients/1", "alpha": "NaN", "beta": 1, "gamma": 1, "base": "b0"}', "alpha must be"),
    ],
)
def test_a_bad_coefficients_file_is_one_line_everywhere(tmp_path, capsys, body, message):
    path = tmp_path / "c.json"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_coefficients(str(path))
    assert cli(["summary", "--phi", "1", "--coefficients", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(path) in err and len(err.splitlines()) == 1


def test_train_refuses_coefficients_found_on_another_base_or_side(tmp_path, capsys):
    lite = tmp_path / "lite.json"
    lite.write_text(Coefficients(alpha=1.2, beta=1.1, gamma=1.1, base="lite0", resolution=16).to_json())
    side = tmp_path / "side.json"
    side.write_text(Coefficients(alpha=1.2, beta=1.1, gamma=1.1, base="b0", resolution=32).to_json())
    workdir = tmp_path / "run"
    for path, message in ((lite, "were found on lite0, but the config's variant is b0"),
                          (side, "were found at 32 px, but the config's resolution is 16")):  # fmt: skip
        args = ["train", "--set", "phi=1", "--set", f"coefficients={path}", "--workdir", str(workdir)]
        assert cli(args, fast_malloc=False) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not workdir.exists()  # refused before the workdir is made
    for bad, message in (("phi=-1", "phi must lie in 0..64"), ("coefficients=1.2,0.9,1", "beta must be"),
                         ("coefficients=1.2,x,1", "expected ALPHA,BETA,GAMMA")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            from_preset("digits", [bad])
    with pytest.raises(ValueError, match="not init weights"):
        TrainConfig(init="x.safetensors", variant="", weight_source="", phi=1.0)


def test_rounding_makes_grid_points_one_network_and_each_network_is_listed_once():
    proxy = space.Proxy(base="b0", resolution=16, resolution_step=0, weight_source="effnet", stages=0, num_classes=10)
    points = space.grid((1.0, 1.1, 1.2), (1.0, 1.1), (1.0, 1.1, 1.15))
    cands = space.realise(points, proxy)
    assert sorted(p for c in cands for p in c.requested) == sorted(points)  # every point listed, once
    assert len({c.key for c in cands}) == len(cands)
    archs = set()
    for c in cands:  # each candidate's points all build its network, and no two candidates build the same one
        specs = {str(_arch(resolve(proxy.coefficients(p).variant(1.0), num_classes=10))) for p in c.requested}
        sides = {proxy.coefficients(p).variant(1.0).resolution for p in c.requested}
        assert len(specs) == 1 and sides == {c.resolution}
        archs.add((specs.pop(), c.resolution))
        assert c.macs == count_macs(resolve(proxy.coefficients(c.point).variant(1.0), num_classes=10), c.resolution)
    assert len(archs) == len(cands) < len(points)
    # at 16 px depth 1.1 and 1.2 add the same blocks (ceil of 1.1 and 1.2 times 1..4 repeats differ only at 4)
    paper = next(c for c in cands if "paper" in c.refs)
    assert (1.1, 1.1, 1.15) in paper.requested and paper.point == space.PAPER_POINT
    kept = space.apply_constraint(cands, "formula", 2.0, 0.1)
    for c in kept:
        assert c.refs or any(abs(space.formula(p) - 2.0) <= 0.1 for p in c.requested)
    assert {"base", "paper"} <= {r for c in kept for r in c.refs}
    assert not next(c for c in kept if "base" in c.refs).in_space


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tolerance", "0"], "--tolerance 0: must be > 0"),
        (["--tolerance", "-1"], "--tolerance -1: must be > 0"),
        (["--alpha", "0.9:1.2:0.1"], "every coefficient must be a finite number >= 1"),
        (["--beta", "1,x"], "expected LO:HI:STEP"),
        (["--base", "b99"], "variant must be one of"),
        (["--alpha", "1", "--beta", "1", "--gamma", "1", "--target", "3"], "leaves no candidate in the grid"),
        (["--set", "phi=2"], "the search sets phi itself"),
        (["--set", "workdir=x"], "the search sets workdir itself"),
        (["--repeats", "0"], "--repeats 0"),
        (["--parallel", "0"], "--parallel 0"),
        (["--parallel", "100000"], "--parallel 100000: expected 1.."),
        (["--data", "/nonexistent/images"], "does not exist"),
        (["--data", "synthetic"], "has no validation split: set --set val_data=FOLDER"),
    ],
)
def test_search_refuses_bad_input_in_one_line_writing_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "search"
    assert cli(["search", "--out", str(out), *args], fast_malloc=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_search_directory_of_another_search_or_other_files_is_refused(tmp_path, capsys):
    from effnet_jax.search.search import SearchSettings, _identity, claim_dir, make_plan

    out = tmp_path / "search"
    claim_dir(str(out), _identity(make_plan(SearchSettings(alphas=(1.0, 1.2), betas=(1.0, 1.1), gammas=(1.0, 1.15)))))
    before = {p: os.path.getmtime(out / p) for p in os.listdir(out)}
    argv = ["search", "--out", str(out), "--alpha", "1,1.2", "--beta", "1,1.1", "--gamma", "1,1.15", "--set"]
    assert cli([*argv, "steps=7"], fast_malloc=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'belongs to another search: settings.overrides was [], now ["steps=7"]' in err[0], err
    assert {p: os.path.getmtime(out / p) for p in os.listdir(out)} == before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli(["search", "--out", str(other)], fast_malloc=False) == 2
    assert "non-empty folder without search.json" in capsys.readouterr().err
    assert os.listdir(other) == ["notes.txt"]


def test_dry_run_lists_the_realised_networks(capsys):
    argv = ["search", "--dry-run", "--alpha", "1,1.1,1.2", "--beta", "1,1.1", "--gamma", "1,1.1,1.15"]
    assert cli(argv, fast_malloc=False) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| (")]
    assert any("| paper |" in r for r in rows) and any("| base |" in r for r in rows)
    paper = next(r for r in rows if "| paper |" in r)
    # four grid points (alpha 1.1 or 1.2, gamma 1.1 or 1.15) build one network at 16 px: one row, three shown
    assert "(1.1, 1.1, 1.1), (1.1, 1.1, 1.15), (1.2, 1.1, 1.1) +1 |" in paper


def test_scaling_matches_single_dimension_networks_to_the_compound_macs():
    from effnet_jax.search.study import StudySettings, study_points

    cfg = from_preset("digits", ["stages=3"])
    points = study_points(StudySettings(coefficients=(1.3, 1.1, 1.1), phis=(1.0, 2.0)), cfg, 10)

    def macs(p):
        a, b, g = p.coefficients
        v = Coefficients(alpha=a, beta=b, gamma=g, base="b0", resolution=16).variant(p.train_phi)
        return count_macs(resolve(v, num_classes=10, stages=STAGES[:3]), v.resolution)

    for phi in (1.0, 2.0):
        at = {p.strategy: p for p in points if p.phi == phi}
        target = macs(at["compound (found)"])
        for kind, axis in (("depth", 0), ("width", 1), ("resolution", 2)):
            p = at[kind]
            assert [i for i, x in enumerate(p.coefficients) if x != 1.0] == [axis]  # one dimension only
            # the closest the dimension can come (MACs step with the rounding): no multiplier on a 0.01 grid closer
            grid = [tuple(1.0 + i / 100 if j == axis else 1.0 for j in range(3)) for i in range(0, 400)]
            best = min(abs(macs(type(p)(kind, phi, g, 1.0)) - target) for g in grid)
            assert abs(macs(p) - target) <= best and abs(macs(p) / target - 1) < 0.25, (kind, phi, macs(p), target)
    assert sum(p.phi == 0 for p in points) == 5  # the base, shared by every curve


def test_scaling_refuses_bad_input_in_one_line_writing_nothing(tmp_path, capsys):
    good = tmp_path / "c.json"
    good.write_text(Coefficients(alpha=1.2, beta=1.1, gamma=1.1, base="b0", resolution=16).to_json())
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "effnet-coefficients/1", "alpha": 1.2')
    out = tmp_path / "study"
    cases = [
        (["--coefficients", str(bad)], "is not readable JSON"),
        (["--coefficients", "1.2,0.5,1"], "beta must be"),
        (["--coefficients", str(good), "--phi", "1,x"], "expected comma-separated numbers"),
        (["--coefficients", str(good), "--phi", "0"], "expected values in (0, 8]"),
        (["--coefficients", str(good), "--set", "variant=b1"], "found on b0 at 16 px, but the budget trains b1 at 16"),
        (
            ["--coefficients", str(good), "--set", "resolution=32"],
            "found on b0 at 16 px, but the budget trains b0 at 32",
        ),
        (["--coefficients", str(good), "--repeats", "0"], "--repeats 0"),
    ]
    for args, message in cases:
        assert cli(["scaling", "--out", str(out), *args], fast_malloc=False) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
        assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "nan"], "--target nan: must be a finite number"),
        (["--tolerance", "inf"], "--tolerance inf: must be a finite number"),
        (["--mnas-w", "nan"], "--mnas-w nan: must be a finite number"),
        (["--alpha", "1:inf:0.1"], "expected LO:HI:STEP"),
        (["--alpha", "1:2:1e-320"], "expected LO:HI:STEP"),
        (["--alpha", "1:2:inf"], "expected LO:HI:STEP"),
        (["--alpha", "1:1.999:0.002", "--beta", "1:1.999:0.002"], "the grid has 1,750,000 points"),
        (["--alpha", "1e6"], "at most 1000x each"),
        (["--alpha", "1e300"], "at most 1000x each"),
    ],
)
def test_search_refuses_non_finite_settings_and_huge_grids_or_networks(tmp_path, capsys, args, message):
    """Each of these once trained every run and then failed writing JSON, hung realising the grid, or tracebacked."""
    out = tmp_path / "search"
    assert cli(["search", "--out", str(out), *args], fast_malloc=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_compound_refuses_multipliers_it_cannot_build():
    with pytest.raises(ValueError, match="at most 1000x each"):
        resolve(40.0, coefficients="3,1,1")  # 3^40 times the repeats: resolve would never return
    with pytest.raises(ValueError, match="at most 1000x each"):
        Coefficients(alpha=1e300, beta=1.1, gamma=1.0).variant(2.0)  # was an OverflowError
    assert compound(30.0).resolution == 224 + round((224 * 1.15**30 - 224) / 8) * 8  # the paper's range is kept


def test_the_search_names_the_point_nearest_its_own_target(tmp_path, monkeypatch):
    """(1.1, 1, 1.2) and (1.2, 1, 1.2) build one network at 16 px; under alpha*beta^2*gamma^2 = 1.5 +- 0.1 the
    choice must name the first (1.584), not the one nearest the paper's 2 (1.728, outside the constraint)."""
    from effnet_jax.search import runner
    from effnet_jax.search.search import SearchSettings, search

    def fake_runs(jobs, runs_dir, **kw):
        return {j.key: {"top1": 0.9 if "r19" in j.key else 0.5, "top5": 1.0, "img_per_s": 1.0, "wall_s": 1.0,
                        "latency_ms": 1.0} for j in jobs}  # fmt: skip

    monkeypatch.setattr(runner, "run_jobs", fake_runs)
    s = SearchSettings(alphas=(1.1, 1.2), betas=(1.0,), gammas=(1.2,), target=1.5, tolerance=0.1)
    choice = search(s, str(tmp_path / "search"), parallel=1, progress=False)
    assert (choice["alpha"], choice["beta"], choice["gamma"]) == (1.1, 1.0, 1.2)
    assert load_coefficients(str(tmp_path / "search" / "coefficients.json")).alpha == 1.1


def test_the_study_trains_with_the_searchs_recipe_one_seed_each(tmp_path, monkeypatch):
    """The study's runs pin the base's dropout as the search's runs do (so a reused search run is the same
    training), and carry exactly one seed; a compound phi = 1 job is the search's job for the same point."""
    from effnet_jax.search import runner
    from effnet_jax.search.search import base_config, candidate_overrides
    from effnet_jax.search.study import StudySettings, study

    seen = []

    def fake_runs(jobs, runs_dir, **kw):
        seen.extend(jobs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "run_jobs", fake_runs)
    budget = ("dropout=-1", "stages=3")
    s = StudySettings(coefficients=(1.2, 1.1, 1.15), overrides=budget, phis=(1.0,), repeats=2)
    with pytest.raises(RuntimeError, match="stop here"):
        study(s, str(tmp_path / "study"), parallel=1, progress=False)
    assert seen
    for job in seen:
        assert sum(o.startswith("seed=") for o in job.overrides) == 1, job.overrides
        assert "dropout=0.2" in job.overrides, job.overrides
    cfg = base_config("digits", budget)
    paper = [j for j in seen if "compound (paper) phi=1" in j.label or "compound (found) phi=1" in j.label]
    assert paper and all(
        j.overrides in {candidate_overrides(cfg, budget, (1.2, 1.1, 1.15), seed) for seed in (0, 1)} for j in paper
    )


@pytest.mark.parametrize(
    "provenance",
    ['"x"', '{"search": "x"}', '{"search": {"overrides": [1, 2]}}', '{"search": {"preset": 3}}', '{"search_dir": [1]}'],
)
def test_scaling_refuses_a_coefficients_file_with_garbage_provenance(tmp_path, capsys, provenance):
    path = tmp_path / "c.json"
    path.write_text('{"format": "effnet-coefficients/1", "alpha": 1.2, "beta": 1.1, "gamma": 1.15, "base": "b0", '
                    f'"resolution": 16, "provenance": {provenance}}}')  # fmt: skip
    out = tmp_path / "study"
    assert cli(["scaling", "--out", str(out), "--coefficients", str(path)], fast_malloc=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "provenance" in err[0], err
    assert not out.exists()


def test_scaling_with_literal_coefficients_trains_the_presets_own_base_and_side():
    """`--coefficients A,B,G` has no base of its own: the budget is the preset's (digits: b0 at 16 px), not b0
    at its native 224 px."""
    import argparse

    from effnet_jax.cli import scaling

    p = argparse.ArgumentParser()
    scaling.add_arguments(p)
    s = scaling.settings_from_args(p.parse_args(["--coefficients", "1.3,1.05,1.1"]))
    assert (s.preset, s.overrides, s.coefficients) == ("digits", (), (1.3, 1.05, 1.1))


def test_a_latency_constraint_that_leaves_nothing_leaves_no_claim(tmp_path, monkeypatch, capsys):
    """The refusal says to widen --tolerance; doing so in the same --out must not be 'another search'."""
    import importlib

    search_mod = importlib.import_module("effnet_jax.search.search")

    def fake_latencies(plan, out):
        for c in plan.realised:
            c.latency_ms = 1.0  # every network as fast as the base: ratio 1, never 2 +- 0.1
        (tmp_path / "search" / "latency.json").write_text("{}")

    monkeypatch.setattr(search_mod, "measure_latencies", fake_latencies)
    argv = ["search", "--out", str(tmp_path / "search"), "--constraint", "latency", "--alpha", "1,1.2"]
    argv += ["--beta", "1,1.1", "--gamma", "1,1.15"]
    assert cli(argv, fast_malloc=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "leaves no candidate" in err[0], err
    assert not (tmp_path / "search").exists()


def test_summary_usage_errors_are_one_line_exit_2_and_a_file_named_like_numbers_is_a_file(
    tmp_path, monkeypatch, capsys
):
    assert cli(["summary", "--coefficients", "1.2,1.1,1.15", "b0"]) == 2
    assert "--coefficients needs --phi" in capsys.readouterr().err
    assert cli(["summary"]) == 2
    assert "give exactly one of VARIANT or --phi" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "1.3,1.1,1").write_text(Coefficients(alpha=1.4, beta=1.0, gamma=1.0).to_json())
    assert effnet_spec.parse_coefficients("1.3,1.1,1").alpha == 1.4  # an existing file wins over the numbers
    assert effnet_spec.parse_coefficients("1.3,1.1,1.05").alpha == 1.3
