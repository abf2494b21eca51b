"""The Performance table in both READMEs is what `benchmarks/table.py` generates from the committed results."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _table_module():
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "benchmarks" / "table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("readme", ["README.md", "benchmarks/README.md"])
def test_performance_table_is_generated_from_committed_results(readme):
    table = _table_module()
    text = (ROOT / readme).read_text()
    assert text.count(table.BEGIN) == text.count(table.END) == 1, f"{readme} needs one perf-table block"
    assert table.rewrite(text, table.table()) == text, f"{readme}'s table is stale: run python benchmarks/table.py"


def test_the_table_has_every_case_and_labels_where_each_row_was_measured():
    rows = _table_module().table().splitlines()[2:]
    for case in ("train step, batch 32", "inference, batch 32"):
        mine = [r for r in rows if case in r and r.startswith("| CPU")]
        assert any("**each on its best**" in r for r in mine) and any("each on its default" in r for r in mine)
    cells = [r.split("|")[-2].strip() for r in rows]
    assert all(c == "the rows above" or c[:7].isalnum() for c in cells), cells  # a commit, or derived rows


def test_rewrite_refuses_a_readme_without_markers():
    with pytest.raises(ValueError, match="perf-table"):
        _table_module().rewrite("# no table here\n", "| x |")
