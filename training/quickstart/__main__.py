"""``python -m facepriv.training.quickstart`` = ``facepriv quickstart``."""

import sys

from .cli import main

raise SystemExit(main(sys.argv[1:]))
