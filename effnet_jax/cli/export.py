"""`effnet export WEIGHTS OUT --format stablehlo|onnx|torch-export`: a verified artifact for another runtime.

WEIGHTS is anything `effnet predict --weights` takes. Beside OUT goes `OUT.json` (input layout and shape,
preprocessing, class names). See `effnet_jax.export`.

    effnet export b0.safetensors b0.onnx --format onnx
    effnet export runs/pets pets.stablehlo --format stablehlo --platforms cpu,cuda
    effnet export lite0.pth lite0.pt2 --format torch-export --size 240x320
"""

from __future__ import annotations

import argparse
import os
import sys

from ..export import FORMATS  # imports no jax: --help stays quick


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", metavar="WEIGHTS", help="an effnet .safetensors, another library's checkpoint, a "
                   "training run directory, or hf-hub:<org>/<name>")  # fmt: skip
    p.add_argument("out", metavar="OUT", help="the artifact to write (its metadata goes to OUT.json)")
    p.add_argument("--format", required=True, choices=FORMATS, help="stablehlo (jax.export), onnx (through the "
                   "PyTorch twin), torch-export (a .pt2 ExportedProgram of the twin))")  # fmt: skip
    p.add_argument("--size", help="input size, 224 or HxW such as 240x320 (default: the weights' resolution)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip running the artifact in its runtime and comparing it with the JAX model")  # fmt: skip
    p.add_argument("--platforms", default="cpu", help="stablehlo: comma-separated targets among cpu, cuda, rocm, tpu")
    p.add_argument("--opset", type=int, help="onnx: the opset version (default: the exporter's)")
    p.add_argument("--raw", action="store_true", help="a training run's raw weights instead of its EMA")
    p.add_argument("--weight-source", dest="weight_source", help="as in `effnet convert`")
    p.add_argument("--model", help="as in `effnet convert`: a variant or library model name")


def main(args: argparse.Namespace) -> int:
    options = {}
    if args.format == "stablehlo":
        options["platforms"] = args.platforms
    elif args.platforms != "cpu":
        print(f"effnet export: --platforms applies to --format stablehlo, not {args.format}", file=sys.stderr)
        return 2
    if args.opset is not None:
        if args.format != "onnx":
            print(f"effnet export: --opset applies to --format onnx, not {args.format}", file=sys.stderr)
            return 2
        options["opset"] = args.opset
    if args.raw and not os.path.isdir(args.weights):
        print("effnet export: --raw applies to a training run directory", file=sys.stderr)
        return 2
    from ..export import ExportMismatchError, export
    from ..export.common import check_not_the_source

    try:  # the API checks this too; here it is a usage error, found before any weights are read
        check_not_the_source(args.weights, args.out)
    except ValueError as e:
        print(f"effnet export: {e}", file=sys.stderr)
        return 2

    try:
        r = export(args.weights, args.out, format=args.format, size=args.size, verify=args.verify,
                   weight_source=args.weight_source, model=args.model, ema=not args.raw, **options)  # fmt: skip
    except ExportMismatchError as e:
        print(f"effnet export: {e}; nothing was written", file=sys.stderr)
        return 1
    except MemoryError as e:  # refused before the work (it says how to fit), or an allocation that failed anyway
        print(f"effnet export: {e or 'out of memory; try a smaller --size'}; nothing was written", file=sys.stderr)
        return 1
    except (OSError, ValueError, ModuleNotFoundError) as e:
        print(f"effnet export: {e}", file=sys.stderr)
        return 1
    check = "not verified" if r.max_abs_diff is None else f"verified: max |diff| {r.max_abs_diff:.2g} vs effnet_jax"
    print(f"wrote {r.path} ({r.format}, {r.size[0]}x{r.size[1]}, dynamic batch; {check}) and {r.meta_path}")
    return 0
