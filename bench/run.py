"""Run tuner's benchmarks: `python bench/run.py [--quick] [...]`, the same as `python -m tuner bench`.

The measurements live in `tuner/bench.py` (the engine); this file only makes them runnable from a
checkout without installing the package. `--help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
