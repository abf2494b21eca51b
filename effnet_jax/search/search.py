"""Step 1 of the paper's method on the user's data: train every realised candidate of the grid on the same proxy
budget, and choose alpha, beta, gamma (`effnet search`).

The order a search runs in: the plan (config, data, grid, realised networks, constraint; every refusal happens here,
before anything is written) -> the search directory claimed (`search.json`; a rerun with the same settings resumes,
another search is refused) -> latencies when the constraint needs them -> one `effnet train` run per network and seed
(`runner`) -> the table, plots, choice and coefficients file (`report`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass

from effnet_spec import VARIANTS, Coefficients
from effnet_spec.atomic import write_atomic

from . import space
from .space import Candidate, Proxy

__all__ = ["SearchSettings", "Plan", "make_plan", "search", "claim_dir", "data_identity", "base_config"]

FORMAT = "effnet-search/1"
# Fields a search sets per candidate; a proxy budget may not set them.
_OWNED = ("phi", "coefficients", "workdir", "resume", "init", "progress")
# Realising a grid point resolves a spec (~0.1 ms): 100k points take seconds, a million-point grid a minute or more.
MAX_GRID = 100_000


@dataclass(frozen=True)
class SearchSettings:
    """Everything that decides a search's table; written to `search.json`, and a rerun must match it."""

    preset: str = "digits"  # the proxy budget: an `effnet train` preset ...
    overrides: tuple[str, ...] = ()  # ... with `--set KEY=VALUE` items (data, variant = the base, resolution, steps)
    alphas: tuple[float, ...] = space.parse_range("1.0:1.4:0.05", "alpha")
    betas: tuple[float, ...] = space.parse_range("1.0:1.3:0.05", "beta")
    gammas: tuple[float, ...] = space.parse_range("1.0:1.3:0.05", "gamma")
    constraint: str = "formula"  # space.CONSTRAINTS
    target: float = 2.0  # cost ratio to the base a candidate should have
    tolerance: float = 0.1  # ... within +- this
    objective: str = "accuracy"  # "accuracy", or "mnas": accuracy * (cost / target)^mnas_w
    mnas_w: float = -0.07
    repeats: int = 1  # seeds per candidate: seed, seed + 1, ...
    latency_batch: int = 1  # images per call when inference latency is measured


@dataclass
class Plan:
    settings: SearchSettings
    cfg: object  # the base TrainConfig (the proxy budget)
    proxy: Proxy
    candidates: list[Candidate]  # kept: inside the constraint, plus the references
    realised: list[Candidate]  # every network the grid builds
    data: dict  # what the data is (`data_identity`)


def base_config(preset: str, overrides):
    """The proxy budget as a TrainConfig, with the fields a search owns refused."""
    from ..train.config import check_runnable, from_preset

    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in _OWNED:
            raise ValueError(f"--set {item}: the search sets {key} itself for every candidate")
    cfg = from_preset(preset, list(overrides))
    check_runnable(cfg)
    return cfg


