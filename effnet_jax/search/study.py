"""Step 2 and the paper's check of it on the user's data (`effnet scaling`): the base scaled to phi = 1..K with the
found constants, with the paper's, and along one dimension at a time (width only, depth only, resolution only), each
single-dimension network matched in realised multiply-adds to the found compound network of the same phi.

It shows the paper's Figure 3 (observation 1: any one dimension helps, with diminishing returns) and Figure 8
(observation 2: balancing the three beats each alone at the same FLOPs) for this data and proxy budget.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from dataclasses import dataclass

from effnet_spec import ALPHA, BETA, GAMMA, Coefficients, count_macs, count_params, resolve, stages_for

from .search import _note, base_config, claim_dir, data_identity
from .space import shape

__all__ = ["StudySettings", "STRATEGIES", "study", "study_points"]

STRATEGIES = ("compound (found)", "compound (paper)", "width", "depth", "resolution")
FORMAT = "effnet-scaling/1"


@dataclass(frozen=True)
class StudySettings:
    coefficients: tuple[float, float, float]  # the found alpha, beta, gamma
    preset: str = "digits"  # the proxy budget (default: the search's, read from the coefficients file)
    overrides: tuple[str, ...] = ()
    phis: tuple[float, ...] = (1.0, 2.0)
    repeats: int = 1
    search: str = ""  # the search directory the coefficients came from: its runs of the same networks are reused


@dataclass(frozen=True)
class Point:
    strategy: str
    phi: float
    coefficients: tuple[float, float, float]  # trained as phi (compound) or as phi = 1 of these (single dimension)
    train_phi: float


def _matched(kind: str, target_macs: int, macs_of) -> tuple[float, float, float]:
    """The single-dimension multiplier whose realised network's MACs come closest to `target_macs` (rounding makes
    MACs a step function of the multiplier, so a fine scan, not a bisection)."""
    best = None
    for i in range(0, 4001):
        m = round(1.0 + i * 0.0025, 4)
        point = {"depth": (m, 1.0, 1.0), "width": (1.0, m, 1.0), "resolution": (1.0, 1.0, m)}[kind]
        macs = macs_of(point, 1.0)
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (point, macs)
        if macs > 2 * target_macs:
            break
    return best[0]


def study_points(settings: StudySettings, cfg, num_classes: int) -> list[Point]:
    """Every (strategy, phi) to train; phi = 0 (the base) is listed once per strategy and trained once."""
    res0 = cfg.resolution or 0
    stages = stages_for(cfg.variant)[: cfg.stages or None]  # the base variant's own table

    def macs_of(point, phi):
        a, b, g = point
        v = Coefficients(alpha=a, beta=b, gamma=g, base=cfg.variant, resolution=res0).variant(phi)
        spec = resolve(v, num_classes=num_classes, weight_source=cfg.weight_source, stages=stages)
        return count_macs(spec, v.resolution)

    found = settings.coefficients
    points = []
    for strategy in STRATEGIES:
        points.append(Point(strategy, 0.0, (1.0, 1.0, 1.0), 0.0))
    for phi in settings.phis:
        points.append(Point("compound (found)", phi, found, phi))
        points.append(Point("compound (paper)", phi, (ALPHA, BETA, GAMMA), phi))
        target = macs_of(found, phi)
        for kind in ("width", "depth", "resolution"):
            point = _matched(kind, target, macs_of)
            off = macs_of(point, 1.0) / target - 1
            if abs(off) > 0.05:  # rounding (or the scan's 11x end) keeps this dimension from the compound's MACs
                _note(f"{kind} alone comes no closer than {off:+.0%} to the compound network's MACs at phi={phi:g}")
            points.append(Point(kind, phi, point, 1.0))
    return points


def study(settings: StudySettings, out: str, *, parallel: int | None = None, progress: bool = True) -> list[dict]:
    """Train (or resume) the study in `out`; writes study.jsonl/.md and scaling_study.png; returns the rows."""
    from . import report
    from .runner import Job, default_parallel, run_jobs
    from .search import candidate_overrides

    s = settings
    if not s.phis or any(not 0 < p <= 8 for p in s.phis):
        raise ValueError(f"--phi {','.join(f'{p:g}' for p in s.phis)}: expected values in (0, 8]")
    if not 1 <= s.repeats <= 100:
        raise ValueError(f"--repeats {s.repeats}: expected 1..100 seeds per point")
    Coefficients(alpha=s.coefficients[0], beta=s.coefficients[1], gamma=s.coefficients[2])  # >= 1, finite
    cfg = base_config(s.preset, s.overrides)
    data = data_identity(cfg)
    points = study_points(s, cfg, data["num_classes"])
    claim_dir(out, {"format": FORMAT, "settings": json.loads(json.dumps(dataclasses.asdict(s))), "data": data},
              kind="scaling study", file="study.json")  # fmt: skip
    stages = stages_for(cfg.variant)[: cfg.stages or None]  # the base variant's own table
    base = resolve(Coefficients(base=cfg.variant, resolution=cfg.resolution).variant(0.0),
                   num_classes=data["num_classes"], weight_source=cfg.weight_source, stages=stages)  # fmt: skip
    nets: dict[tuple, dict] = {}  # realised network -> its description and jobs
    for p in points:
        a, b, g = p.coefficients
        v = Coefficients(alpha=a, beta=b, gamma=g, base=cfg.variant, resolution=cfg.resolution).variant(p.train_phi)
        spec = resolve(v, num_classes=data["num_classes"], weight_source=cfg.weight_source, stages=stages)
        arch = _arch(v, spec)
        if arch not in nets:
            key = f"n{len(nets):02d}-d{len(spec.blocks)}-r{v.resolution}"
            depth, width = shape(spec, base)
            nets[arch] = {"key": key, "point": p, "resolution": v.resolution, "blocks": len(spec.blocks),
                          "depth": depth, "width": width,
                          "params": count_params(spec), "macs": count_macs(spec, v.resolution)}  # fmt: skip
        nets[arch].setdefault("points", []).append(p)
    seeds = [cfg.seed + r for r in range(s.repeats)]
    done = _search_runs(s, cfg, data, stages)
    jobs, reused = [], {}
    for arch, net in nets.items():
        if all(seed in done.get(arch, {}) for seed in seeds):
            reused.update({f"{net['key']}-s{seed}": done[arch][seed] for seed in seeds})
            continue
        p = net["point"]
        for seed in seeds:
            # The search's recipe (the base's dropout pinned, as the runs reused from it had), at this phi.
            overrides = tuple(o if not o.startswith("phi=") else f"phi={p.train_phi:g}"
                              for o in candidate_overrides(cfg, s.overrides, p.coefficients, seed))  # fmt: skip
            label = f"{p.strategy} phi={p.phi:g} {net['resolution']}px {net['blocks']} blocks"
            jobs.append(Job(key=f"{net['key']}-s{seed}", preset=s.preset, overrides=overrides, label=label))
    _note(f"{len(points)} (strategy, phi) points, {len(nets)} distinct networks x {len(seeds)} seed(s) in {out}"
          + (f"; {len(reused)} run(s) taken from the search in {s.search}" if reused else ""))  # fmt: skip
    results = run_jobs(jobs, os.path.join(out, "runs"), parallel=parallel or default_parallel(), progress=progress)
    results.update(reused)
    rows = []
    for net in nets.values():
        runs = [{"seed": seed, **{k: results[f"{net['key']}-s{seed}"].get(k) for k in _KEYS}} for seed in seeds]
        for p in net["points"]:
            rows.append({"key": net["key"], "strategy": p.strategy, "phi": p.phi, "requested": [list(p.coefficients)],
                         "refs": [], "in_space": True, "resolution": net["resolution"], "blocks": net["blocks"],
                         "depth": net["depth"], "width": net["width"],
                         "params": net["params"], "macs": net["macs"], "latency_ms": None, "seeds": runs})  # fmt: skip
    rows = report.summarise(rows)
    rows.sort(key=lambda r: (STRATEGIES.index(r["strategy"]), r["phi"]))
    settings_out = {**json.loads(json.dumps(dataclasses.asdict(s))), "data": data}
    report.write_study(out, rows, settings_out)
    report.plot_study(out, rows)
    _note(f"table {os.path.join(out, 'study.md')}, plot {os.path.join(out, 'scaling_study.png')}")
    return rows


_KEYS = ("top1", "top5", "img_per_s", "wall_s", "latency_ms")


def _arch(v, spec) -> tuple:
    return (v.resolution, spec.stem_ch, spec.head_ch,
            tuple((x.in_ch, x.mid_ch, x.out_ch, x.kernel, x.stride, x.se_ch) for x in spec.blocks))  # fmt: skip


def _search_runs(s: StudySettings, cfg, data: dict, stages) -> dict[tuple, dict[int, dict]]:
    """The finished runs of the search the coefficients came from, by network and seed, when that search trained
    on this study's budget and data (then a network both train is the same run, and is not trained twice)."""
    if not s.search:
        return {}
    try:
        with open(os.path.join(s.search, "search.json")) as f:
            ident = json.load(f)
        settings = ident["settings"]
        same = settings["preset"] == s.preset and ident["data"] == data
        if not same or tuple(settings["overrides"]) != tuple(s.overrides):
            return {}
        if settings.get("latency_batch", 1) != 1:  # the study measures latency one image at a time
            return {}
    except (OSError, ValueError, TypeError, KeyError):
        return {}
    found: dict[tuple, dict[int, dict]] = {}
    for run in sorted(glob.glob(os.path.join(s.search, "runs", "*", "result.json"))):
        try:
            with open(run) as f:
                result = json.load(f)
            with open(os.path.join(os.path.dirname(run), "job.json")) as f:
                sets = dict(o.split("=", 1) for o in json.load(f)["overrides"])
            a, b, g = (float(x) for x in sets["coefficients"].split(","))
            coeffs = Coefficients(alpha=a, beta=b, gamma=g, base=cfg.variant, resolution=cfg.resolution)
            v = coeffs.variant(float(sets["phi"]))
            spec = resolve(v, num_classes=data["num_classes"], weight_source=cfg.weight_source, stages=stages)
            seed = int(sets["seed"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.setdefault(_arch(v, spec), {})[seed] = result
    return found
