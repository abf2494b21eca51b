"""The house rules of the layout (docs/design.md, "Layout"): no import cycles, and a spec that is stdlib only.

Imports are read from the source (every `import`, module-level or inside a function, except under
`TYPE_CHECKING`), so a cycle that only a rarely taken code path would close is caught too. A name a lazy package
loads on first use (`from ..model import EfficientNet`, `effnet_jax._lazy`) counts as an import of the submodule
that defines it, as it does at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from effnet_jax._lazy import exports

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("effnet_spec", "effnet_torch", "effnet_jax")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _lazy_exports(mods: dict[str, Path]) -> dict[str, dict[str, str]]:
    """Lazy package -> {public name: the module that defines it}, through packages that re-export lazily."""
    lazy = {n: exports(str(p)) for n, p in mods.items() if p.name == "__init__.py" and "lazy_exports(" in p.read_text()}

    def home(package: str, attr: str) -> str:
        sub = f"{package}.{lazy[package][attr]}"
        return home(sub, attr) if attr in lazy.get(sub, {}) else sub

    return {pkg: {attr: home(pkg, attr) for attr in names} for pkg, names in lazy.items()}


def _imports(name: str, path: Path, known: set[str], lazy: dict[str, dict[str, str]]) -> set[str]:
    """The project modules `name` imports (a `from pkg import sub` counts as importing `pkg.sub`, and a name a lazy
    package loads on first use as importing its module too)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name.split(".")[0] in PACKAGES)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] not in PACKAGES:
                    continue
                subs = {f"{target}.{a.name}" for a in child.names} & known
                out.update(subs)
                if len(subs) < len(child.names):
                    out.add(target)
                out.update(lazy[target][a.name] for a in child.names if a.name in lazy.get(target, {}))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known, lazy = set(mods), _lazy_exports(mods)
    return {name: _imports(name, path, known, lazy) & known for name, path in mods.items()}


def test_no_import_cycles():
    graph = _graph()
    assert len(graph) > 40, "the scan must see the whole project"
    want = {"effnet_jax.model", "effnet_jax.model.efficientnet", "effnet_spec.contract"}
    assert graph["effnet_jax.weights.state"] >= want, "scan is blind (to lazy exports?)"
    cycles = _cycles(graph)
    assert cycles == [], f"import cycles: {cycles}"


def test_lazy_exports_are_followed_through_every_lazy_package():
    lazy = _lazy_exports(_modules())
    assert {"effnet_jax", "effnet_jax.model", "effnet_jax.train"} <= set(lazy)
    assert lazy["effnet_jax"]["EfficientNet"] == "effnet_jax.model.efficientnet"  # via effnet_jax.model
    assert lazy["effnet_jax"]["key_map"] == "effnet_jax.weights"  # an eager package: its own imports are edges
    assert lazy["effnet_jax.train"]["TrainConfig"] == "effnet_jax.train.config"


def test_cycle_detector_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_spec_imports_only_the_standard_library():
    mods = {n: p for n, p in _modules().items() if n.split(".")[0] == "effnet_spec"}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            bad = [t for t in tops if t not in sys.stdlib_module_names and t != "effnet_spec"]
            assert not bad, f"{name} imports {bad}"
    # And at run time: importing every spec module loads nothing outside the standard library.
    code = (
        "import sys, importlib; before = set(sys.modules); "
        f"[importlib.import_module(m) for m in {sorted(mods)!r}]; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'effnet_spec'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_packages_import_only_the_ones_below_them():
    # effnet_spec <- effnet_torch <- effnet_jax (effnet_jax reaches torch only lazily, inside functions).
    rank = {"effnet_spec": 0, "effnet_torch": 1, "effnet_jax": 2}
    graph = _graph()
    upward = [(a, b) for a, deps in graph.items() for b in deps if rank[b.split(".")[0]] > rank[a.split(".")[0]]]
    assert upward == []


def test_model_weights_and_train_import_downward():
    # model <- weights <- train: the calls that go up are wired by the package root (effnet_jax._hooks).
    rank = {"model": 0, "weights": 1, "train": 2}
    layer = {m: rank[m.split(".")[1]] for m in _modules() if m.startswith("effnet_jax.") and m.split(".")[1] in rank}
    upward = [(a, b) for a, deps in _graph().items() if a in layer for b in deps if layer.get(b, -1) > layer[a]]
    assert upward == [], f"imports that go up (importer, imported): {upward}"


def test_layout_tables_name_every_sub_package():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    subs = sorted(p.name for p in (ROOT / "effnet_jax").iterdir() if (p / "__init__.py").exists())
    assert {"model", "ops", "train", "weights", "cli"} <= set(subs)
    for sub in subs:
        assert f"`{sub}/`" in design, f"docs/design.md's layout table lacks effnet_jax/{sub}/"
        assert f"`effnet_jax/{sub}/`" in readme or f"`{sub}/`" in readme, f"README's layout table lacks {sub}/"
    spec_modules = sorted(p.stem for p in (ROOT / "effnet_spec").glob("*.py") if p.stem != "__init__")
    for mod in ("contract", "forward", "classes", "atomic"):
        assert mod in spec_modules and f"`{mod}`" in design, f"docs/design.md's layout table lacks effnet_spec.{mod}"


def test_module_tree_is_spelled_only_in_the_contract():
    # A full module path ("blocks.3.se.reduce", f"blocks.{i}...", "stem.conv.weight") in product code means a
    # second copy of the tree. Part names alone ("stem.conv", "se.reduce") are the contract's vocabulary: weight
    # sources map them to their libraries' names.
    import re

    path_literal = re.compile(r"""f?["']blocks\.|["'](stem|head)\.(conv|bn)\.|["']classifier\.(weight|bias)""")
    allowed = {ROOT / "effnet_spec" / "contract.py"}
    hits = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path in allowed or path.parent.name == "sources":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if path_literal.search(code) and '"""' not in code:
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []
    assert path_literal.search('name = f"blocks.{b.index}.se.reduce"'), "the pattern must catch a path"
