"""kduflow's error tree, helm stderr classification, and conversion to Temporal errors.

Every failure an activity reports is one of these classes. At the activity boundary it becomes a
``temporalio.exceptions.ApplicationError`` whose ``type`` is the class name and whose
``non_retryable`` follows the branch of the tree, so workflows can list type names in
``RetryPolicy(non_retryable_error_types=...)`` or branch on ``ActivityError.cause.type``::

    KduflowError                         (type_name, retryable, details)
    |-- PermanentError                   retryable=False: retrying cannot help
    |   |-- InvalidInput                 a field of the input is wrong (the message names it)
    |   |-- ChartNotFound                chart, chart version or its repository not found
    |   |-- RenderFailed                 template/parse/values-schema error while rendering
    |   |-- ReleaseNotFound              no such release (or no deployed revision to upgrade)
    |   |-- InvalidResource              the API server rejected a rendered object
    |   |-- ReleaseNameInUse             the name belongs to a release kduflow did not create
    |   |-- ReleaseFailed                helm ran and wrote a failed revision (details: revision,
    |   |   |                            status, description)
    |   |   |-- UpgradeFailed            an upgrade wrote a failed revision (atomic=false)
    |   |   |-- UpgradeRolledBack        helm rolled a failed upgrade back (details:
    |   |   |                            failed_revision, restored_revision)
    |   |   `-- RollbackFailed           a rollback wrote a failed revision
    |   |-- ReplicaKeyNotFound           ScaleKdu: no replica key in the values
    |   |-- ReplicaKeyAmbiguous          ScaleKdu: several candidate replica keys
    |   |-- ClusterNotFound              no credentials registered for the cluster
    |   |-- CredentialsInvalid           401/403, bad certificate, registry login required
    |   |-- RepoNotFound                 a helm repository is not registered
    |   |-- UrlNotAllowed                a URL or host outside the operator's URL policy
    |   |-- ClusterExists                InitCluster would replace a registered cluster's
    |   |                                credentials without replace_credentials
    |   `-- UnsupportedHelm              helm binary missing, too old, or rejected a flag
    `-- RetryableError                   retryable=True: Temporal retries with backoff
        |-- ClusterUnreachable           connection refused, DNS, i/o or TLS handshake timeout
        |-- ServerError                  5xx, etcd errors, "server is currently unable..."
        |-- OperationInProgress          another helm operation holds the release
        |-- ProcessTimeout               the runner killed a process that overran its timeout
        `-- HelmError                    helm failed and no rule above recognised why

Messages are short, contain no chart values or credentials, and end with the last relevant
lines of helm's stderr.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from temporalio.exceptions import ApplicationError

# The type names are the contract's (contract/errors.py); the classes below carry them as class names.
from contract.errors import NON_RETRYABLE_TYPES as NON_RETRYABLE_TYPES
from contract.errors import RETRYABLE_TYPES as RETRYABLE_TYPES

#: Longest message kept from helm's stderr.
MAX_MESSAGE_CHARS = 600
#: How many relevant stderr lines a message keeps (helm's error is the last one or two).
MAX_STDERR_LINES = 4
#: Secret strings shorter than this are not scrubbed (they would garble every message).
MIN_SECRET_LEN = 6


class KduflowError(Exception):
    """Base of every kduflow failure.

    Args:
        message: short human-readable text without values or secrets.
        details: JSON-serialisable facts for the workflow (revision numbers, statuses), never secrets.
    """

    retryable: bool = True

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    @property
    def type_name(self) -> str:
        """The ``ApplicationError.type`` workflows see: the class name."""
        return type(self).__name__


class PermanentError(KduflowError):
    retryable = False


class RetryableError(KduflowError):
    retryable = True


class InvalidInput(PermanentError):
    pass


class ChartNotFound(PermanentError):
    pass


class RenderFailed(PermanentError):
    pass


class ReleaseNotFound(PermanentError):
    pass


class InvalidResource(PermanentError):
    pass


class ReleaseNameInUse(PermanentError):
    pass


class ReleaseFailed(PermanentError):
    pass


class UpgradeFailed(ReleaseFailed):
    pass


class UpgradeRolledBack(ReleaseFailed):
    pass


class RollbackFailed(ReleaseFailed):
    pass


class ReplicaKeyNotFound(PermanentError):
    pass


class ReplicaKeyAmbiguous(PermanentError):
    pass


class ClusterNotFound(PermanentError):
    pass


class CredentialsInvalid(PermanentError):
    pass


class RepoNotFound(PermanentError):
    pass


class UnsupportedHelm(PermanentError):
    pass


class UrlNotAllowed(PermanentError):
    pass


class ClusterExists(PermanentError):
    pass


class ClusterUnreachable(RetryableError):
    pass


class ServerError(RetryableError):
    pass


class OperationInProgress(RetryableError):
    pass


class ProcessTimeout(RetryableError):
    pass


class HelmError(RetryableError):
    pass



# Ordered rules: the FIRST match wins, so specific phrases sit above generic ones. Patterns are
# matched case-insensitively against the relevant stderr lines (warnings removed).
_RULES: tuple[tuple[re.Pattern[str], type[KduflowError]], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), cls)
    for pattern, cls in (
        # Lock held by another helm process; must precede everything because the message also
        # names the verb and release.
        (r"another operation \(install/upgrade/rollback\) is in progress", OperationInProgress),
        (r"cannot re-?use a name that is still in use", ReleaseNameInUse),
        # helm's storage lookup ("Error: release: not found"), before the chart "not found" rules.
        (r"release: not found|release not found|release \"[^\"]*\" not found", ReleaseNotFound),
        # Rendering: templates, YAML produced by templates, values schema. Early, because a chart's
        # own `fail`/`required` message is free text that may contain any other rule's words.
        (r"values don't meet the specifications of the schema|values schema", RenderFailed),
        (r"execution error at|parse error|template: ", RenderFailed),
        (r"yaml parse error|error converting yaml to json", RenderFailed),
        (r"function \"[^\"]*\" not defined|chart requires kubeversion", RenderFailed),
        # Credentials before connectivity: "Kubernetes cluster unreachable: the server has asked
        # for the client to provide credentials" is a credentials problem, not a network one.
        (r"\bunauthorized\b|status code:? 401|you must be logged in|provide credentials", CredentialsInvalid),
        (r"\bforbidden\b|status code:? 403", CredentialsInvalid),
        (r"x509:|certificate signed by unknown authority|failed to verify certificate", CredentialsInvalid),
        # A flag this helm does not know is our bug or a helm we cannot drive: never retry.
        (r"unknown (shorthand )?flag|flag needs an argument", UnsupportedHelm),
        (r"invalid argument \".*\" for \"--", UnsupportedHelm),
        # Chart resolution, before connectivity: a repository index fetch error names a URL.
        (r"no chart (version|name) found", ChartNotFound),
        (r"chart \"[^\"]*\" (matching [^ ]+ |version \"[^\"]*\" )?not found", ChartNotFound),
        (r"\brepo [^ ]+ not found|repository [^ ]+ not found|no repository definition", ChartNotFound),
        (r"failed to fetch .*\b404\b|404 not found|status code:? 404", ChartNotFound),
        (r"oci://\S+: not found|manifest unknown", ChartNotFound),
        (r"path \"[^\"]*\" not found|file .* does not appear to be a .*chart", ChartNotFound),
        (r"is not a valid chart repository or cannot be reached", HelmError),
        # Connectivity to the Kubernetes API.
        (r"connection refused|no such host|i/o timeout|tls handshake timeout", ClusterUnreachable),
        (r"network is unreachable", ClusterUnreachable),
        (r"connection reset by peer|cluster unreachable|no route to host|dial tcp", ClusterUnreachable),
        # Server-side trouble that usually passes.
        (r"etcdserver|the server is currently unable|internal error occurred", ServerError),
        (r"unable to return a response in the time allotted|too many requests", ServerError),
        (r"status code:? 5\d\d", ServerError),
        (r"\b50[0-4] (internal server error|bad gateway|service unavailable|gateway timeout)", ServerError),
        # The API server (or helm's client-side validation) rejected a rendered object.
        (r"unable to build kubernetes objects|is invalid|error validating", InvalidResource),
        (r"no matches for kind|resource mapping not found|admission webhook .* denied", InvalidResource),
        (r"exists and cannot be imported", InvalidResource),
        (r"rendered manifests contain a resource that already exists", InvalidResource),
        (r"apply failed with \d+ conflicts?|conflict with \"", InvalidResource),
        # Release lookups.
        (r"has no deployed releases", ReleaseNotFound),
        (r"invalid release name|release name .* (exceeds|too long)", InvalidInput),
    )
)

# Lines that are never the reason for a failure: helm 4 deprecation warnings, client-go
# warnings, kubeconfig permission warnings.
_NOISE = re.compile(r"^(warning:|level=(warn|info|debug)|.*\bdeprecated\b|W\d{4} )", re.IGNORECASE)


def relevant_lines(stderr: str, limit: int = MAX_STDERR_LINES) -> list[str]:
    """The last ``limit`` non-empty stderr lines that are not warnings."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not _NOISE.match(ln)]
    return (kept or lines)[-limit:]


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every secret string (at least MIN_SECRET_LEN long) of ``secrets`` by ``<redacted>``."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


