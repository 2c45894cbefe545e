"""Run tuner's benchmarks: `python bench/run.py [--quick] [...]`, the same as `tuner bench`.

The measurements live in `tuner.bench` (inside the package, so the installed `tuner bench` has them);
this file is the runner next to the results it writes into `bench/results/`. `--help` lists the options.
"""

import sys

from tuner.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
