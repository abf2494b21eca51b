"""Draw the bar chart of a bench JSON (a separate step from the timing): `python benchmarks/plot.py FILE.json`."""

import sys

from effnet_jax.bench.report import plot

if __name__ == "__main__":
    for path in sys.argv[1:]:
        plot(path, path.removesuffix(".json") + ".png")
