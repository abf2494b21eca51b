"""`effnet convert SRC OUT`: bring another library's EfficientNet weights (or a training run) into effnet format,
or back out.

The output is the interchange checkpoint (the twin's state_dict as safetensors plus the JSON header with the
source's conventions and preprocessing), which `effnet_jax.weights.load_checkpoint` reads with numpy alone.
The `--weight-source` and `--to` choices are the weight-source registry's (`effnet_torch.sources`;
docs/design.md, "Weight sources"): `timm_tf` is the timm layout with TF conventions. Reading needs torch (a
`.pth` is only ever opened with `torch.load(weights_only=True)`); the work is done by `effnet_torch.importers`.

    effnet convert efficientnet_b0.pth b0.safetensors --weight-source torchvision
    effnet convert tf_lite0.safetensors lite0.safetensors --weight-source timm --model tf_efficientnet_lite0
    effnet convert tf_b3.pth b3.safetensors --weight-source timm_tf
    effnet convert b0.safetensors b0_timm.safetensors --to timm
    effnet convert runs/digits digits.safetensors        # a run's EMA weights, spec and class names (--raw: raw)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import replace

from effnet_spec.atomic import unwritable_file
from effnet_spec.paths import check_not_source


def _sources():
    """The weight-source registry, or None without torch (then `main` says what to install)."""
    try:
        from effnet_torch import sources
    except ModuleNotFoundError:
        return None
    return sources


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src",
        metavar="SRC",
        help="source weights: .safetensors, .pth/.pt (read with weights_only), or a training run directory",
    )
    p.add_argument("--raw", action="store_true", help="a training run's raw weights instead of its EMA")
    p.add_argument("out", metavar="OUT", help="output .safetensors (written atomically)")
    sources = _sources()
    p.add_argument(
        "--weight-source",
        dest="weight_source",
        choices=sources.names() if sources else None,
        help="the library that wrote SRC (default: detected from the keys); timm_tf: timm's TF-ported weights "
        "(TF SAME padding, eps 1e-3)",
    )
    p.add_argument(
        "--model",
        help="variant (b0, lite3) or library model name (tf_efficientnet_b3, efficientnet-b0); default: inferred "
        "from the tensor shapes. For timm, tf_* names select TF SAME padding and eps 1e-3 (as --weight-source "
        "timm_tf does)",
    )
    p.add_argument(
        "--to",
        dest="target",
        choices=sources.export_targets() if sources else None,
        help="export an effnet checkpoint to this library's layout instead",
    )
    pre = p.add_argument_group("preprocessing overrides (stored in the header)")
    pre.add_argument("--resolution", type=int, help="eval input size in pixels")
    pre.add_argument("--crop-pct", type=float, help="center-crop fraction: resize to resolution / crop_pct first")
    pre.add_argument("--interpolation", choices=("bicubic", "bilinear", "nearest"))
    pre.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="on [0, 1] input")
    pre.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="on [0, 1] input")
    p.add_argument("--from", dest="renamed_from", help=argparse.SUPPRESS)  # the old spelling: answered, not parsed


def convert(
    src: str,
    out: str,
    *,
    weight_source: str | None = None,
    model: str | None = None,
    overrides: dict | None = None,
):
    """Python API of `effnet convert`: import `src` and write the effnet checkpoint `out`.

    Returns the `effnet_torch.importers.ImportResult` (spec, state_dict, preprocessing, weight_source).
    Raises:
        effnet_torch.importers.ImportError_ (a ValueError): unreadable/unsafe file, or shapes matching no variant.
    """
    from effnet_torch.importers import import_checkpoint, import_file, read_state_dict

    check_not_source(src, out)  # before the source is read (import_checkpoint checks again, before it writes)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not overrides:
        return import_checkpoint(src, out, weight_source=weight_source, model=model)
    # Overrides apply on top of the source's own preprocessing, so read it first.
    sd, meta = read_state_dict(src)
    pre = import_file(sd, meta, src, weight_source=weight_source, model=model).preprocessing
    for k in ("mean", "std"):
        if k in overrides:
            overrides[k] = tuple(overrides[k])
    return import_checkpoint(
        src, out, weight_source=weight_source, model=model, preprocessing=replace(pre, **overrides)
    )


def _unwritable(out: str) -> str | None:
    """Why `out` cannot be written as a file, or None; checked before any work (nothing is created)."""
    if os.path.isdir(out):
        return "it is a directory; give a file name such as " + os.path.join(out, "model.safetensors")
    return unwritable_file(out)


def convert_run(run_dir: str, out: str, *, raw: bool = False, target: str | None = None, overrides: dict | None = None):
    """Python API of `effnet convert RUN_DIR OUT`: a training run's latest (EMA, unless `raw`) weights as a file.

    The header carries the run's spec, conventions, preprocessing and the class names of its training data; with
    `target`, the tensors are written in that library's layout instead. Needs no torch unless `target` is given.
    Returns the `effnet_jax.weights.Pretrained` that was written.
    """
    from safetensors.numpy import save

    from effnet_spec import make_header
    from effnet_spec.atomic import write_atomic

    from ..weights.pretrained import read_pretrained

    check_not_source(run_dir, out)
    p = read_pretrained(run_dir, ema=not raw)
    changes = {k: tuple(v) if k in ("mean", "std") else v for k, v in (overrides or {}).items() if v is not None}
    if changes:
        p = replace(p, preprocessing=replace(p.preprocessing, **changes))
    if target:
        try:
            import torch
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                f"--to {target} writes another library's layout, which needs PyTorch: pip install 'effnet[torch]'"
            ) from None
        from effnet_torch.importers import export_file

        export_file(out, {k: torch.from_numpy(v) for k, v in p.state_dict.items()}, p.spec, p.preprocessing, target)
    else:
        write_atomic(out, save(p.state_dict, metadata=make_header(p.spec, p.preprocessing)))
    return p


def _main_run(args: argparse.Namespace, overrides: dict) -> int:
    """`effnet convert RUN_DIR OUT`."""
    if args.weight_source or args.model:
        print("effnet convert: a training run describes its own model; --weight-source/--model do not apply",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        p = convert_run(args.src, args.out, raw=args.raw, target=args.target, overrides=overrides)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as e:
        print(f"effnet convert: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"effnet convert: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    names = p.preprocessing.class_names
    shown = f"; classes {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}" if names else ""
    layout = f" in the {args.target} layout" if args.target else ""
    print(f"wrote {args.out}{layout}: {p.spec.name} from {p.origin}, {p.spec.num_classes} classes{shown}")
    if args.target:
        _print_loading(args.target, p.spec, p.preprocessing)
    return 0


def _preprocessing_line(p) -> str:
    """How images must be prepared for the weights, as another library's user needs it spelled out."""
    resize = math.floor(p.resolution / p.crop_pct + 1e-6)
    mean, std = (tuple(round(v, 4) for v in x) for x in (p.mean, p.std))
    return (
        f"resize the short side to {resize} ({p.interpolation}), center-crop {p.resolution}x{p.resolution}, "
        f"scale to [0, 1], normalise with mean {mean} std {std}"
    )


