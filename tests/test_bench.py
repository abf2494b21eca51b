"""`effnet bench`'s own logic without timing anything: the writer of its JSON and markdown, its cases, its ratios."""

from __future__ import annotations

import json

from effnet_jax.bench.report import write_results


def test_write_results_writes_both_files_and_replaces_old_ones(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "x.md").write_text("stale")
    base = write_results(str(out), "x", {"rows": [1, 2]}, "| a |\n|---|")
    assert base == str(out / "x")
    assert json.loads((out / "x.json").read_text()) == {"rows": [1, 2]}
    assert (out / "x.md").read_text() == "| a |\n|---|\n"
    assert sorted(p.name for p in out.iterdir()) == ["x.json", "x.md"]  # no temp files left behind
    assert "| a |" in capsys.readouterr().out


def test_variants_replace_the_default_cases_v2_included():
    """`--variants`: one inference case at the eval side and one train step at the train side (V2's smaller one)."""
    from argparse import Namespace

    from effnet_jax.bench.suites import INFERENCE_CASES, TRAIN_CASES, cases

    args = Namespace(variants="b0,v2_s", resolution=None, batch=None, quick=False)
    assert cases(args) == ([("b0", 224, 32), ("v2_s", 384, 32)], [("b0", 224, 32), ("v2_s", 300, 32)])
    args = Namespace(variants="v2_b0", resolution=128, batch=8, quick=True)
    assert cases(args) == ([("v2_b0", 128, 8)], [("v2_b0", 128, 8)])
    assert cases(Namespace(variants="", resolution=None, batch=None, quick=False)) == (INFERENCE_CASES, TRAIN_CASES)


def test_ratios_cover_every_case_and_the_report_names_the_allocator():
    from effnet_jax.bench.report import markdown, ratios

    def row(suite, variant, contender, ips):
        timing = dict(median_s=8 / ips, p90_s=8 / ips, gflops=1.0, peak_fraction=0.1, compile_s=None, memory_mb=None)
        case = dict(suite=suite, variant=variant, resolution=128, batch=8)
        return dict(**case, contender=contender, images_per_s=ips, **timing)

    rows = [
        row("train", "v2_s", "jax", 6.0),
        row("train", "v2_s", "torch_nchw", 4.0),
        row("train", "v2_s", "torch_cl", 5.0),
        row("inference", "v2_b0", "jax", 20.0),
        row("inference", "v2_b0", "torch_compile", 25.0),
    ]
    assert ratios(rows) == [
        "train v2_s@128 batch 8: effnet_jax = 1.20x torch eager (torch_cl)",
        "inference v2_b0@128 batch 8: effnet_jax = 0.80x torch.compile",
    ]
    env = dict(date="d", git_sha="g", cpu="c", cpu_count=2, load_avg_start=(0.0,), load_avg_end=(0.0,), python="3",
               jax="j", jax_backend="cpu", flax="f", torch="t", torch_device="cpu", torch_threads=2,
               host_memory_retained=False, allocator="tcmalloc", xla_flags="")  # fmt: skip
    assert "Host memory: tcmalloc preloaded, for both frameworks" in markdown({"env": env, "rows": rows})
    env.update(allocator="glibc/platform malloc", xla_flags="--xla_foo")
    md = markdown({"env": env, "rows": rows})
    assert "Host memory: glibc defaults" in md and "XLA_FLAGS: `--xla_foo`" in md
