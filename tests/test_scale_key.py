"""workflows/scale.py: N2VC's replica key detection (replicaCount / replicas, top level or component)."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from workflows.scale import ReplicaKey, find_replica_key


@pytest.mark.parametrize(
    "user, chart, resource, expected",
    [
        pytest.param(
            {},
            {"replicaCount": 1},
            "",
            ReplicaKey("replicaCount", 1, "chart values"),
            id="top-level replicaCount",
        ),
        pytest.param(
            {}, {"replicas": 2}, "", ReplicaKey("replicas", 2, "chart values"), id="top-level replicas"
        ),
        pytest.param(
            {"replicaCount": 3},
            {"replicaCount": 3},
            "",
            ReplicaKey("replicaCount", 3, "user values"),
            id="user value found first",
        ),
        pytest.param(
            {},
            {"db": {"replicas": 1}, "replicaCount": 9},
            "db",
            ReplicaKey("db.replicas", 1, "chart values"),
            id="under component, top level ignored",
        ),
        pytest.param(
            {},
            {"db": {"primary": {"replicaCount": 1}}},
            "db.primary",
            ReplicaKey("db.primary.replicaCount", 1, "chart values"),
            id="nested component path",
        ),
        pytest.param(
            {"replicaCount": 2},
            {"replicaCount": 1, "replicas": 1},
            "",
            ReplicaKey("replicaCount", 2, "user values"),
            id="user choice settles an ambiguous chart",
        ),
        pytest.param(
            {},
            {"replicaCount": 1, "replicas": {"min": 1}},
            "",
            ReplicaKey("replicaCount", 1, "chart values"),
            id="object-valued replicas is not a count",
        ),
        pytest.param(
            None,
            {"replicaCount": None},
            "",
            ReplicaKey("replicaCount", None, "chart values"),
            id="null default still names the key",
        ),
    ],
)
def test_find_replica_key_detects(user, chart, resource, expected):
    assert find_replica_key(user, chart, resource) == expected


@pytest.mark.parametrize(
    "user, chart, resource, error_type, needles",
    [
        pytest.param(
            {},
            {"replicaCount": 1, "replicas": 1},
            "",
            "ReplicaKeyAmbiguous",
            ["both replicaCount and replicas"],
            id="both keys in chart defaults",
        ),
        pytest.param(
            {"db": {"replicaCount": 1, "replicas": 2}},
            {},
            "db",
            "ReplicaKeyAmbiguous",
            ["db.replicaCount and db.replicas", "user values"],
            id="both keys under component in user values",
        ),
        pytest.param(
            {},
            {"image": "nginx"},
            "",
            "ReplicaKeyNotFound",
            ["at the top level", "replicaCount and replicas"],
            id="neither key",
        ),
        pytest.param(
            {},
            {"replicaCount": 1},
            "db",
            "ReplicaKeyNotFound",
            ["under 'db'", "db.replicaCount"],
            id="component absent, top-level key not used",
        ),
        pytest.param(
            {}, {"db": "not-a-map"}, "db", "ReplicaKeyNotFound", ["under 'db'"], id="component not a map"
        ),
        pytest.param(
            {}, {"replicas": True}, "", "ReplicaKeyNotFound", ["top level"], id="bool is not a count"
        ),
        pytest.param(None, None, "", "ReplicaKeyNotFound", ["top level"], id="no values at all"),
    ],
)
def test_find_replica_key_refuses(user, chart, resource, error_type, needles):
    with pytest.raises(ApplicationError) as info:
        find_replica_key(user, chart, resource)
    assert info.value.type == error_type and info.value.non_retryable
    for needle in needles:
        assert needle in info.value.message