def make_plan(settings: SearchSettings) -> Plan:
    """Check every input and build the candidate list; writes nothing.

    Raises:
        ValueError: one line: a bad setting, budget or base, or a constraint that leaves no candidate.
    """
    s = settings = dataclasses.replace(
        settings, **{k: tuple(sorted(set(getattr(settings, k)))) for k in ("alphas", "betas", "gammas")}
    )  # the same grid however it was spelled
    if s.constraint not in space.CONSTRAINTS:
        raise ValueError(f"--constraint {s.constraint!r}: expected one of {', '.join(space.CONSTRAINTS)}")
    for name in ("target", "tolerance", "mnas_w"):  # inf or nan would train every run, then fail writing JSON
        if not math.isfinite(getattr(s, name)):
            raise ValueError(f"--{name.replace('_', '-')} {getattr(s, name)}: must be a finite number")
    if not s.tolerance > 0:
        raise ValueError(f"--tolerance {s.tolerance:g}: must be > 0 (the cost ratio's allowed distance from target)")
    if not s.target > 0:
        raise ValueError(f"--target {s.target:g}: must be > 0 (a cost ratio to the base; the paper's is 2)")
    if s.objective not in ("accuracy", "mnas"):
        raise ValueError(f"--objective {s.objective!r}: expected accuracy or mnas")
    if not 1 <= s.repeats <= 100:
        raise ValueError(f"--repeats {s.repeats}: expected 1..100 seeds per candidate")
    if not 1 <= s.latency_batch <= 4096:
        raise ValueError(f"--latency-batch {s.latency_batch}: expected 1..4096")
    for name in ("alphas", "betas", "gammas"):
        bad = [v for v in getattr(s, name) if not v >= 1.0]
        if bad or not getattr(s, name):
            raise ValueError(f"--{name[:-1]}: every coefficient must be >= 1 (got {bad[0] if bad else 'none'})")
    size = len(s.alphas) * len(s.betas) * len(s.gammas)
    if size > MAX_GRID:
        raise ValueError(f"the grid has {size:,} points (alpha x beta x gamma); at most {MAX_GRID:,}: use coarser "
                         "steps")  # fmt: skip
    cfg = base_config(s.preset, s.overrides)
    if cfg.variant not in VARIANTS:
        raise ValueError(f"the base variant {cfg.variant!r} is not a named variant")
    data = data_identity(cfg)
    if cfg.data != "digits" and not cfg.val_data:
        raise ValueError(f"the search compares val top-1, and data={cfg.data} has no validation split: set "
                         "--set val_data=FOLDER")  # fmt: skip
    proxy = Proxy(base=cfg.variant, resolution=cfg.resolution or VARIANTS[cfg.variant].resolution,
                  resolution_step=0, weight_source=cfg.weight_source, stages=cfg.stages,
                  num_classes=data["num_classes"])  # fmt: skip
    realised = space.realise(space.grid(s.alphas, s.betas, s.gammas), proxy)
    kept = realised
    if s.constraint != "latency":  # latency is measured after the directory is claimed (it takes a while)
        kept = space.apply_constraint(realised, s.constraint, s.target, s.tolerance)
        if not any(c.in_space for c in kept):
            closest = min(realised, key=lambda c: abs(c.cost - s.target))
            raise ValueError(
                f"the {s.constraint} constraint {s.target:g} +- {s.tolerance:g} leaves no candidate in the grid; the "
                f"closest is {closest.point} at {closest.cost:.3f}: widen --tolerance or the grid"
            )
    return Plan(s, cfg, proxy, kept, realised, data)


def data_identity(cfg) -> dict:
    """What the search's data is: its name, class count and a digest of its files (relative paths and sizes), so a
    rerun on changed data is refused rather than mixed into the same table."""
    from ..train.data import make_source

    source = make_source(cfg.data, "train", size=16, num_classes=cfg.num_classes)
    names = list(getattr(source, "class_names", [])) or [str(i) for i in range(cfg.num_classes)]
    ident = {"data": cfg.data, "val_data": cfg.val_data, "num_classes": cfg.num_classes or len(names),
             "train_images": len(source)}  # fmt: skip
    for key in ("data", "val_data"):
        path = getattr(cfg, key)
        if path and os.path.isdir(path):
            h = hashlib.sha256()
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    h.update(f"{os.path.relpath(full, path)}\0{os.path.getsize(full)}\n".encode())
            ident[f"{key}_digest"] = h.hexdigest()[:16]
    return ident


def _identity(plan: Plan) -> dict:
    return {"format": FORMAT, "settings": json.loads(json.dumps(dataclasses.asdict(plan.settings))),
            "data": plan.data}  # fmt: skip


