"""Re-export of :mod:`contract.cluster` (the contract moved there; kept for existing importers)."""

from contract.cluster import *  # noqa: F401,F403
from contract.cluster import __all__ as __all__  # noqa: F401
