"""Write effnet_spec/data/imagenet_classes.txt: the 1000 ImageNet-1k class names, one per line, in index order.

The names come from torchvision (`torchvision.models._meta._IMAGENET_CATEGORIES`), so run this inside an
environment that has torchvision, e.g. the external-parity venv:

    bash .ci/external --co -q >/dev/null   # builds .venv-ext once
    .venv-ext/bin/python tools/extract_imagenet_classes.py
"""

from __future__ import annotations

import os
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "effnet_spec" / "data" / "imagenet_classes.txt"


def main() -> int:
    from torchvision.models._meta import _IMAGENET_CATEGORIES as names

    if len(names) != 1000 or any(not n or "\n" in n for n in names):
        print(f"unexpected torchvision category list ({len(names)} names)", file=sys.stderr)
        return 1
    tmp = OUT.with_name(OUT.name + ".tmp")
    tmp.write_text("".join(n + "\n" for n in names), encoding="utf-8")
    os.replace(tmp, OUT)
    print(f"wrote {len(names)} names to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
