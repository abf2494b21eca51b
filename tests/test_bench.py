"""`bench.report.write_results`: the one writer of benchmark JSON and markdown."""

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
