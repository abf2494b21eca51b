"""What `effnet search` reports: the results table, the choice of (alpha, beta, gamma), the scaling study and plots.

Pure functions over the orchestrator's records (one dict per distinct realised network, each with its seeds' runs);
nothing here trains or imports jax, so a finished search can be re-reported, and the report tested, in milliseconds.

Accuracies are fractions (0.97) in records and JSON, and percentage points in the markdown and the sentences. The
spread of a network is the sample standard deviation of its seeds' val top-1 (ddof=1; 0.0 with one seed, when it is
unknown rather than zero: `n_seeds` says which). Files are written atomically (`effnet_spec.atomic`), plots included:
a figure is rendered to memory first, so a failing write leaves the old file or none, never half a PNG.
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics

from effnet_spec.atomic import write_atomic_files

__all__ = [
    "PAPER",
    "STRATEGIES",
    "TIMING_KEYS",
    "choose",
    "comparable",
    "pareto",
    "plot_search",
    "plot_study",
    "study_reading",
    "summarise",
    "write_results",
    "write_study",
]

# The paper's grid-search result on B0 (arXiv:1905.11946, section 3.3), the reference every search is compared with.
PAPER = (1.2, 1.1, 1.15)

# The scaling study's curves, in the order tables, readings and legends list them (the paper's Figures 3 and 8).
STRATEGIES = ("compound (found)", "compound (paper)", "width", "depth", "resolution")
SINGLE = ("width", "depth", "resolution")

# Keys whose values are measured on this device and differ between two runs of the same search; `comparable` drops
# them (and the same keys inside each seed) so "the same search twice gives the same table" can be tested.
# `pareto_latency` is derived from latency, so it varies too.
TIMING_KEYS = ("img_per_s", "latency_ms", "wall_s", "pareto_latency")

_COST_KEYS = ("macs", "latency_ms")


# --------------------------------------------------------------------------------------------------- summarising


def _median(values: list) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def _summary(row: dict) -> dict:
    """One row with its seeds reduced; the input is not modified."""
    seeds = sorted(row.get("seeds") or [], key=lambda s: s.get("seed", 0))
    top1 = [float(s["top1"]) for s in seeds if s.get("top1") is not None]
    out = dict(row)
    out["seeds"] = [dict(s) for s in seeds]
    out["n_seeds"] = len(top1)
    out["top1_mean"] = statistics.fmean(top1) if top1 else None
    out["top1_spread"] = statistics.stdev(top1) if len(top1) > 1 else (0.0 if top1 else None)
    out["top1_min"] = min(top1) if top1 else None
    out["top1_max"] = max(top1) if top1 else None
    top5 = [float(s["top5"]) for s in seeds if s.get("top5") is not None]
    out["top5_mean"] = statistics.fmean(top5) if top5 else None
    out["img_per_s"] = _median([s.get("img_per_s") for s in seeds])
    # Latency is measured per seed where the runner does so, else once per network (the row's own field).
    lat = _median([s.get("latency_ms") for s in seeds])
    out["latency_ms"] = lat if lat is not None else row.get("latency_ms")
    walls = [float(s["wall_s"]) for s in seeds if s.get("wall_s") is not None]
    out["wall_s"] = math.fsum(walls) if walls else None
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Each row with `top1_mean`, `top1_spread` (sample std over seeds, 0.0 with one seed), `top1_min`, `top1_max`,
    `top5_mean`, `n_seeds`, the median `img_per_s` and `latency_ms` over seeds, and `wall_s` summed over seeds.

    Sorted by MACs then key, so the same records always give the same table. Idempotent: summarising a summarised
    row recomputes the same values from its seeds. A row with no finished seed gets None accuracies and is left out
    of the front and the choice, but still listed.
    """
    return sorted((_summary(r) for r in rows), key=lambda r: (r.get("macs") or 0, str(r["key"])))


# ---------------------------------------------------------------------------------------------- front and choice


def _cost(row: dict, cost: str) -> float | None:
    if cost not in _COST_KEYS:
        raise ValueError(f"cost must be one of {_COST_KEYS}, got {cost!r}")
    value = row.get(cost)
    return None if value is None else float(value)


