"""Moved to lib.synthetic.phantoms (one package for synthetic data). This alias keeps code written against
the old path importing while it is updated; new code imports lib.synthetic.phantoms."""
from ..synthetic.phantoms import *  # noqa: F401,F403
