"""The tuner studio: `python app.py [--host H] [--port P] [--share] [--auth user:pass]`.

Launch only: the flags, the app and its shutdown live in `tuner.ui.serve`. A Hugging Face Space runs
this file (app_file: app.py); importing it builds nothing and starts nothing.
"""

import sys

from tuner.ui.serve import build_app, main, parse_args

__all__ = ["build_app", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