def pareto(rows: list[dict], cost: str = "macs") -> list[str]:
    """Keys of the networks no other network beats on both accuracy (higher `top1_mean`) and `cost` (lower), in
    order of increasing cost: the staircase of the best accuracy reachable at each budget.

    Every trained row competes, references and rows outside the constraint included (the plot shows them greyed).
    A row equal to a front row in both cost and accuracy is on the front too (neither dominates the other); one with
    the same accuracy at a higher cost, or the same cost and a lower accuracy, is not. Rows without an accuracy or
    without the cost (latency not measured) are left out.
    """
    points = [(c, r["top1_mean"], str(r["key"])) for r in summarise(rows) if (c := _cost(r, cost)) is not None]
    points = [p for p in points if p[1] is not None]
    points.sort(key=lambda p: (p[0], -p[1], p[2]))
    front: list[str] = []
    best = -math.inf
    last = None  # (cost, top1) of the last row put on the front
    for c, acc, key in points:
        if acc > best or (c, acc) == last:
            front.append(key)
            best, last = acc, (c, acc)
    return front


def _formula(point) -> float:
    a, b, g = point
    return a * b**2 * g**2


def _coefficients(row: dict, formula_target: float) -> tuple[float, float, float]:
    """The (alpha, beta, gamma) a network stands for. Several grid points can realise one network at phi = 1 (the
    rounding of repeats, channels and pixels), but they scale apart at larger phi, so one must be named: the paper's
    point when this network realises it (the verdict then reads "the paper's point is itself the best"), else the
    requested point whose alpha * beta^2 * gamma^2 is nearest the constraint's target, the first listed on a tie."""
    points = [tuple(float(v) for v in p) for p in row.get("requested") or []]
    if not points:
        raise ValueError(f"row {row['key']!r} lists no requested (alpha, beta, gamma)")
    for p in points:
        if all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(p, PAPER)):
            return p
    return min(points, key=lambda p: abs(_formula(p) - formula_target))


def _point(p) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in p) + ")"


def _pts(x: float) -> str:
    """A difference of accuracies (fractions) in percentage points."""
    return f"{100 * x:.2f}"


def _ref(rows: list[dict], name: str) -> dict | None:
    found = [r for r in rows if name in (r.get("refs") or [])]
    return found[0] if found else None


def choose(
    rows: list[dict],
    *,
    objective: str = "accuracy",
    cost: str = "macs",
    target: float | None = None,
    w: float = -0.07,
    formula_target: float = 2.0,
) -> dict:
    """The chosen network among those inside the constraint, its (alpha, beta, gamma), and how far it leads the
    paper's point, compared with the seeds' spread.

    objective "accuracy": the highest mean val top-1; ties go to the lower cost, then the key.
    objective "mnas": MnasNet's soft-constraint objective (arXiv:1807.11626) top1_mean * (cost / target)^w, with
    w = -0.07 as in the paper (one exponent on both sides of the target); `target` defaults to the paper row's cost,
    so networks are rewarded for being cheaper than the paper's point and penalised for being dearer.

    `lead` is chosen minus paper top-1 (a fraction; negative when a cheaper, less accurate network wins the MnasNet
    objective). `spread` is the larger of the two rows' sample stds: a simple, deliberately conservative yardstick,
    not a significance test. `significant` needs two or more seeds on both rows and lead > spread.
    """
    if objective not in ("accuracy", "mnas"):
        raise ValueError(f"objective must be 'accuracy' or 'mnas', got {objective!r}")
    rows = summarise(rows)
    paper = _ref(rows, "paper")
    candidates = [r for r in rows if r.get("in_space") and r["top1_mean"] is not None]
    if objective == "mnas":
        candidates = [r for r in candidates if _cost(r, cost) is not None]
    if not candidates:
        raise ValueError(
            f"choose: no network inside the constraint has a val top-1{' and a ' + cost if objective == 'mnas' else ''}"
        )
    cost_name = {"macs": "MACs", "latency_ms": "latency"}[cost]
    target_from = None
    if objective == "mnas":
        if target is None:
            if paper is None or _cost(paper, cost) is None:
                raise ValueError(
                    f"choose: the MnasNet objective needs a target {cost}; no paper row has one to default to"
                )
            target, target_from = _cost(paper, cost), f"the paper row's {cost}"
        else:
            target_from = "given"
        if not target > 0:
            raise ValueError(f"choose: target must be > 0, got {target}")
        score = {r["key"]: r["top1_mean"] * (_cost(r, cost) / target) ** w for r in candidates}
        best = min(candidates, key=lambda r: (-score[r["key"]], -r["top1_mean"], str(r["key"])))
        shown = f"{target / 1e6:.3g} M MACs" if cost == "macs" else f"{target:.3g} ms"
        rule = (
            f"Highest mean val top-1 x ({cost_name} / {shown})^{w:g} (MnasNet's objective; target: {target_from}) "
            f"among the {len(candidates)} networks inside the constraint"
        )
    else:
        score = None
        big = math.inf
        best = min(
            candidates,
            key=lambda r: (-r["top1_mean"], _cost(r, cost) if _cost(r, cost) is not None else big, str(r["key"])),
        )
        rule = (
            f"Highest mean val top-1 over seeds among the {len(candidates)} networks inside the constraint, "
            f"ties to the lower {cost_name}"
        )
    alpha, beta, gamma = _coefficients(best, formula_target)
    rule += (
        "; the network's (alpha, beta, gamma) is the paper's point when it realises it, else its requested point "
        f"with alpha*beta^2*gamma^2 nearest {formula_target:g}."
    )
    out = {
        "key": best["key"],
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "requested": best.get("requested"),
        "objective": objective,
        "cost": cost,
        "target": target,
        "target_from": target_from,
        "w": w if objective == "mnas" else None,
        "score": score[best["key"]] if score else None,
        "top1_mean": best["top1_mean"],
        "rule": rule,
        "paper_key": paper["key"] if paper else None,
        "lead": None,
        "spread": None,
        "significant": False,
    }
    out["verdict"] = _verdict(out, best, paper)
    return out