def _print_loading(target: str, spec, pre) -> None:
    """What another library needs to compute what these weights compute: its model (name, conventions) and the
    preprocessing; the file carries them too (effnet reads them back), but the other library ignores that."""
    loader = _sources().get(target).source.loader
    if loader:
        print(f"  load it in {target} as {loader(spec)}")
    print(f"  input: {_preprocessing_line(pre)}")


def main(args: argparse.Namespace) -> int:
    if args.renamed_from is not None:
        print(f"effnet convert: --from is now --weight-source (--weight-source {args.renamed_from})", file=sys.stderr)
        return 2
    overrides = {
        "resolution": args.resolution,
        "crop_pct": args.crop_pct,
        "interpolation": args.interpolation,
        "mean": args.mean,
        "std": args.std,
    }
    try:  # OUT that is SRC (a path, a symbolic or hard link) would replace the user's file: refused first
        check_not_source(args.src, args.out)
    except ValueError as e:
        print(f"effnet convert: {e}", file=sys.stderr)
        return 2
    problem = _unwritable(args.out)
    if problem:
        print(f"effnet convert: cannot write {args.out}: {problem}", file=sys.stderr)
        return 2
    if os.path.isdir(args.src):
        return _main_run(args, overrides)
    if args.raw:
        print("effnet convert: --raw applies to a training run directory", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401 (only to give a clear message when it is missing)
    except ModuleNotFoundError:
        print("effnet convert: needs PyTorch to read other libraries' weights: pip install 'effnet[torch]'")
        return 2
    from effnet_torch.importers import export_checkpoint

    try:
        if args.target:
            if args.weight_source not in (None, "effnet") or args.model:
                print(
                    "effnet convert: --to exports an effnet checkpoint; --weight-source/--model do not apply",
                    file=sys.stderr,
                )
                return 2
            spec, pre = export_checkpoint(args.src, args.out, args.target)
            print(f"wrote {args.out}: {spec.name} in the {args.target} layout, {spec.num_classes} classes")
            _print_loading(args.target, spec, pre)
            return 0
        r = convert(args.src, args.out, weight_source=args.weight_source, model=args.model, overrides=overrides)
    except ValueError as e:  # ImportError_, a bad header or override: the message names the problem
        print(f"effnet convert: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the disk filled up or went read-only mid-write; write_atomic left OUT as it was
        print(f"effnet convert: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    if r.note:
        print(f"effnet convert: note: {r.note}", file=sys.stderr)
    c, p = r.spec.conv, r.preprocessing
    print(
        f"wrote {args.out}: {r.spec.name} from {r.weight_source}, {r.spec.num_classes} classes; "
        f"padding {c.padding}, bn eps {c.bn_eps:g}, {c.activation}; "
        f"input {p.resolution}px crop {p.crop_pct:g} {p.interpolation} mean {tuple(round(m, 4) for m in p.mean)}"
    )
    return 0
