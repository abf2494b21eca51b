import sys

from effnet_jax.cli import main

sys.exit(main())