def claim_dir(out: str, identity: dict, *, kind: str = "search", file: str = "search.json") -> None:
    """Make `out` this search's directory, or prove it already is: another search's (or any other non-empty
    folder) is refused with the first setting that differs.

    Raises:
        ValueError: one line.
    """
    path = os.path.join(out, file)
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is unreadable ({e}); it is not this {kind}'s directory") from None
        if saved != identity:
            raise ValueError(f"{out} belongs to another {kind}: {_first_difference(saved, identity)}; rerun with the "
                             f"same settings to resume it, or give another --out")  # fmt: skip
        return
    if os.path.isfile(out):
        raise ValueError(f"--out {out} is a file, not a directory")
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"--out {out} is a non-empty folder without {file}: not a {kind} directory; give another")
    try:
        os.makedirs(out, exist_ok=True)
        write_atomic(path, json.dumps(identity, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise ValueError(f"--out {out} is not writable: {e.strerror or e}") from None


def _first_difference(saved, now, where: str = "") -> str:
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now)):
            if saved.get(key) != now.get(key):
                return _first_difference(saved.get(key), now.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'it'} was {json.dumps(saved)[:80]}, now {json.dumps(now)[:80]}"


def candidate_overrides(cfg, base_overrides, point, seed: int) -> tuple[str, ...]:
    """A candidate's run: the proxy budget, the base scaled by phi = 1 with its point, its seed. Every candidate
    gets the base's dropout (compound scaling would raise it with phi), so the recipe is the same for all."""
    a, b, g = point
    extra = ["phi=1", f"coefficients={a:g},{b:g},{g:g}", f"seed={seed}"]
    if cfg.dropout < 0:
        extra.append(f"dropout={VARIANTS[cfg.variant].dropout:g}")
    return (*base_overrides, *extra)


def measure_latencies(plan: Plan, out: str) -> None:
    """Each network's inference latency on this device (batch `latency_batch`), cached in `latency.json` so a
    resumed search does not measure again."""
    from effnet_spec import resolve

    from ..train.modeling import model_options
    from .measure import measure_latency

    # The parent measures in its own process: on a GPU, without preallocation it keeps no memory from the children.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    path = os.path.join(out, "latency.json")
    cache = {}
    if os.path.exists(path):
        with open(path) as f:
            try:
                cache = json.load(f)
            except ValueError as e:
                raise ValueError(f"{path} is damaged ({e}); delete it to measure the latencies again") from None
    for c in plan.realised:
        if c.key not in cache:
            v = plan.proxy.coefficients(c.point).variant(1.0)
            spec = resolve(v, num_classes=plan.proxy.num_classes, weight_source=plan.proxy.weight_source,
                           stages=_stages(plan.proxy))  # fmt: skip
            cache[c.key] = measure_latency(spec, v.resolution, batch=plan.settings.latency_batch,
                                           options=model_options(plan.cfg))["latency_ms"]  # fmt: skip
            write_atomic(path, json.dumps(cache, indent=2, sort_keys=True) + "\n")
        c.latency_ms = cache[c.key]


def _stages(proxy: Proxy):
    from effnet_spec import stages_for

    table = stages_for(proxy.base)  # the base variant's own table (V2 bases scale theirs)
    return table[: proxy.stages] if proxy.stages else table


