"""Re-export of :mod:`contract.models` (the contract moved there; kept for existing importers)."""

from contract.models import *  # noqa: F401,F403
from contract.models import __all__ as __all__  # noqa: F401
