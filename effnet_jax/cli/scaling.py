"""`effnet scaling`: the scaling study (step 2 checked): phi = 1..K with the found constants, with the paper's, and
width, depth or resolution alone (each matched in realised multiply-adds), trained on the same proxy budget.

    effnet scaling --coefficients runs/search/coefficients.json --phi 1,2 --out runs/scaling

The budget defaults to the one the search used (read from the coefficients file); rerun to resume.
"""

from __future__ import annotations

import argparse

from ._runs import run_children


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coefficients", required=True, metavar="FILE|A,B,G",
                   help="the found constants: a file `effnet search` wrote, or ALPHA,BETA,GAMMA")  # fmt: skip
    p.add_argument("--phi", default="1,2", help="the steps of phi to train besides phi = 0 (default 1,2)")
    p.add_argument("--out", default="runs/scaling", help="the study's directory (default runs/scaling)")
    p.add_argument("--preset", action="append", help="the proxy budget's train preset (default: the search's, else "
                   "digits)")  # fmt: skip
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="budget overrides (default: the search's; given, they replace them all)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=1, help="seeds per point")
    p.add_argument("--parallel", type=int, help="runs at once, one device each (default: local devices)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace):
    from effnet_spec import parse_coefficients

    from ..search.study import StudySettings

    try:
        phis = tuple(float(x) for x in args.phi.split(","))
    except ValueError:
        raise ValueError(f"--phi {args.phi!r}: expected comma-separated numbers, e.g. 1,2") from None
    from .train import merged_overrides, one_value

    preset = one_value("--preset", args.preset)
    overrides = None if args.set is None else merged_overrides(args.set, {})
    c = parse_coefficients(args.coefficients)
    literal = len(args.coefficients.split(",")) == 3 and not any(sep in args.coefficients for sep in "/\\")
    search, search_dir = _provenance(args.coefficients, c.provenance)
    if preset is None:
        preset = search.get("preset", "digits")
    if overrides is None:  # ALPHA,BETA,GAMMA: the preset's own base and side; a file: the search's, or its base's
        found_on = [f"variant={c.base}", f"resolution={c.base_resolution}"]
        overrides = [] if literal else list(search.get("overrides", found_on))
    if not literal:  # a file: it was found on a base and side, which the budget must train
        from effnet_spec import VARIANTS

        from ..search.search import base_config

        cfg = base_config(preset, overrides)
        side = cfg.resolution or VARIANTS[cfg.variant].resolution if cfg.variant in VARIANTS else 0
        if (cfg.variant, side) != (c.base, c.base_resolution):
            raise ValueError(f"coefficients {args.coefficients} were found on {c.base} at {c.base_resolution} px, "
                             f"but the budget trains {cfg.variant or 'its init'} at {side} px")  # fmt: skip
    return StudySettings(coefficients=(c.alpha, c.beta, c.gamma), preset=preset, overrides=tuple(overrides),
                         phis=phis, repeats=args.repeats, search=search_dir)  # fmt: skip


def _provenance(path: str, provenance: dict) -> tuple[dict, str]:
    """The search settings and directory a coefficients file names, checked: a hand-edited file's garbage is one
    line, not a traceback after the study's directory is claimed."""
    search, search_dir = provenance.get("search", {}), provenance.get("search_dir", "")
    ok = isinstance(search, dict) and isinstance(search_dir, str)
    ok = ok and isinstance(search.get("preset", ""), str)
    overrides = search.get("overrides", []) if ok else None
    if not (ok and isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ValueError(f"coefficients file {path!r}: provenance is not an effnet search's (search: an object "
                         "with preset and a list of overrides; search_dir: a path); fix it or remove it")  # fmt: skip
    return search, search_dir


def main(args: argparse.Namespace) -> int:
    from ..search.study import study

    def work():
        study(settings_from_args(args), args.out, parallel=args.parallel, progress=not args.no_progress)

    return run_children("scaling", args.out, args.parallel, work)
