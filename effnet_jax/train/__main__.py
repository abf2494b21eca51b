"""`python -m effnet_jax.train ...` is `effnet train ...`."""

import sys

from effnet_jax.cli import main

sys.exit(main(["train", *sys.argv[1:]], fast_malloc=True))
