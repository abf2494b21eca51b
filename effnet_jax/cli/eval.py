"""`effnet eval --checkpoint DIR`: top-1/top-5 of a training checkpoint (EMA weights by default).

effnet eval --checkpoint runs/digits                 # the digits val split the run trained against
effnet eval --checkpoint runs/b0 --data /imagenet/val --no-ema
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="training workdir (or its checkpoints/ folder)")
    parser.add_argument("--data", help="'digits', 'synthetic', an image folder or shards (default: the run's val data)")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    parser.add_argument("--batch", type=int, help="global eval batch (default: the run's eval_batch)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from ..train.config import MAX_BATCH, MAX_STEPS
    from ._flags import out_of_range

    problem = out_of_range(args, {"batch": (1, MAX_BATCH), "step": (0, MAX_STEPS)})
    if problem:
        print(f"effnet eval: error: {problem}", file=sys.stderr)
        return 2
    from ..train.evaluate import evaluate_checkpoint

    try:
        r = evaluate_checkpoint(args.checkpoint, data=args.data, ema=not args.no_ema, step=args.step, batch=args.batch)
    except (FileNotFoundError, ValueError) as e:
        print(f"effnet eval: error: {e}", file=sys.stderr)
        return 2
    if args.json:  # strict JSON: a NaN (labels the head cannot score) is null
        from ..train.metrics import strict_json

        print(strict_json(r))
    else:
        print(f"step {r['step']} ({r['weights']} weights) on {r['data']}: top-1 {r['top1']:.4f}  "
              f"top-5 {r['top5']:.4f}  loss {r['loss']:.4f}  ({int(r['count'])} images"
              f"{': ' + r['files'] if r['files'] else ''})")  # fmt: skip
    return 0