def _verdict(out: dict, best: dict, paper: dict | None) -> str:
    """One plain sentence on the chosen point against the paper's, filling `out`'s lead and spread."""
    chosen = f"The chosen point {_point((out['alpha'], out['beta'], out['gamma']))}"
    if paper is None or paper["top1_mean"] is None:
        return (
            f"{chosen} has {_pts(best['top1_mean'])}% val top-1; the paper's point {_point(PAPER)} was not "
            "trained, so there is nothing to compare it with."
        )
    if best["key"] == paper["key"]:
        out["lead"] = 0.0
        return (
            f"The paper's point {_point(PAPER)} is itself the best under this rule "
            f"({_pts(paper['top1_mean'])}% val top-1): the search found nothing better on this data."
        )
    lead = best["top1_mean"] - paper["top1_mean"]
    out["lead"] = lead
    if lead == 0:  # "leads by 0.00 points" would read as a win
        cheaper = " and costs fewer MACs" if best.get("macs", 0) < paper.get("macs", 0) else ""
        return (
            f"{chosen} ties the paper's {_point(PAPER)} at {_pts(best['top1_mean'])}% val top-1{cheaper}: on this "
            "proxy the two are not distinguishable by accuracy."
        )
    verb = "leads" if lead >= 0 else "trails"
    head = f"{chosen} {verb} the paper's {_point(PAPER)} by {_pts(abs(lead))} points of val top-1"
    if min(best["n_seeds"], paper["n_seeds"]) < 2:
        which = "both" if max(best["n_seeds"], paper["n_seeds"]) < 2 else "one of them"
        return f"{head}, but with one seed on {which} the seeds' spread is unknown: this lead may be noise."
    spread = max(best["top1_spread"], paper["top1_spread"])
    out["spread"] = spread
    out["significant"] = lead > spread
    seeds = (
        f"{_pts(spread)} (the larger of the two networks' sample std over seeds, "
        f"{best['n_seeds']} and {paper['n_seeds']} seeds)"
    )
    if abs(lead) <= spread:
        return f"{head}, less than the seeds' spread of {seeds}: on this proxy the two are not distinguishable."
    if lead > 0:
        return f"{head}, larger than the seeds' spread of {seeds}."
    return f"{head}, more than the seeds' spread of {seeds}: it is less accurate and wins on its lower cost."


# ---------------------------------------------------------------------------------------------------- the table


def comparable(row: dict) -> dict:
    """`row` without the keys measured on this device (`TIMING_KEYS`, at the top and in each seed): what two runs
    of the same search must agree on."""
    out = {k: v for k, v in row.items() if k not in TIMING_KEYS}
    if "seeds" in out:
        out["seeds"] = [{k: v for k, v in s.items() if k not in TIMING_KEYS} for s in out["seeds"]]
    return out


