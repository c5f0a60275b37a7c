"""The error type names of kduflow's contract: ``ApplicationError.type`` of every failure a caller sees.

Names only: the exception classes with behaviour (helm stderr classification, conversion to
Temporal errors) live in ``activities/errors.py``, which takes its lists from here; the client
(``kduflow/client.py``) maps each name to one exception class of its own. A workflow fails with an
``ApplicationError`` whose ``type`` is one of :data:`ERROR_TYPES`; ``non_retryable`` is true for
:data:`NON_RETRYABLE_TYPES` (workflows also re-raise retryable types as final once their own
retries are spent, e.g. ``OperationInProgress`` with ``wait_for_lock=false``).
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError, FailureError

INVALID_INPUT = "InvalidInput"

#: Every non-retryable type name, for ``RetryPolicy(non_retryable_error_types=...)``.
NON_RETRYABLE_TYPES: tuple[str, ...] = (
    "InvalidInput", "ChartNotFound", "RenderFailed", "ReleaseNotFound", "InvalidResource",
    "ReleaseNameInUse", "ReleaseFailed", "UpgradeFailed", "UpgradeRolledBack", "RollbackFailed",
    "ReplicaKeyNotFound", "ReplicaKeyAmbiguous", "ClusterNotFound", "CredentialsInvalid",
    "RepoNotFound", "UnsupportedHelm", "UrlNotAllowed", "ClusterExists",
)  # fmt: skip

#: Types Temporal retries with backoff when an activity raises them.
RETRYABLE_TYPES: tuple[str, ...] = (
    "ClusterUnreachable", "ServerError", "OperationInProgress", "ProcessTimeout", "HelmError",
)  # fmt: skip

#: Every type name, non-retryable first.
ERROR_TYPES: tuple[str, ...] = NON_RETRYABLE_TYPES + RETRYABLE_TYPES

#: Types that specialise another one (a caller catching ``ReleaseFailed`` also catches these).
PARENT_TYPES: dict[str, str] = {
    "UpgradeFailed": "ReleaseFailed",
    "UpgradeRolledBack": "ReleaseFailed",
    "RollbackFailed": "ReleaseFailed",
}



def application_cause(err: BaseException) -> ApplicationError | None:
    """The first ApplicationError in ``err``'s cause chain (WorkflowFailureError or ActivityError
    -> ApplicationError), or None."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ApplicationError):
            return seen
        seen = seen.cause if isinstance(seen, FailureError) else seen.__cause__
    return None


__all__ = [
    "ERROR_TYPES", "INVALID_INPUT", "NON_RETRYABLE_TYPES", "PARENT_TYPES", "RETRYABLE_TYPES",
    "application_cause",
]  # fmt: skip
