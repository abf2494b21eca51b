"""`effnet search`'s report: the front, the choice and its verdict, the tables and the plots, on hand-made records."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from effnet_jax.search import report

PNG = b"\x89PNG\r\n\x1a\n"


def _row(key, top1s, macs, *, requested=((1.2, 1.1, 1.15),), refs=(), in_space=True, latency=2.0, res=18):
    return {
        "key": key,
        "requested": [list(p) for p in requested],
        "refs": list(refs),
        "in_space": in_space,
        "depth": 1.25,
        "width": 1.09,
        "resolution": res,
        "blocks": 20,
        "params": 3_900_000,
        "macs": macs,
        "formula": 1.92,
        "latency_ms": latency,
        "seeds": [
            {"seed": i, "top1": t, "top5": 0.999, "img_per_s": 400.0 + i, "wall_s": 60.0, "latency_ms": latency}
            for i, t in enumerate(top1s)
        ],
    }


def _rows(paper=(0.950, 0.952, 0.954), best=(0.970, 0.972, 0.974)):
    """base < cheap < paper < best < dear on MACs; `dear` is more accurate but outside the constraint."""
    return [
        _row("base", (0.930, 0.931, 0.932), 10e6, requested=[(1.0, 1.0, 1.0)], refs=["base"], in_space=False),
        _row("cheap", (0.940, 0.941, 0.942), 15e6, requested=[(1.1, 1.2, 1.05)]),
        _row("paper", paper, 20e6, requested=[(1.2, 1.1, 1.15), (1.2, 1.1, 1.1)], refs=["paper"]),
        _row("best", best, 25e6, requested=[(1.4, 1.0, 1.1), (1.3, 1.05, 1.1)]),
        _row("worse", (0.945, 0.946, 0.947), 30e6, requested=[(1.0, 1.3, 1.05)]),
        _row("dear", (0.990, 0.990, 0.990), 40e6, requested=[(2.0, 1.2, 1.2)], in_space=False),
    ]


def test_summarise_reduces_seeds_and_orders_by_macs():
    rows = report.summarise(list(reversed(_rows())))
    assert [r["key"] for r in rows] == ["base", "cheap", "paper", "best", "worse", "dear"]
    paper = rows[2]
    assert paper["top1_mean"] == pytest.approx(0.952)
    assert paper["top1_spread"] == pytest.approx(statistics.stdev([0.950, 0.952, 0.954]))
    assert (paper["top1_min"], paper["top1_max"], paper["n_seeds"]) == (0.950, 0.954, 3)
    assert paper["img_per_s"] == 401.0 and paper["wall_s"] == 180.0 and paper["latency_ms"] == 2.0
    one = report.summarise([_row("one", (0.9,), 1e6, latency=None)])[0]
    assert one["top1_spread"] == 0.0 and one["n_seeds"] == 1 and one["latency_ms"] is None
    assert report.summarise(rows) == rows  # idempotent


def test_pareto_front_on_a_hand_made_set():
    rows = _rows()
    assert report.pareto(rows) == ["base", "cheap", "paper", "best", "dear"]  # `worse` is dominated by `best`
    # a twin of `paper` (same cost, same accuracy) is on the front too; one at the same cost but lower accuracy is not
    rows += [
        _row("paper-twin", (0.950, 0.952, 0.954), 20e6),
        _row("paper-low", (0.90, 0.90), 20e6),
        _row("same-acc-dearer", (0.950, 0.952, 0.954), 21e6),
    ]
    assert report.pareto(rows) == ["base", "cheap", "paper", "paper-twin", "best", "dear"]
    assert report.pareto(list(reversed(rows))) == report.pareto(rows)
    # on latency, rows without one are left out
    rows[0]["seeds"] = [dict(s, latency_ms=None) for s in rows[0]["seeds"]]
    rows[0]["latency_ms"] = None
    assert "base" not in report.pareto(rows, cost="latency_ms")


def test_choose_accuracy_picks_the_most_accurate_network_inside_the_constraint():
    choice = report.choose(_rows())
    assert choice["key"] == "best"  # `dear` is more accurate but outside
    # two points realise `best`: the one whose alpha*beta^2*gamma^2 is nearest 2 is named
    f = {p: p[0] * p[1] ** 2 * p[2] ** 2 for p in [(1.4, 1.0, 1.1), (1.3, 1.05, 1.1)]}
    expected = min(f, key=lambda p: abs(f[p] - 2.0))
    assert (choice["alpha"], choice["beta"], choice["gamma"]) == expected
    assert choice["lead"] == pytest.approx(0.972 - 0.952)
    assert choice["spread"] == pytest.approx(0.002) and choice["significant"] is True
    assert "larger than the seeds' spread" in choice["verdict"] and "not distinguishable" not in choice["verdict"]
    assert "2.00 points" in choice["verdict"] and "(1.20, 1.10, 1.15)" in choice["verdict"]


@pytest.mark.parametrize("w", [-0.07, -0.5])
def test_choose_mnas_maximises_accuracy_times_cost_ratio(w):
    rows = _rows()
    target = 20e6  # the paper row's MACs is the default target
    means = {r["key"]: statistics.fmean(s["top1"] for s in r["seeds"]) for r in rows if r["in_space"]}
    score = {k: means[k] * (next(r["macs"] for r in rows if r["key"] == k) / target) ** w for k in means}
    choice = report.choose(rows, objective="mnas", w=w)
    assert choice["key"] == max(score, key=score.get)
    assert choice["target"] == target and "paper row" in choice["target_from"]
    assert choice["score"] == pytest.approx(score[choice["key"]])
    assert "MnasNet" in choice["rule"]
    if w == -0.5:  # a strong cost penalty makes the cheap, less accurate network win
        assert choice["key"] == "cheap" and choice["lead"] < 0 and "trails" in choice["verdict"]
    # an explicit latency target
    lat = report.choose(rows, objective="mnas", cost="latency_ms", target=4.0)
    assert lat["target"] == 4.0 and lat["target_from"] == "given"


def test_verdict_says_not_distinguishable_when_the_lead_is_within_the_spread():
    rows = _rows(paper=(0.94, 0.96, 0.98), best=(0.95, 0.965, 0.98))
    choice = report.choose(rows)
    assert choice["key"] == "best" and 0 < choice["lead"] < choice["spread"]
    assert choice["significant"] is False
    assert "less than the seeds' spread" in choice["verdict"] and "not distinguishable" in choice["verdict"]


def test_verdict_with_one_seed_says_the_spread_is_unknown():
    rows = _rows(paper=(0.95,), best=(0.97,))
    choice = report.choose(rows)
    assert choice["key"] == "best" and choice["spread"] is None and choice["significant"] is False
    assert "spread is unknown" in choice["verdict"]


def test_verdict_on_a_tie_with_the_paper_point_says_so_not_a_lead():
    rows = [r for r in _rows(paper=(0.97,), best=(0.96,)) if r["key"] != "cheap"]
    rows.append(_row("cheap", (0.97,), 15e6, requested=[(1.1, 1.2, 1.05)]))
    choice = report.choose(rows)
    assert choice["key"] == "cheap" and choice["lead"] == 0.0 and not choice["significant"]  # ties go to fewer MACs
    assert "ties the paper's" in choice["verdict"] and "fewer MACs" in choice["verdict"]
    assert "leads" not in choice["verdict"]


def test_verdict_when_the_paper_point_is_itself_the_best():
    rows = _rows(paper=(0.98, 0.981, 0.982))
    choice = report.choose(rows)
    assert choice["key"] == "paper" and choice["lead"] == 0.0 and not choice["significant"]
    assert (choice["alpha"], choice["beta"], choice["gamma"]) == report.PAPER
    assert "is itself the best" in choice["verdict"]


def test_choose_refuses_when_nothing_is_inside_the_constraint():
    rows = [dict(r, in_space=False) for r in _rows()]
    with pytest.raises(ValueError, match="no network inside the constraint"):
        report.choose(rows)
    with pytest.raises(ValueError, match="objective"):
        report.choose(_rows(), objective="flops")


def test_results_table_jsonl_and_comparable(tmp_path):
    rows = _rows()
    choice = report.choose(rows)
    settings = {"data": "digits", "base": "b0", "budget": {"steps": 200}, "objective": "accuracy"}
    report.write_results(tmp_path, rows, settings, choice)
    assert sorted(os.listdir(tmp_path)) == ["choice.json", "results.jsonl", "results.md"]
    md = (tmp_path / "results.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(rows)  # the header, then one line per network
    best = next(line for line in lines if "2 points: (1.40, 1.00, 1.10), (1.30, 1.05, 1.10)" in line)
    assert "chosen" in best and "pareto" in best
    assert "outside constraint" in next(line for line in lines if line.startswith("| (2.00, 1.20, 1.20)"))
    assert "97.20 ± 0.20" in best
    assert choice["verdict"] in md and choice["rule"] in md and '`{"steps": 200}`' in md

    read = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    flags = ("pareto", "pareto_latency", "chosen")
    assert [{k: v for k, v in r.items() if k not in flags} for r in read] == report.summarise(rows)  # round trip
    assert [r["key"] for r in read if r["chosen"]] == ["best"]
    assert [r["key"] for r in read if r["pareto"]] == report.pareto(rows)
    assert json.loads((tmp_path / "choice.json").read_text()) == {"settings": settings, "choice": choice}

    # a second run of the same search measures other timings: comparable rows still agree
    rerun = _rows()
    for r in rerun:
        r["latency_ms"] = 3.0
        r["seeds"] = [dict(s, img_per_s=999.0, wall_s=1.0, latency_ms=3.0) for s in r["seeds"]]
    report.write_results(tmp_path, rerun, settings, report.choose(rerun))
    again = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert again != read
    assert [report.comparable(r) for r in again] == [report.comparable(r) for r in read]
    for r in map(report.comparable, read):
        assert not set(report.TIMING_KEYS) & set(r)
        assert all(not set(report.TIMING_KEYS) & set(s) for s in r["seeds"])


def test_a_network_without_a_finished_seed_is_listed_but_not_ranked(tmp_path):
    rows = _rows() + [_row("failed", (), 22e6, requested=[(1.15, 1.1, 1.15)])]
    assert "failed" not in report.pareto(rows)
    assert report.choose(rows)["key"] == "best"
    report.write_results(tmp_path, rows, {}, None)
    md = (tmp_path / "results.md").read_text()
    assert "not trained" in next(line for line in md.splitlines() if line.startswith("| (1.15, 1.10, 1.15)"))
    assert "## Choice" not in md


def _png_ok(path):
    with open(path, "rb") as f:
        data = f.read()
    return data.startswith(PNG) and len(data) > 5000


def test_plots_are_written(tmp_path):
    rows = _rows()
    written = report.plot_search(tmp_path, rows, report.choose(rows))
    assert sorted(os.path.basename(p) for p in written) == ["accuracy_vs_latency.png", "accuracy_vs_macs.png"]
    assert all(_png_ok(p) for p in written)
    # no latency measured: the latency plot is skipped, without an error
    bare = tmp_path / "bare"
    bare.mkdir()
    for r in rows:
        r["latency_ms"] = None
        r["seeds"] = [dict(s, latency_ms=None) for s in r["seeds"]]
    assert [os.path.basename(p) for p in report.plot_search(bare, rows, None)] == ["accuracy_vs_macs.png"]
    assert os.listdir(bare) == ["accuracy_vs_macs.png"]


def test_a_failing_write_leaves_no_partial_file(tmp_path):
    rows = _rows()
    choice = report.choose(rows)
    as_file = tmp_path / "a-file"
    as_file.write_text("x")
    with pytest.raises(OSError):
        report.plot_search(as_file, rows, choice)
    with pytest.raises(OSError):
        report.write_results(as_file, rows, {}, choice)
    # the target name is taken by a directory: the rename fails, the temp file goes
    out = tmp_path / "out"
    (out / "accuracy_vs_macs.png").mkdir(parents=True)
    with pytest.raises(OSError):
        report.plot_search(out, rows, choice)
    assert os.listdir(out) == ["accuracy_vs_macs.png"]
    assert os.listdir(out / "accuracy_vs_macs.png") == []
    if os.geteuid() != 0:  # root writes through a read-only mode
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(OSError):
                report.write_results(ro, rows, {}, choice)
            assert os.listdir(ro) == []
        finally:
            ro.chmod(0o755)


def _study_row(strategy, phi, macs, top1s, key=None):
    r = _row(key or f"{strategy}-{phi}", top1s, macs)
    r.update(strategy=strategy, phi=phi)
    return r


def _study():
    """One shared base; width with diminishing gains; depth whose second step is within the spread; compound above
    both at matched MACs, by more than the spread against width."""
    s = [(0.900, 0.902, 0.904)]
    rows = [_study_row("compound (found)", 0, 10e6, s[0], key="base")]
    for phi, macs, found, paper, width, depth in [
        (1, 20e6, 0.950, 0.945, 0.930, 0.920),
        (2, 40e6, 0.970, 0.965, 0.945, 0.9215),
    ]:
        rows.append(_study_row("compound (found)", phi, macs, (found - 0.002, found, found + 0.002)))
        rows.append(_study_row("compound (paper)", phi, macs * 1.01, (paper - 0.002, paper, paper + 0.002)))
        rows.append(_study_row("width", phi, macs * 0.98, (width - 0.002, width, width + 0.002)))
        rows.append(_study_row("depth", phi, macs * 1.02, (depth - 0.002, depth, depth + 0.002)))
    return rows


def test_study_tables_and_reading(tmp_path):
    rows = _study()
    report.write_study(tmp_path, rows, {"phi_max": 2})
    md = (tmp_path / "study.md").read_text()
    for name in ("compound (found)", "compound (paper)", "width", "depth"):
        assert f"## {name}\n" in md
    # every strategy's table starts at the shared base (phi 0)
    assert md.count("| 0 | ") == 4
    reading = report.study_reading(rows)
    width = next(line for line in reading if line.startswith("- width only"))
    assert "φ 0→1: +2.80" in width and "φ 1→2: +1.50" in width and "diminishing returns" in width
    assert "beyond the seeds' spread" in width
    depth = next(line for line in reading if line.startswith("- depth only"))
    assert "+0.15 (within the seeds' spread)" in depth and "not every gain is beyond" in depth
    vs_width = next(line for line in reading if line.startswith("- compound (found) vs width"))
    assert "higher at 2 of 2, beyond the seeds' spread at 2" in vs_width
    assert all(line in md for line in reading)
    read = [json.loads(line) for line in (tmp_path / "study.jsonl").read_text().splitlines()]
    assert len(read) == len(rows) and read[0]["key"] == "base"


def test_study_reading_interpolates_at_matched_macs():
    rows = _study()
    vs = next(line for line in report.study_reading(rows) if line.startswith("- compound (found) vs width"))
    # the width curve at 20e6 MACs: between (19.6e6, 0.930) and (39.2e6, 0.945), linear in log MACs
    import math

    t = math.log(20e6 / 19.6e6) / math.log(39.2e6 / 19.6e6)
    expected = 0.950 - (0.930 + t * 0.015)
    assert f"φ 1: {100 * expected:+.2f}" in vs
    # compound (found) at phi 2 (40e6) lies 2% beyond width's last point (39.2e6): compared with that point, said so
    assert f"φ 2: {100 * (0.970 - 0.945):+.2f} [its φ 2 point, -2.0% MACs]" in vs
    # a single-dimension curve that stops far short of the compound points is not compared at all
    short = [r for r in rows if not (r["strategy"] == "width" and r["phi"] == 2)]
    vs = next(line for line in report.study_reading(short) if line.startswith("- compound (found) vs width"))
    assert "higher at 1 of 1" in vs and "φ 2" not in vs


def test_plot_study(tmp_path):
    path = report.plot_study(tmp_path, _study())
    assert os.path.basename(path) == "scaling_study.png" and _png_ok(path)


def test_the_report_imports_neither_jax_nor_matplotlib_until_it_plots():
    code = "import sys, effnet_jax.search.report; print(sorted(m for m in ('jax', 'matplotlib') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
