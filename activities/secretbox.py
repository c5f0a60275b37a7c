"""Re-export of :mod:`kduflow.secretbox` (moved there so the client's codec needs no activity code)."""

from kduflow.secretbox import *  # noqa: F401,F403
from kduflow.secretbox import __all__ as __all__  # noqa: F401