def search(settings: SearchSettings, out: str, *, parallel: int | None = None, progress: bool = True) -> dict:
    """Run (or resume) the search in `out`; returns the choice (see `report.choose`).

    Raises:
        ValueError: bad settings (before anything is written) or a directory of another search.
    """
    plan = make_plan(settings)
    claim_dir(out, _identity(plan))
    from . import report
    from .runner import Job, default_parallel, run_jobs

    s, cfg = plan.settings, plan.cfg
    if s.constraint == "latency":
        measure_latencies(plan, out)
        plan.candidates = space.apply_constraint(plan.realised, "latency", s.target, s.tolerance)
        if not any(c.in_space for c in plan.candidates):
            if not os.path.exists(os.path.join(out, "runs")):  # nothing trained: no claim is left behind, so the
                _unclaim(out)  # retry this line suggests (a wider --tolerance) is not refused as another search
            lo, hi = min(c.cost for c in plan.realised), max(c.cost for c in plan.realised)
            raise ValueError(f"the latency constraint {s.target:g} +- {s.tolerance:g} leaves no candidate; measured "
                             f"ratios span {lo:.2f}..{hi:.2f}: widen --tolerance or the grid")  # fmt: skip
    seeds = [cfg.seed + r for r in range(s.repeats)]
    jobs = [Job(key=f"{c.key}-s{seed}", preset=s.preset, overrides=candidate_overrides(cfg, s.overrides, c.point, seed),
                label=_label(c)) for c in plan.candidates for seed in seeds]  # fmt: skip
    _note(f"{len(plan.candidates)} networks ({sum(c.in_space for c in plan.candidates)} inside the {s.constraint} "
          f"constraint, from {len(plan.realised)} realised by {len(space.grid(s.alphas, s.betas, s.gammas))} grid "
          f"points) x {len(seeds)} seed(s) = {len(jobs)} runs in {out}")  # fmt: skip
    results = run_jobs(jobs, os.path.join(out, "runs"), parallel=parallel or default_parallel(), progress=progress,
                       latency_batch=s.latency_batch)  # fmt: skip
    rows = [_row(c, s, {seed: results[f"{c.key}-s{seed}"] for seed in seeds}) for c in plan.candidates]
    rows = report.summarise(rows)
    cost = "latency_ms" if s.constraint == "latency" else "macs"
    # The chosen network's (alpha, beta, gamma): among its points, the one whose formula is nearest this search's
    # target (the default 2 would name a point outside a formula constraint of another target).
    # MnasNet's target is --target times the base's cost (the constraint's own target), not the paper row's
    base_cost = next(r[cost] for r in rows if "base" in r["refs"])
    choice = report.choose(rows, objective=s.objective, cost=cost, w=s.mnas_w, formula_target=s.target,
                           target=s.target * base_cost if base_cost else None)  # fmt: skip
    settings_out = {**_identity(plan)["settings"], "data": plan.data, "base": plan.proxy.base,
                    "base_resolution": plan.proxy.resolution}  # fmt: skip
    report.write_results(out, rows, settings_out, choice)
    report.plot_search(out, rows, choice)
    provenance = {"search": settings_out, "search_dir": os.path.abspath(out), "rule": choice["rule"],
                  "verdict": choice["verdict"]}  # fmt: skip
    coeffs = Coefficients(alpha=choice["alpha"], beta=choice["beta"], gamma=choice["gamma"], base=plan.proxy.base,
                          resolution=plan.proxy.resolution, provenance=provenance)  # fmt: skip
    write_atomic(os.path.join(out, "coefficients.json"), coeffs.to_json())
    _note(f"chosen alpha={choice['alpha']:g}, beta={choice['beta']:g}, gamma={choice['gamma']:g} ({choice['rule']})")
    _note(choice["verdict"])
    _note(f"table {os.path.join(out, 'results.md')}; coefficients {os.path.join(out, 'coefficients.json')} "
          f"(effnet train --set phi=1 --set coefficients=...)")  # fmt: skip
    return choice


def _unclaim(out: str) -> None:
    """Undo `claim_dir` and the latency cache of a search that trained nothing."""
    for name in ("latency.json", "search.json"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, name))
    with contextlib.suppress(OSError):
        os.rmdir(out)  # only when now empty


def _label(c: Candidate) -> str:
    refs = f" [{', '.join(c.refs)}]" if c.refs else ""
    a, b, g = c.point
    return f"({a:g}, {b:g}, {g:g}) {c.resolution}px {c.blocks} blocks{refs}"


def _row(c: Candidate, s: SearchSettings, results: dict) -> dict:
    return {
        "key": c.key,
        "requested": [list(p) for p in c.requested],
        "refs": c.refs,
        "in_space": c.in_space,
        "depth": c.depth,
        "width": c.width,
        "resolution": c.resolution,
        "blocks": c.blocks,
        "params": c.params,
        "macs": c.macs,
        # of the requested point nearest the target (several points build one network; the table shows one)
        "formula": round(min((space.formula(p) for p in c.requested), key=lambda f: abs(f - s.target)), 4),
        "cost": round(c.cost, 4),
        "latency_ms": c.latency_ms,
        "seeds": [{"seed": seed, **{k: r.get(k) for k in _SEED_KEYS}} for seed, r in sorted(results.items())],
    }


_SEED_KEYS = ("top1", "top5", "img_per_s", "wall_s", "latency_ms")


def _note(msg: str) -> None:
    print(f"[effnet search] {msg}", file=sys.stderr, flush=True)