def _requested_cell(points) -> str:
    points = points or []
    if len(points) == 1:
        return _point(points[0])
    return f"{len(points)} points: " + ", ".join(_point(p) for p in points)


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _top1_cell(row: dict) -> str:
    if row["top1_mean"] is None:
        return "not trained"
    if row["n_seeds"] < 2:
        return f"{_pts(row['top1_mean'])} (1 seed)"
    return f"{_pts(row['top1_mean'])} ± {_pts(row['top1_spread'])}"


def _flags(row: dict) -> str:
    flags = [f for f in ("chosen", "pareto") if row.get(f)]
    if not row.get("in_space"):
        flags.append("outside constraint")
    return ", ".join(flags)


TABLE_HEAD = (
    "| requested (α, β, γ) | refs | depth | width | resolution | blocks | params | MACs (M) | formula "
    "| top-1 % (mean ± std) | seeds | img/s | latency ms | wall s | flags |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
)


def _network_cells(row: dict) -> list[str]:
    """The realised network's columns, shared by the search's table and the study's: depth, width, resolution,
    blocks, params, MACs (M)."""
    macs = None if row.get("macs") is None else row["macs"] / 1e6
    return [_num(row.get("depth"), ".3f"), _num(row.get("width"), ".3f"), _num(row.get("resolution"), "d"),
            _num(row.get("blocks"), "d"), _num(row.get("params"), ",d"), _num(macs, ".3f")]  # fmt: skip


def _measured_cells(row: dict) -> list[str]:
    """What training and timing measured, shared by both tables: top-1, seeds, img/s, latency ms."""
    return [_top1_cell(row), str(row["n_seeds"]), _num(row.get("img_per_s"), ".1f"), _num(row.get("latency_ms"), ".3f")]


def _table_line(row: dict) -> str:
    cells = [
        _requested_cell(row.get("requested")),
        ", ".join(row.get("refs") or []),
        *_network_cells(row),
        _num(row.get("formula"), ".3f"),
        *_measured_cells(row),
        _num(row.get("wall_s"), ".1f"),
        _flags(row),
    ]
    return "| " + " | ".join(cells) + " |\n"


def _settings_md(settings: dict) -> str:
    return "".join(f"- `{k}`: `{json.dumps(v, sort_keys=True)}`\n" for k, v in settings.items())


def _flagged(rows: list[dict], choice: dict | None) -> list[dict]:
    rows = summarise(rows)
    front = set(pareto(rows, "macs"))
    front_lat = set(pareto(rows, "latency_ms"))
    for r in rows:
        r["pareto"] = r["key"] in front
        r["pareto_latency"] = r["key"] in front_lat
        r["chosen"] = choice is not None and r["key"] == choice["key"]
    return rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)


def write_results(out_dir: str | os.PathLike, rows: list[dict], settings: dict, choice: dict | None) -> None:
    """`results.jsonl` (the summarised rows, flagged `pareto` (on MACs), `pareto_latency` and `chosen`),
    `results.md` (the table, the settings, the choice and its verdict) and `choice.json` (settings and choice),
    written together atomically. Networks that several grid points realise are one line, their points collapsed.
    """
    rows = _flagged(rows, choice)
    md = ["# effnet search: results\n\n", TABLE_HEAD, *map(_table_line, rows)]
    md.append(
        "\nOne line per distinct network; depth, width and resolution are realised (blocks / base blocks, mean "
        "channel ratio over stem, stages and head, pixels); top-1 is the mean over seeds ± their sample std; img/s "
        "and latency are medians over seeds, measured on this device; wall s is summed over seeds.\n"
    )
    md.append("\n## Settings\n\n" + _settings_md(settings))
    if choice is not None:
        md.append(
            f"\n## Choice\n\nα = {choice['alpha']:g}, β = {choice['beta']:g}, γ = {choice['gamma']:g} "
            f"(network `{choice['key']}`).\n\nRule: {choice['rule']}\n\n{choice['verdict']}\n"
        )
    out_dir = os.fspath(out_dir)
    write_atomic_files(
        {
            os.path.join(out_dir, "results.jsonl"): _jsonl(rows),
            os.path.join(out_dir, "results.md"): "".join(md),
            os.path.join(out_dir, "choice.json"): json.dumps(
                {"settings": settings, "choice": choice}, indent=2, allow_nan=False
            )
            + "\n",
        }
    )