def short_message(stderr: str, secrets: Iterable[str] = ()) -> str:
    """helm's reason in one short line: relevant lines joined, scrubbed, truncated at the front."""
    text = " | ".join(relevant_lines(stderr))
    text = scrub(text, secrets)
    if len(text) > MAX_MESSAGE_CHARS:
        text = "..." + text[-(MAX_MESSAGE_CHARS - 3) :]
    return text


def classify_helm_stderr(
    stderr: str | bytes, returncode: int | None, *, secrets: Iterable[str] = (), context: str = ""
) -> KduflowError:
    """Map a failed helm (or kubectl) run to one error of the tree.

    Args:
        stderr: the process's stderr; warnings in it are ignored.
        returncode: the exit status (kept in ``details``).
        secrets: strings to scrub from the message (e.g. string values of the chart values).
        context: a prefix for the message, e.g. ``"helm upgrade demo"``.

    Returns:
        The first matching rule's class, else ``HelmError`` (retryable).
    """
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    reason_lines = relevant_lines(text)
    haystack = "\n".join(reason_lines)
    cls: type[KduflowError] = HelmError
    for pattern, candidate in _RULES:
        if any(pattern.search(line) for line in reason_lines) or pattern.search(haystack):
            cls = candidate
            break
    reason = short_message(text, secrets) or f"exit status {returncode}"
    message = f"{context}: {reason}" if context else reason
    return cls(message, details={"returncode": returncode})


def to_application_error(err: KduflowError) -> ApplicationError:
    """The Temporal form of ``err``: ``type`` = class name, ``non_retryable`` = not retryable.

    ``details`` (if any) travel as the single detail argument, so a workflow reads them with
    ``err.cause.details[0]``.
    """
    args: tuple[Any, ...] = (err.details,) if err.details else ()
    return ApplicationError(err.message, *args, type=err.type_name, non_retryable=not err.retryable)
