"""A Kubernetes API emulator that real helm 3/4 and kubectl talk to (dev/test tooling).

See sandbox/README.md. The public API is ``SandboxCluster``.
"""

from .api import FAIL_ANNOTATION, LOG_ANNOTATION, NEVER_READY_ANNOTATION
from .cluster import SandboxCluster

__all__ = ["SandboxCluster", "NEVER_READY_ANNOTATION", "FAIL_ANNOTATION", "LOG_ANNOTATION"]
