"""Pure units of the sandbox: selectors, patches, protobuf decoding, path templates."""

from __future__ import annotations

import base64

import pytest

from sandbox import patch, protobuf
from sandbox.selectors import labels_match, match_labels_selector, parse_field_selector, parse_label_selector
from sandbox.server import path_template

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param("", True, id="empty"),
        pytest.param("app=web", True, id="eq"),
        pytest.param("app==web", True, id="eqeq"),
        pytest.param("app=db", False, id="eq-miss"),
        pytest.param("app!=db", True, id="neq"),
        pytest.param("app!=web", False, id="neq-miss"),
        pytest.param("missing!=x", True, id="neq-absent"),
        pytest.param("env in (prod, staging)", True, id="in"),
        pytest.param("env in (dev)", False, id="in-miss"),
        pytest.param("env notin (dev,qa)", True, id="notin"),
        pytest.param("env notin (prod)", False, id="notin-miss"),
        pytest.param("tier", True, id="exists"),
        pytest.param("nope", False, id="exists-miss"),
        pytest.param("!nope", True, id="not-exists"),
        pytest.param("!tier", False, id="not-exists-miss"),
        pytest.param("app=web,tier=front,env in (prod)", True, id="and"),
        pytest.param("app=web,tier=back", False, id="and-miss"),
        pytest.param("app.kubernetes.io/name=web", False, id="prefixed-key"),
    ],
)
def test_label_selector(selector: str, expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), LABELS) is expected


@pytest.mark.parametrize(
    "bad", ["app=(", "a b c", "env in (prod", "=x", "app=web,", "app=we b", "k=" + "v" * 64]
)
def test_label_selector_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_label_selector(bad)


def test_match_labels_selector_object() -> None:
    reqs = match_labels_selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod"]},
                {"key": "gone", "operator": "DoesNotExist"},
            ],
        }
    )
    assert labels_match(reqs, LABELS)
    assert not labels_match(reqs, {**LABELS, "gone": "1"})


def test_field_selector() -> None:
    obj = {"metadata": {"name": "a", "namespace": "ns1"}, "status": {"phase": "Running"}}
    assert parse_field_selector("metadata.name=a")(obj)
    assert parse_field_selector("metadata.name==a,metadata.namespace=ns1")(obj)
    assert not parse_field_selector("metadata.name!=a")(obj)
    assert parse_field_selector("status.phase=Running")(obj)
    assert not parse_field_selector("metadata.namespace=ns2")(obj)
    with pytest.raises(ValueError):
        parse_field_selector("metadata.name")


# ---- patches ----


DEPLOYMENT = {
    "metadata": {"name": "web", "labels": {"a": "1"}},
    "spec": {
        "replicas": 1,
        "template": {
            "spec": {
                "serviceAccountName": "old",
                "containers": [
                    {
                        "name": "app",
                        "image": "nginx:1",
                        "ports": [{"containerPort": 80, "name": "http"}],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    },
                    {"name": "side", "image": "busybox"},
                ],
            }
        },
    },
}


