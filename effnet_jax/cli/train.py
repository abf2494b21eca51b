"""`effnet train`: run training from a preset plus `--set KEY=VALUE` overrides.

effnet train                                   # b0 on the embedded digits, a few minutes on a laptop
effnet train --preset b0 --data /imagenet/train --set val_data=/imagenet/val --set global_batch=1024
effnet train --preset smoke                    # 2 steps on random tensors
python -m effnet_jax.train --resume --workdir runs/digits
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..train.config import DEFAULT_PRESET, PRESETS, TrainConfig, from_preset, to_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="base configuration")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the workdir")
    parser.add_argument("--workdir", help="where checkpoints, metrics and plots go (config key `workdir`)")
    parser.add_argument(
        "--data", help="'digits', 'synthetic', an image folder or `effnet prepare` shards (config key `data`)"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    extra = [f"{k}={v}" for k, v in (("workdir", args.workdir), ("data", args.data)) if v is not None]
    cfg = from_preset(args.preset, [*args.set, *extra])
    return dataclasses.replace(cfg, resume=True) if args.resume else cfg


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"effnet train: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_json(cfg))
        return 0
    from ..train.checkpoint import quiet_failed_writes
    from ..train.guard import PREEMPTED_EXIT
    from ..train.loop import NonFiniteLoss, Preempted, train

    quiet_failed_writes()

    try:
        train(cfg)
    except Preempted as e:
        print(f"effnet train: {e}", file=sys.stderr)
        return PREEMPTED_EXIT
    except KeyboardInterrupt:  # a second Ctrl-C: out at once, without the checkpoint of the step in progress
        print(f"effnet train: interrupted; the latest complete checkpoint in {cfg.workdir} is kept (--resume "
              "continues from it)", file=sys.stderr)  # fmt: skip
        return 130
    except NonFiniteLoss as e:
        print(f"effnet train: stopped: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ModuleNotFoundError) as e:  # bad config, data or init weights: one line
        print(f"effnet train: error: {e}", file=sys.stderr)
        return 2
    return 0
