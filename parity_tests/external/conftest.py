"""External parity runs only in the .venv-ext environment that `.ci/external` builds.

There it sets EFFNET_EXTERNAL=1, so a missing library is an error; in the main venv (no torchvision, timm or
efficientnet_pytorch) this folder is not collected at all.
"""

import importlib.util
import os

_LIBS = ("torchvision", "timm", "efficientnet_pytorch")

if not os.environ.get("EFFNET_EXTERNAL") and not all(importlib.util.find_spec(m) for m in _LIBS):
    collect_ignore_glob = ["test_*.py"]