def test_strategic_merge_by_name_and_null_deletes() -> None:
    p = {
        "spec": {
            "replicas": None,
            "template": {
                "spec": {
                    "serviceAccountName": "new",
                    "containers": [
                        {
                            "name": "app",
                            "image": "nginx:2",
                            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                        }
                    ],
                }
            },
        }
    }
    out = patch.strategic_merge(DEPLOYMENT, p)
    assert "replicas" not in out["spec"]
    spec = out["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "new"
    assert [c["name"] for c in spec["containers"]] == ["app", "side"]  # merged, not replaced
    app = spec["containers"][0]
    assert app["image"] == "nginx:2" and app["ports"] == [{"containerPort": 80, "name": "http"}]
    assert app["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
    ]
    assert DEPLOYMENT["spec"]["replicas"] == 1  # input untouched


def test_strategic_merge_directives() -> None:
    p = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
                    "containers": [{"name": "app", "$patch": "delete"}],
                }
            }
        }
    }
    out = patch.strategic_merge(DEPLOYMENT, p)
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["side"]
    ordered = patch.strategic_merge(
        DEPLOYMENT,
        {
            "spec": {
                "template": {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}]}}
            }
        },
    )
    assert [c["name"] for c in ordered["spec"]["template"]["spec"]["containers"]] == ["side", "app"]
    replaced = patch.strategic_merge(DEPLOYMENT, {"spec": {"$patch": "replace", "replicas": 5}})
    assert replaced["spec"] == {"replicas": 5}
    retained = patch.strategic_merge(
        {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}},
        {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}},
    )
    assert retained["spec"]["strategy"] == {"type": "Recreate"}
    prim = patch.strategic_merge({"finalizers": ["a", "b"]}, {"$deleteFromPrimitiveList/finalizers": ["a"]})
    assert prim == {"finalizers": ["b"]}
    ports = patch.strategic_merge(
        {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]},
        {"ports": [{"port": 443, "targetPort": 8443}]},
    )
    assert ports["ports"][1] == {"port": 443, "name": "https", "targetPort": 8443}
    assert patch.strategic_merge({"args": ["a", "b"]}, {"args": ["c"]}) == {"args": ["c"]}


def test_json_merge_patch() -> None:
    out = patch.json_merge(
        DEPLOYMENT, {"metadata": {"labels": {"a": None, "b": "2"}}, "spec": {"replicas": 3}}
    )
    assert out["metadata"]["labels"] == {"b": "2"} and out["spec"]["replicas"] == 3
    assert len(out["spec"]["template"]["spec"]["containers"]) == 2


def test_json_patch() -> None:
    out = patch.json_patch(
        DEPLOYMENT,
        [
            {"op": "replace", "path": "/spec/replicas", "value": 4},
            {"op": "add", "path": "/metadata/labels/x~1y", "value": "z"},
            {"op": "remove", "path": "/spec/template/spec/containers/1"},
            {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "new"}},
            {"op": "copy", "from": "/spec/replicas", "path": "/spec/copied"},
            {"op": "move", "from": "/spec/copied", "path": "/spec/moved"},
            {"op": "test", "path": "/spec/moved", "value": 4},
        ],
    )
    assert out["spec"]["replicas"] == 4 and out["spec"]["moved"] == 4 and "copied" not in out["spec"]
    assert out["metadata"]["labels"]["x/y"] == "z"
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["app", "new"]
    with pytest.raises(patch.PatchError):
        patch.json_patch(DEPLOYMENT, [{"op": "test", "path": "/spec/replicas", "value": 9}])
    with pytest.raises(patch.PatchError):
        patch.json_patch(DEPLOYMENT, [{"op": "remove", "path": "/spec/nope"}])
    with pytest.raises(ValueError):
        patch.json_patch(DEPLOYMENT, {"op": "add"})
    with pytest.raises(ValueError):
        patch.json_patch(DEPLOYMENT, [{"op": "frobnicate", "path": "/a"}])


def test_server_side_apply_keeps_server_fields() -> None:
    existing = {
        "metadata": {"name": "s", "uid": "u1", "labels": {"old": "1"}},
        "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {}},
    }
    applied = {"metadata": {"name": "s", "labels": {"new": "2"}}, "spec": {"ports": [{"port": 81}]}}
    out = patch.server_side_apply(existing, applied)
    assert out["metadata"]["uid"] == "u1" and out["metadata"]["labels"] == {"old": "1", "new": "2"}
    assert out["spec"] == {"ports": [{"port": 81}]} and out["status"] == {"loadBalancer": {}}


# ---- protobuf ----


def _meta(name: str, namespace: str = "", labels: dict[str, str] | None = None) -> bytes:
    out = protobuf.enc_field(1, name)
    if namespace:
        out += protobuf.enc_field(3, namespace)
    return out + protobuf.enc_map(11, labels or {})


