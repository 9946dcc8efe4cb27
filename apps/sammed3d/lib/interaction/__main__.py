"""`python -m lib.interaction ...` runs the click-simulation evaluation (see evaluate.py)."""
import sys

from .evaluate import main

sys.exit(main())
