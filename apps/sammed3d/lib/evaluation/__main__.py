"""`python -m lib.evaluation ...`: the evaluation command (lib/evaluation/command.py)."""
import sys

from .command import main

sys.exit(main())
