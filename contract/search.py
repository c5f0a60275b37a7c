"""kduflow's typed search attributes: which cluster, release, namespace and operation a workflow is
about, and how it ended, so ``temporal workflow list --query 'KduRelease="web-1"'`` finds it.

All keywords. Register them once per Temporal namespace (the dev-server setups of this repository
pass ``--search-attribute``)::

    temporal operator search-attribute create --namespace default \\
        --name KduCluster --type Keyword --name KduRelease --type Keyword \\
        --name KduNamespace --type Keyword --name KduOperation --type Keyword \\
        --name KduOutcome --type Keyword

The client (``kduflow/client.py``) sets what it knows at start; workflows upsert only what the client
could not know (a generated release name, a resolved namespace, the outcome) and only when their
start carried kduflow's attributes, which proves the namespace has them registered (an upsert of an
unregistered attribute would fail every workflow task).
"""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

KDU_CLUSTER = SearchAttributeKey.for_keyword("KduCluster")
KDU_RELEASE = SearchAttributeKey.for_keyword("KduRelease")
KDU_NAMESPACE = SearchAttributeKey.for_keyword("KduNamespace")
#: "install", "upgrade", "rollback", "scale", "uninstall", "status", ..., "repo-add" (see the client).
KDU_OPERATION = SearchAttributeKey.for_keyword("KduOperation")
#: Upserted when the workflow ends: one of OUTCOMES.
KDU_OUTCOME = SearchAttributeKey.for_keyword("KduOutcome")

ALL_KEYS = (KDU_CLUSTER, KDU_RELEASE, KDU_NAMESPACE, KDU_OPERATION, KDU_OUTCOME)
OUTCOME_SUCCEEDED = "succeeded"
OUTCOME_FAILED = "failed"
OUTCOME_ROLLED_BACK = "rolled-back"
OUTCOME_CANCELLED = "cancelled"
OUTCOMES = (OUTCOME_SUCCEEDED, OUTCOME_FAILED, OUTCOME_ROLLED_BACK, OUTCOME_CANCELLED)


def start_attributes(
    cluster: str, operation: str, release: str = "", namespace: str = ""
) -> TypedSearchAttributes:
    """The attributes a workflow starts with: cluster and operation, release and namespace when known."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(KDU_CLUSTER, cluster),
        SearchAttributePair(KDU_OPERATION, operation),
    ]
    if release:
        pairs.append(SearchAttributePair(KDU_RELEASE, release))
    if namespace:
        pairs.append(SearchAttributePair(KDU_NAMESPACE, namespace))
    return TypedSearchAttributes(pairs)


def dev_server_args() -> list[str]:
    """``temporal server start-dev`` arguments registering every kduflow search attribute."""
    args: list[str] = []
    for key in ALL_KEYS:
        args += ["--search-attribute", f"{key.name}=Keyword"]
    return args


__all__ = [
    "ALL_KEYS",
    "KDU_CLUSTER",
    "KDU_NAMESPACE",
    "KDU_OPERATION",
    "KDU_OUTCOME",
    "KDU_RELEASE",
    "OUTCOMES",
    "OUTCOME_CANCELLED",
    "OUTCOME_FAILED",
    "OUTCOME_ROLLED_BACK",
    "OUTCOME_SUCCEEDED",
    "dev_server_args",
    "start_attributes",
]