# ------------------------------------------------------------------------------------------------------- plots


def _figure(figsize=(7, 5)):
    """A figure on the Agg canvas, without pyplot: no global backend switch, no figure left open."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _search_axes(ax, rows: list[dict], choice: dict | None, cost: str) -> None:
    scale, unit = (1e-6, "MACs (M)") if cost == "macs" else (1.0, "inference latency (ms, this device)")
    rows = [r for r in rows if r["top1_mean"] is not None and r.get(cost) is not None]
    for inside, colour, label in ((True, "tab:blue", "inside the constraint"), (False, "0.6", "outside")):
        sel = [r for r in rows if bool(r.get("in_space")) == inside]
        if sel:
            ax.errorbar(
                [r[cost] * scale for r in sel],
                [100 * r["top1_mean"] for r in sel],
                yerr=[100 * r["top1_spread"] for r in sel],
                fmt="o",
                color=colour,
                ecolor=colour,
                capsize=3,
                label=label,
            )
    by_key = {r["key"]: r for r in rows}
    front = [by_key[k] for k in pareto(rows, cost)]
    if front:
        ax.step(
            [r[cost] * scale for r in front],
            [100 * r["top1_mean"] for r in front],
            where="post",
            color="tab:green",
            lw=1.2,
            label="Pareto front",
        )
    marks = [(_ref(rows, "paper"), "*", "tab:red", f"paper {_point(PAPER)}", 16)]
    marks.append((_ref(rows, "base"), "s", "black", "base", 9))
    if choice is not None and choice["key"] in by_key:
        coeffs = _point((choice["alpha"], choice["beta"], choice["gamma"]))
        marks.append((by_key[choice["key"]], "o", "tab:orange", f"chosen {coeffs}", 14))
    for row, marker, colour, label, size in marks:
        if row is None:
            continue
        x, y = row[cost] * scale, 100 * row["top1_mean"]
        ax.plot([x], [y], marker, ms=size, mfc="none", mec=colour, mew=2, label=label)
        ax.annotate(label, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8, color=colour)
    ax.set_xlabel(unit)
    ax.set_ylabel("val top-1 (%), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def plot_search(out_dir: str | os.PathLike, rows: list[dict], choice: dict | None) -> list[str]:
    """`accuracy_vs_macs.png` and, when any latency was measured, `accuracy_vs_latency.png`: every network with
    its seeds' std as an error bar, the Pareto front as a staircase, the paper's point, the base and the chosen
    network marked, networks outside the constraint in grey. Returns the paths written."""
    rows = summarise(rows)
    files = {}
    for cost, name in (("macs", "accuracy_vs_macs.png"), ("latency_ms", "accuracy_vs_latency.png")):
        if not any(r.get(cost) is not None and r["top1_mean"] is not None for r in rows):
            continue
        fig = _figure()
        ax = fig.add_subplot()
        _search_axes(ax, rows, choice, cost)
        ax.set_title(f"effnet search: accuracy against {'MACs' if cost == 'macs' else 'measured latency'}")
        files[os.path.join(os.fspath(out_dir), name)] = _png(fig)
    write_atomic_files(files)
    return list(files)


# ------------------------------------------------------------------------------------------------------- study


def _strategy_order(row: dict) -> tuple:
    """Known strategies in `STRATEGIES` order, then any other name alphabetically; then phi and key."""
    name = str(row.get("strategy"))
    rank = STRATEGIES.index(name) if name in STRATEGIES else len(STRATEGIES)
    return (rank, name, row.get("phi", 0), str(row["key"]))


def _curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows per strategy, by phi. A strategy without its own phi = 0 row starts from the shared base: any phi = 0
    row (they all realise the unscaled network), so the orchestrator may train and record the base once."""
    rows = summarise(rows)
    base = sorted((r for r in rows if r.get("phi") == 0), key=_strategy_order)
    names = [s for s in STRATEGIES if any(r.get("strategy") == s for r in rows)]
    names += sorted({str(r.get("strategy")) for r in rows} - set(STRATEGIES) - {"base", "None"})
    curves = {}
    for s in names:
        mine = sorted((r for r in rows if r.get("strategy") == s), key=lambda r: r["phi"])
        if base and not any(r["phi"] == 0 for r in mine):
            mine.insert(0, base[0])
        curves[s] = mine
    return curves


