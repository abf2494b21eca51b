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
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS),
                        help=f"base configuration (default {DEFAULT_PRESET})")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the workdir")
    parser.add_argument("--workdir", action="append", help="where checkpoints, metrics and plots go (config key "
                        "`workdir`)")  # fmt: skip
    parser.add_argument(
        "--data",
        action="append",
        help="'digits', 'synthetic', an image folder or `effnet prepare` shards (config key `data`)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def one_value(flag: str, values):
    """The value of a flag that argparse collected with `action="append"`: given once (or repeated with the same
    value). Two different values are refused, naming both, rather than the last one winning silently.

    Raises:
        ValueError: one line naming the flag and its values.
    """
    if not isinstance(values, list):  # a Namespace built in code may hold the value itself
        return values
    if not values:
        return None
    if len(set(values)) > 1:
        raise ValueError(f"{flag} is given {len(values)} times with different values "
                         f"({', '.join(map(repr, values))}); give it once")  # fmt: skip
    return values[0]


def merged_overrides(sets: list[str], flags: dict[str, tuple[str, object]]) -> list[str]:
    """`--set KEY=VALUE` items plus the flags that stand for a config key (`flags`: key -> (flag, value or None))
    as one list of `key=value`. A key given two different values (`--set` twice, or `--set` and its own flag) is
    refused, naming both: neither may win silently.

    Raises:
        ValueError: one line naming the key and both places.
    """
    given = [(f"--set {item}", item) for item in sets]
    given += [(f"{flag} {value}", f"{key}={value}") for key, (flag, value) in flags.items() if value is not None]
    seen: dict[str, tuple[str, str]] = {}
    for where, item in given:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            continue  # apply_overrides says what is wrong with it
        if key in seen and seen[key][1] != value:
            raise ValueError(f"config key {key!r} is given two values: {seen[key][0]!r} and {where!r}; give one")
        seen.setdefault(key, (where, value))
    return [item for _, item in given]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config the command line asks for.

    Raises:
        ValueError: an unknown preset or key, a bad value, or flags that disagree (one line naming both).
    """
    preset = one_value("--preset", args.preset) or DEFAULT_PRESET
    flags = {key: (f"--{key}", one_value(f"--{key}", getattr(args, key))) for key in ("workdir", "data")}
    cfg = from_preset(preset, merged_overrides(args.set, flags))
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
