"""Moved to lib.synthetic.shapes (one package for synthetic data). This alias keeps code written against
the old path importing while it is updated; new code imports lib.synthetic.shapes."""
from ..synthetic.shapes import *  # noqa: F401,F403