def _spread_of(*rows) -> float | None:
    """The larger seeds' std of `rows`, or None when one has a single seed (its spread is unknown)."""
    if any(r["n_seeds"] < 2 for r in rows):
        return None
    return max(r["top1_spread"] for r in rows)


def _within(diff: float, spread: float | None) -> str:
    if spread is None:
        return " (spread unknown: one seed)"
    return " (within the seeds' spread)" if abs(diff) <= spread else ""


def _steps_reading(name: str, curve: list[dict]) -> str:
    curve = [r for r in curve if r["top1_mean"] is not None]
    if len(curve) < 2:
        return f"- {name}: fewer than two trained points, no reading."
    gains = [(a, b, b["top1_mean"] - a["top1_mean"]) for a, b in zip(curve, curve[1:])]
    parts = [f"φ {a['phi']:g}→{b['phi']:g}: {100 * g:+.2f}{_within(g, _spread_of(a, b))}" for a, b, g in gains]
    helps = all(g > 0 for _, _, g in gains)
    clear = all(g > (_spread_of(a, b) if _spread_of(a, b) is not None else math.inf) for a, b, g in gains)
    diminishing = len(gains) > 1 and all(g2 < g1 for (_, _, g1), (_, _, g2) in zip(gains, gains[1:]))
    if helps and clear:
        says = "every step gains, beyond the seeds' spread"
    elif helps:
        says = "every step gains, but not every gain is beyond the seeds' spread"
    else:
        says = "not every step gains"
    if len(gains) > 1:
        says += (
            "; each gain is smaller than the one before (diminishing returns)"
            if diminishing
            else ("; the gains do not shrink step by step")
        )
    return f"- {name} only: {', '.join(parts)} points of top-1: {says}."


# How far (as a MACs ratio) a compound point may lie beyond the end of a single-dimension curve and still be compared
# with that end point: the single-dimension points are matched in FLOPs to the compound ones by design, but the
# rounding of repeats, channels and pixels moves each a few percent, so the last compound point often lies just past
# the curve's last point.
MATCH_TOLERANCE = 1.10


def _interp(curve: list[dict], macs: float):
    """(top-1, rows used, note) of `curve` at `macs`: linear in log MACs between the two bracketing points; past an
    end, that end point itself when within `MATCH_TOLERANCE` (the note says how far off it is); else None."""
    pts = sorted((r for r in curve if r["top1_mean"] is not None and r.get("macs")), key=lambda r: r["macs"])
    for a, b in zip(pts, pts[1:]):
        if a["macs"] <= macs <= b["macs"]:
            if b["macs"] == a["macs"]:
                return max(a["top1_mean"], b["top1_mean"]), (a, b), ""
            t = (math.log(macs) - math.log(a["macs"])) / (math.log(b["macs"]) - math.log(a["macs"]))
            return a["top1_mean"] + t * (b["top1_mean"] - a["top1_mean"]), (a, b), ""
    if not pts:
        return None
    end = min((pts[0], pts[-1]), key=lambda r: abs(math.log(r["macs"] / macs)))
    ratio = end["macs"] / macs
    if max(ratio, 1 / ratio) > MATCH_TOLERANCE:
        return None
    note = "" if ratio == 1 else f" [its φ {end['phi']:g} point, {100 * (ratio - 1):+.1f}% MACs]"
    return end["top1_mean"], (end,), note


def _compound_reading(name: str, curve: list[dict], single: str, other: list[dict]) -> str:
    points = [r for r in curve if r["phi"] > 0 and r["top1_mean"] is not None and r.get("macs")]
    parts, above, clearly, compared = [], 0, 0, 0
    for r in points:
        found = _interp(other, r["macs"])
        if found is None:
            continue
        acc, used, note = found
        diff = r["top1_mean"] - acc
        spread = _spread_of(r, *used)
        compared += 1
        above += diff > 0
        clearly += spread is not None and diff > spread
        parts.append(f"φ {r['phi']:g}: {100 * diff:+.2f}{_within(diff, spread)}{note}")
    if not compared:
        return f"- {name} vs {single} only: no compound point lies within the {single} curve's MACs range."
    return (
        f"- {name} vs {single} only, at matched MACs (the {single} curve interpolated in log MACs): "
        f"{', '.join(parts)} points of top-1; higher at {above} of {compared}, beyond the seeds' spread at {clearly}."
    )


