"""Re-export of :mod:`contract.validation` (validation moved there; kept for existing importers)."""

from contract.validation import *  # noqa: F401,F403
from contract.validation import __all__ as __all__  # noqa: F401
