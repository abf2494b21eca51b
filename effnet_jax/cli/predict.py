"""`effnet predict IMAGE... --weights W`: top-k classes of each image (see `effnet_jax.predict`).

W is anything `EfficientNet.from_pretrained` reads: an effnet .safetensors, another library's checkpoint, a
training run directory (`runs/digits`: its EMA weights and its data's class names) or an `hf-hub:` id.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    p.add_argument(
        "--weights",
        required=True,
        help="an effnet .safetensors, a torchvision/timm/efficientnet_pytorch checkpoint, a training run directory, "
        "or hf-hub:<org>/<name>",
    )
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    p.add_argument("--weight-source", dest="weight_source", help="as in `effnet convert`: the library that wrote W "
                   "when its keys do not tell the conventions (timm_tf for timm's TF ports)")  # fmt: skip
    p.add_argument("--model", help="as in `effnet convert`: a variant or library model name (tf_efficientnet_b3)")


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"effnet predict: note: {message}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    from effnet_spec.resolve import MAX_CLASSES

    from ._flags import out_of_range

    problem = out_of_range(args, {"top": (1, MAX_CLASSES)})
    if problem:
        print(f"effnet predict: error: {problem}", file=sys.stderr)
        return 2
    from ..predict import predict

    try:
        with warnings.catch_warnings():  # a note on what was assumed is one line, not a source location
            warnings.showwarning = _warning_line
            results = predict(
                args.images, args.weights, top=args.top, weight_source=args.weight_source, model=args.model
            )
    except (OSError, ValueError, ModuleNotFoundError) as e:
        print(f"effnet predict: {e}", file=sys.stderr)
        return 1
    for path, rows in zip(args.images, results):
        print(path)
        for rank, (name, prob) in enumerate(rows, 1):
            print(f"  {rank}. {prob:7.2%}  {name}")
    return 0
