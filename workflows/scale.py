"""Replica-key detection for ScaleKdu (pure, N2VC-compatible).

N2VC scales a KDU by ``helm upgrade --set <resource>.<key>=<n>`` where ``<key>`` is ``replicaCount``
or ``replicas``, found at the top level of the values or under ``resource_name``. It read the chart
defaults from the repository (``helm show values``) and, in ``get_scale_count``, the user-supplied
values first. We do the same with what the release itself reports, which also works for OCI and
local charts and for releases whose repository is gone:

1. the user-supplied values (``helm get values``): a key the user set wins, so a chart that declares
   both keys can still be scaled if the user picked one;
2. otherwise the computed values (``helm get values --all``, i.e. chart defaults merged).

Both keys at one place is ambiguous (N2VC raised too): scaling the wrong one silently does nothing.
A key whose value is an object or a list (``replicas: {min: 1}``) is not a replica count and is
ignored. Errors are non-retryable ``ApplicationError``s whose message says where we looked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from temporalio.exceptions import ApplicationError

#: Searched in this order; both present at one place is an error, not a preference.
REPLICA_KEYS = ("replicaCount", "replicas")
REPLICA_KEY_NOT_FOUND = "ReplicaKeyNotFound"
REPLICA_KEY_AMBIGUOUS = "ReplicaKeyAmbiguous"


@dataclass(frozen=True)
class ReplicaKey:
    """The values key to change: ``path`` is dotted (``replicaCount``, ``db.replicas``)."""

    path: str
    #: Its value before scaling (as found), for the result message.
    current: Any
    #: "user values" or "chart values": where it was found.
    source: str


def _node_at(values: Mapping[str, Any], resource_name: str) -> Mapping[str, Any] | None:
    node: Any = values
    for key in resource_name.split(".") if resource_name else []:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, Mapping) else None


def _candidates(node: Mapping[str, Any] | None) -> list[str]:
    if node is None:
        return []
    # A bool is not a count either (replicas: true would be a chart bug, not a target).
    return [k for k in REPLICA_KEYS if k in node and not isinstance(node[k], Mapping | list | bool)]


def find_replica_key(
    user_values: Mapping[str, Any] | None, all_values: Mapping[str, Any] | None, resource_name: str = ""
) -> ReplicaKey:
    """Find the replica key to change for ``resource_name`` ("" = top level).

    Raises:
        ApplicationError: ``ReplicaKeyAmbiguous`` if both keys sit at the chosen place,
            ``ReplicaKeyNotFound`` if neither the user values nor the chart values have one.
            Both are non-retryable: scaling cannot succeed without a different input or chart.
    """
    prefix = f"{resource_name}." if resource_name else ""
    where = f"under '{resource_name}'" if resource_name else "at the top level"
    for source, values in (("user values", user_values or {}), ("chart values", all_values or {})):
        node = _node_at(values, resource_name)
        found = _candidates(node)
        if len(found) > 1:
            raise ApplicationError(
                f"both {prefix}replicaCount and {prefix}replicas are set in the {source}: "
                "cannot tell which one the chart uses",
                {"resource_name": resource_name, "keys": [prefix + k for k in found]},
                type=REPLICA_KEY_AMBIGUOUS,
                non_retryable=True,
            )
        if found:
            assert node is not None
            return ReplicaKey(path=prefix + found[0], current=node[found[0]], source=source)
    raise ApplicationError(
        f"no replica key found {where}: searched {prefix}replicaCount and {prefix}replicas "
        "in the release's user values and chart values",
        {"resource_name": resource_name, "searched": [prefix + k for k in REPLICA_KEYS]},
        type=REPLICA_KEY_NOT_FOUND,
        non_retryable=True,
    )