def test_protobuf_secret() -> None:
    raw = (
        protobuf.enc_field(1, _meta("sh.helm.release.v1.r.v1", "ns1", {"owner": "helm", "version": "1"}))
        + protobuf.enc_map(2, {"release": b"\x00\x01binary"})
        + protobuf.enc_field(3, "helm.sh/release.v1")
        + protobuf.enc_field(5, True)
    )
    obj = protobuf.decode(protobuf.encode_unknown("v1", "Secret", raw))
    assert obj["kind"] == "Secret" and obj["apiVersion"] == "v1"
    assert obj["metadata"] == {
        "name": "sh.helm.release.v1.r.v1",
        "namespace": "ns1",
        "labels": {"owner": "helm", "version": "1"},
    }
    assert base64.b64decode(obj["data"]["release"]) == b"\x00\x01binary"
    assert obj["type"] == "helm.sh/release.v1" and obj["immutable"] is True


def test_protobuf_configmap_namespace_and_other_kinds() -> None:
    cm = protobuf.decode(
        protobuf.encode_unknown(
            "v1", "ConfigMap", protobuf.enc_field(1, _meta("cm")) + protobuf.enc_map(2, {"k": "v"})
        )
    )
    assert cm["data"] == {"k": "v"}
    ns = protobuf.decode(
        protobuf.encode_unknown(
            "v1",
            "Namespace",
            protobuf.enc_field(1, _meta("ns9")) + protobuf.enc_field(2, protobuf.enc_field(1, "kubernetes")),
        )
    )
    assert ns["metadata"]["name"] == "ns9" and ns["spec"] == {"finalizers": ["kubernetes"]}
    dep = protobuf.decode(
        protobuf.encode_unknown("apps/v1", "Deployment", protobuf.enc_field(1, _meta("d", "x")))
    )
    assert dep == {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "x"},
                   "_sandbox_protobuf": "metadata-only"}


def test_protobuf_delete_options() -> None:
    raw = (
        protobuf.enc_field(1, 30)
        + protobuf.enc_field(2, protobuf.enc_field(1, "uid-1"))
        + protobuf.enc_field(4, "Background")
    )
    opts = protobuf.decode(protobuf.encode_unknown("v1", "DeleteOptions", raw))
    assert opts["propagationPolicy"] == "Background" and opts["gracePeriodSeconds"] == 30
    assert opts["preconditions"] == {"uid": "uid-1"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{}", id="no-magic"),
        pytest.param(protobuf.MAGIC + b"\x0a\x05ab", id="truncated"),
        pytest.param(protobuf.MAGIC + b"\x0b", id="bad-wire-type"),
        pytest.param(protobuf.MAGIC + protobuf.enc_field(2, b""), id="no-kind"),
        pytest.param(
            protobuf.encode_unknown("v1", "Secret", protobuf.enc_field(1, b"\x0a\x02\xff\xfe")), id="bad-utf8"
        ),
    ],
)
def test_protobuf_rejects_malformed(body: bytes) -> None:
    with pytest.raises(ValueError):
        protobuf.decode(body)


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/v1/namespaces/ns1/secrets", "/api/v1/namespaces/{ns}/secrets"),
        ("/api/v1/namespaces/ns1/secrets/sh.helm.release.v1.a.v1", "/api/v1/namespaces/{ns}/secrets/{name}"),
        ("/api/v1/namespaces/ns1", "/api/v1/namespaces/{name}"),
        ("/api/v1/namespaces/ns1/pods/p/log", "/api/v1/namespaces/{ns}/pods/{name}/log"),
        (
            "/apis/apps/v1/namespaces/n/deployments/d/scale",
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/x",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}",
        ),
        ("/api/v1/secrets", "/api/v1/secrets"),
        ("/apis/apps/v1", "/apis/apps/v1"),
        ("/version", "/version"),
    ],
)
def test_path_template(path: str, template: str) -> None:
    assert path_template(path) == template