def study_reading(rows: list[dict]) -> list[str]:
    """The automatic reading of the scaling study, one line per finding, stating only what the numbers say:
    observation 1 (each single dimension helps, with diminishing returns?) and observation 2 (does compound scaling
    beat each single dimension at matched MACs?)."""
    curves = _curves(rows)
    lines = [_steps_reading(s, curves[s]) for s in SINGLE if s in curves]
    for c in ("compound (found)", "compound (paper)"):
        if c in curves:
            lines += [_compound_reading(c, curves[c], s, curves[s]) for s in SINGLE if s in curves]
    return lines


def write_study(out_dir: str | os.PathLike, rows: list[dict], settings: dict) -> None:
    """`study.jsonl` (the summarised study rows) and `study.md` (a table per strategy by phi, then the reading),
    written together atomically."""
    curves = _curves(rows)
    md = ["# effnet search: scaling study\n"]
    for name, curve in curves.items():
        md.append(
            f"\n## {name}\n\n| φ | depth | width | resolution | blocks | params | MACs (M) | top-1 % (mean ± std) "
            "| seeds | img/s | latency ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for r in curve:
            md.append("| " + " | ".join([f"{r['phi']:g}", *_network_cells(r), *_measured_cells(r)]) + " |\n")
    md.append("\n## Reading\n\n" + "".join(line + "\n" for line in study_reading(rows)))
    md.append("\n## Settings\n\n" + _settings_md(settings))
    ordered = sorted(summarise(rows), key=_strategy_order)
    out_dir = os.fspath(out_dir)
    write_atomic_files(
        {os.path.join(out_dir, "study.jsonl"): _jsonl(ordered), os.path.join(out_dir, "study.md"): "".join(md)}
    )


def _plain_log_ticks(ax) -> None:
    """Tick labels as plain numbers (20, not 2 x 10^1); minor ones too when the axis spans less than a decade and a
    half, where the major ticks alone would leave it with one or two labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    lo, hi = ax.get_xlim()
    ax.xaxis.set_minor_formatter(plain if hi / lo < 30 else NullFormatter())


def plot_study(out_dir: str | os.PathLike, rows: list[dict]) -> str:
    """`scaling_study.png`: val top-1 against MACs (log x), one line per strategy from the shared phi = 0 base,
    a marker per phi with its value, error bars for the seeds' std (the paper's Figures 3 and 8 on this data)."""
    fig = _figure((8, 5.5))
    ax = fig.add_subplot()
    styles = {"compound (found)": ("tab:red", "o"), "compound (paper)": ("tab:orange", "D")}
    singles = {"width": ("tab:blue", "s"), "depth": ("tab:green", "^"), "resolution": ("tab:purple", "v")}
    styles.update(singles)
    curves = _curves(rows)
    first = next(iter(curves), None)
    for name, curve in curves.items():
        pts = [r for r in curve if r["top1_mean"] is not None and r.get("macs")]
        if not pts:
            continue
        colour, marker = styles.get(name, ("0.4", "x"))
        label = name if name.startswith("compound") else f"{name} only"
        ax.errorbar(
            [r["macs"] / 1e6 for r in pts],
            [100 * r["top1_mean"] for r in pts],
            yerr=[100 * r["top1_spread"] for r in pts],
            fmt=marker + "-",
            color=colour,
            capsize=3,
            label=label,
        )
        for r in pts:
            if r["phi"] or name == first:  # the shared base is labelled once
                ax.annotate(
                    f"φ={r['phi']:g}",
                    (r["macs"] / 1e6, 100 * r["top1_mean"]),
                    xytext=(4, -10),
                    textcoords="offset points",
                    fontsize=7,
                    color=colour,
                )
    ax.set_xscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("MACs (M, log scale)")
    ax.set_ylabel("val top-1 (%), mean ± std over seeds")
    ax.set_title("Scaling study: one dimension at a time against compound scaling")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    path = os.path.join(os.fspath(out_dir), "scaling_study.png")
    write_atomic_files({path: _png(fig)})
    return path
