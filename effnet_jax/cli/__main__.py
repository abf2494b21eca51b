"""`python -m effnet_jax.cli ...` is `effnet ...`."""

import sys

from effnet_jax.cli import main

sys.exit(main())
