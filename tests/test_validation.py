"""workflows/validation.py: hostile inputs are refused with the right field named; sane ones pass."""

from __future__ import annotations

from typing import Any

import pytest

from activities.models import (
    DbDict,
    InspectKduInput,
    InstallKduInput,
    KduInstancesInput,
    KduRefInput,
    RollbackKduInput,
    ScaleKduInput,
    UninstallKduInput,
    UpgradeKduInput,
)
from workflows.validation import (
    ChartRef,
    InvalidInputError,
    parse_kdu_model,
    validate_db_dict,
    validate_inspect,
    validate_install,
    validate_instances,
    validate_labels,
    validate_params,
    validate_ref,
    validate_rollback,
    validate_scale_input,
    validate_sync_interval,
    validate_uninstall,
    validate_upgrade,
    validate_version,
)

DB = {"collection": "nsrs", "filter": {"_id": "ns-1"}, "path": "_admin.deployed.K8s.0"}


def install(**kw: Any) -> InstallKduInput:
    base: dict[str, Any] = {"cluster_uuid": "c1", "kdu_model": "stable/nginx"}
    return InstallKduInput(**{**base, **kw})


def upgrade(**kw: Any) -> UpgradeKduInput:
    base: dict[str, Any] = {"cluster_uuid": "c1", "kdu_instance": "web", "namespace": "prod"}
    return UpgradeKduInput(**{**base, **kw})


def rollback(**kw: Any) -> RollbackKduInput:
    base: dict[str, Any] = {"cluster_uuid": "c1", "kdu_instance": "web", "namespace": "prod"}
    return RollbackKduInput(**{**base, **kw})


def scale(**kw: Any) -> ScaleKduInput:
    base: dict[str, Any] = {"cluster_uuid": "c1", "kdu_instance": "web", "namespace": "prod", "scale": 3}
    return ScaleKduInput(**{**base, **kw})


def uninstall(**kw: Any) -> UninstallKduInput:
    base: dict[str, Any] = {"cluster_uuid": "c1", "kdu_instance": "web", "namespace": "prod"}
    return UninstallKduInput(**{**base, **kw})


def ref(**kw: Any) -> KduRefInput:
    base: dict[str, Any] = {"cluster_uuid": "c1", "kdu_instance": "web", "namespace": "prod"}
    return KduRefInput(**{**base, **kw})


def inspect(**kw: Any) -> InspectKduInput:
    base: dict[str, Any] = {"kdu_model": "stable/nginx", "cluster_uuid": "c1"}
    return InspectKduInput(**{**base, **kw})


def deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    root = node
    for _ in range(levels):
        node["x"] = {}
        node = node["x"]
    return root


def db(**kw: Any) -> dict[str, Any]:
    return {**DB, **kw}


HOSTILE = [
    # --- cluster_uuid: names a directory on the worker --------------------------------------------
    pytest.param(validate_install, install(cluster_uuid=""), "cluster_uuid", id="cluster empty"),
    pytest.param(validate_install, install(cluster_uuid=".."), "cluster_uuid", id="cluster dot-dot"),
    pytest.param(validate_install, install(cluster_uuid="."), "cluster_uuid", id="cluster dot"),
    pytest.param(validate_install, install(cluster_uuid="../etc"), "cluster_uuid", id="cluster traversal"),
    pytest.param(validate_install, install(cluster_uuid="a/b"), "cluster_uuid", id="cluster slash"),
    pytest.param(validate_install, install(cluster_uuid="a\\b"), "cluster_uuid", id="cluster backslash"),
    pytest.param(validate_install, install(cluster_uuid="-rf"), "cluster_uuid", id="cluster flag"),
    pytest.param(validate_install, install(cluster_uuid="c" * 64), "cluster_uuid", id="cluster too long"),
    pytest.param(
        validate_install, install(cluster_uuid="c1\n"), "cluster_uuid", id="cluster trailing newline"
    ),
    pytest.param(validate_install, install(cluster_uuid="c\x001"), "cluster_uuid", id="cluster NUL"),
    pytest.param(validate_install, install(cluster_uuid=None), "cluster_uuid", id="cluster None"),
    pytest.param(
        validate_instances, KduInstancesInput(cluster_uuid="~root"), "cluster_uuid", id="instances tilde"
    ),
    # --- kdu_model: becomes helm's chart argument --------------------------------------------------
    pytest.param(validate_install, install(kdu_model=""), "kdu_model", id="model empty"),
    pytest.param(validate_install, install(kdu_model="-x"), "kdu_model", id="model short flag"),
    pytest.param(
        validate_install, install(kdu_model="--post-renderer=/bin/sh"), "kdu_model", id="model long flag"
    ),
    pytest.param(validate_install, install(kdu_model="/etc/passwd"), "kdu_model", id="model absolute path"),
    pytest.param(validate_install, install(kdu_model="~/charts/x"), "kdu_model", id="model home path"),
    pytest.param(
        validate_install, install(kdu_model="../charts/x"), "kdu_model", id="model parent traversal"
    ),
    pytest.param(validate_install, install(kdu_model="repo/../x"), "kdu_model", id="model inner traversal"),
    pytest.param(validate_install, install(kdu_model=".."), "kdu_model", id="model dot-dot"),
    pytest.param(validate_install, install(kdu_model="a/b/c"), "kdu_model", id="model nested path"),
    pytest.param(validate_install, install(kdu_model="repo/chart name"), "kdu_model", id="model space"),
    pytest.param(validate_install, install(kdu_model="repo/chart\n"), "kdu_model", id="model newline"),
    pytest.param(validate_install, install(kdu_model="repo/chart\t"), "kdu_model", id="model tab"),
    pytest.param(validate_install, install(kdu_model="repo/\x1bchart"), "kdu_model", id="model escape char"),
    pytest.param(validate_install, install(kdu_model="répo/chart"), "kdu_model", id="model non-ascii"),
    pytest.param(validate_install, install(kdu_model="C:\\charts\\x"), "kdu_model", id="model windows path"),
    pytest.param(
        validate_install, install(kdu_model="https://evil.example/x.tgz"), "kdu_model", id="model https"
    ),
    pytest.param(validate_install, install(kdu_model="file:///etc/passwd"), "kdu_model", id="model file url"),
    pytest.param(
        validate_install, install(kdu_model="oci://u:p@reg.io/c"), "kdu_model", id="oci credentials"
    ),
    pytest.param(validate_install, install(kdu_model="oci://reg.io"), "kdu_model", id="oci no chart"),
    pytest.param(validate_install, install(kdu_model="oci://reg.io/c?x=1"), "kdu_model", id="oci query"),
    pytest.param(validate_install, install(kdu_model="oci://reg.io/c#f"), "kdu_model", id="oci fragment"),
    pytest.param(validate_install, install(kdu_model="oci://-reg.io/c"), "kdu_model", id="oci host flag"),
    pytest.param(validate_install, install(kdu_model="oci://reg.io:99999/c"), "kdu_model", id="oci bad port"),
    pytest.param(validate_install, install(kdu_model="oci://reg.io:/c"), "kdu_model", id="oci empty port"),
    pytest.param(validate_install, install(kdu_model="oci://reg.io//c"), "kdu_model", id="oci empty segment"),
    pytest.param(
        validate_install, install(kdu_model="oci://reg.io/c:--devel"), "kdu_model", id="oci tag flag"
    ),
    pytest.param(validate_install, install(kdu_model="repo/chart:"), "kdu_model", id="model empty version"),
    pytest.param(validate_install, install(kdu_model="repo/chart:1:2"), "kdu_model", id="model two colons"),
    pytest.param(validate_install, install(kdu_model="repo/chart:-1"), "kdu_model", id="model version flag"),
    pytest.param(validate_install, install(kdu_model="repo/.chart"), "kdu_model", id="model hidden chart"),
    pytest.param(validate_install, install(kdu_model="repo/-chart"), "kdu_model", id="model chart flag"),
    pytest.param(validate_install, install(kdu_model="/"), "kdu_model", id="model root"),
    pytest.param(validate_install, install(kdu_model="repo/"), "kdu_model", id="model no chart"),
    pytest.param(validate_install, install(kdu_model="chart:1.0"), "kdu_model", id="local with version"),
    pytest.param(validate_install, install(kdu_model="repo/chart@sha"), "kdu_model", id="model at sign"),
    pytest.param(validate_install, install(kdu_model="r/" + "c" * 600), "kdu_model", id="model too long"),
    pytest.param(validate_install, install(kdu_model=123), "kdu_model", id="model int"),
    pytest.param(validate_install, install(kdu_model=None), "kdu_model", id="model None"),
    pytest.param(validate_upgrade, upgrade(kdu_model="../x"), "kdu_model", id="upgrade model traversal"),
    # --- release names and namespaces ------------------------------------------------------------
    pytest.param(validate_install, install(kdu_instance="Web"), "kdu_instance", id="release upper-case"),
    pytest.param(validate_install, install(kdu_instance="a" * 54), "kdu_instance", id="release 54 chars"),
    pytest.param(validate_install, install(kdu_instance="-web"), "kdu_instance", id="release flag"),
    pytest.param(validate_install, install(kdu_instance="web-"), "kdu_instance", id="release trailing dash"),
    pytest.param(validate_install, install(kdu_instance="we_b"), "kdu_instance", id="release underscore"),
    pytest.param(validate_install, install(kdu_instance="we.b"), "kdu_instance", id="release dot"),
    pytest.param(validate_install, install(kdu_instance="web\n"), "kdu_instance", id="release newline"),
    pytest.param(validate_install, install(kdu_instance=5), "kdu_instance", id="release int"),
    pytest.param(validate_upgrade, upgrade(kdu_instance=""), "kdu_instance", id="upgrade release empty"),
    pytest.param(
        validate_rollback, rollback(kdu_instance="../web"), "kdu_instance", id="rollback release path"
    ),
    pytest.param(
        validate_uninstall, uninstall(kdu_instance="web;rm"), "kdu_instance", id="uninstall release semi"
    ),
    pytest.param(validate_install, install(namespace="Default"), "namespace", id="namespace upper-case"),
    pytest.param(validate_install, install(namespace="n" * 64), "namespace", id="namespace 64 chars"),
    pytest.param(validate_install, install(namespace="kube_system"), "namespace", id="namespace underscore"),
    pytest.param(validate_install, install(namespace="-n"), "namespace", id="namespace flag"),
    pytest.param(validate_install, install(namespace="../x"), "namespace", id="namespace traversal"),
    pytest.param(validate_ref, ref(namespace="ns\n"), "namespace", id="ref namespace newline"),
    # --- version ---------------------------------------------------------------------------------
    pytest.param(validate_install, install(version="--devel"), "version", id="version long flag"),
    pytest.param(validate_install, install(version="-1"), "version", id="version short flag"),
    pytest.param(validate_install, install(version="1.0 --set x=1"), "version", id="version inner flag"),
    pytest.param(validate_install, install(version="1.0;rm -rf"), "version", id="version semicolon"),
    pytest.param(validate_install, install(version="$(id)"), "version", id="version subshell"),
    pytest.param(validate_install, install(version="`id`"), "version", id="version backticks"),
    pytest.param(validate_install, install(version="1.0\n"), "version", id="version newline"),
    pytest.param(validate_install, install(version=" 1.0"), "version", id="version leading space"),
    pytest.param(validate_install, install(version="1.0 "), "version", id="version trailing space"),
    pytest.param(validate_install, install(version="1" * 65), "version", id="version too long"),
    pytest.param(validate_install, install(version=","), "version", id="version no number"),
    pytest.param(validate_install, install(version=1), "version", id="version int"),
    pytest.param(validate_upgrade, upgrade(version="2.0"), "version", id="upgrade version without model"),
    # --- numbers ---------------------------------------------------------------------------------
    pytest.param(validate_install, install(timeout=0), "timeout", id="timeout zero"),
    pytest.param(validate_install, install(timeout=-1), "timeout", id="timeout negative"),
    pytest.param(validate_install, install(timeout=86401), "timeout", id="timeout over a day"),
    pytest.param(validate_install, install(timeout=True), "timeout", id="timeout bool"),
    pytest.param(validate_install, install(timeout="300"), "timeout", id="timeout string"),
    pytest.param(validate_install, install(timeout=1.5), "timeout", id="timeout float"),
    pytest.param(validate_scale_input, scale(scale=-1), "scale", id="scale negative"),
    pytest.param(validate_scale_input, scale(scale=10001), "scale", id="scale huge"),
    pytest.param(validate_scale_input, scale(scale=True), "scale", id="scale bool"),
    pytest.param(validate_scale_input, scale(scale="3"), "scale", id="scale string"),
    pytest.param(validate_scale_input, scale(scale=2.0), "scale", id="scale float"),
    pytest.param(validate_rollback, rollback(revision=-1), "revision", id="revision negative"),
    pytest.param(validate_rollback, rollback(revision=True), "revision", id="revision bool"),
    pytest.param(validate_rollback, rollback(revision="1"), "revision", id="revision string"),
    pytest.param(validate_rollback, rollback(revision=2**31), "revision", id="revision overflow"),
    pytest.param(validate_uninstall, uninstall(timeout=None), "timeout", id="uninstall timeout None"),
    # --- resource_name: becomes a values key path --------------------------------------------------
    pytest.param(validate_scale_input, scale(resource_name="a..b"), "resource_name", id="resource empty key"),
    pytest.param(validate_scale_input, scale(resource_name=".a"), "resource_name", id="resource leading dot"),
    pytest.param(
        validate_scale_input, scale(resource_name="a."), "resource_name", id="resource trailing dot"
    ),
    pytest.param(validate_scale_input, scale(resource_name="a b"), "resource_name", id="resource space"),
    pytest.param(
        validate_scale_input, scale(resource_name="a,b=c"), "resource_name", id="resource set syntax"
    ),
    pytest.param(validate_scale_input, scale(resource_name="a[0]"), "resource_name", id="resource brackets"),
    pytest.param(validate_scale_input, scale(resource_name="-a"), "resource_name", id="resource flag"),
    pytest.param(validate_scale_input, scale(resource_name="a/b"), "resource_name", id="resource slash"),
    pytest.param(validate_scale_input, scale(resource_name="$x"), "resource_name", id="resource dollar"),
    pytest.param(
        validate_scale_input, scale(resource_name="a." * 150), "resource_name", id="resource too long"
    ),
    pytest.param(validate_scale_input, scale(resource_name=1), "resource_name", id="resource int"),
    # --- params: chart values --------------------------------------------------------------------
    pytest.param(validate_install, install(params=[1, 2]), "params", id="params list"),
    pytest.param(validate_install, install(params="a: 1"), "params", id="params yaml string"),
    pytest.param(validate_install, install(params=None), "params", id="params None"),
    pytest.param(validate_install, install(params={1: "a"}), "params", id="params int key"),
    pytest.param(validate_install, install(params={"a": {2: "b"}}), "params", id="params nested int key"),
    pytest.param(validate_install, install(params={"a": [{None: 1}]}), "params", id="params key in list"),
    pytest.param(validate_install, install(params={"a": float("nan")}), "params", id="params NaN"),
    pytest.param(validate_install, install(params={"a": float("inf")}), "params", id="params infinity"),
    pytest.param(validate_install, install(params={"a": b"raw"}), "params", id="params bytes"),
    pytest.param(validate_install, install(params={"a": {1, 2}}), "params", id="params set"),
    pytest.param(validate_install, install(params={"a": object()}), "params", id="params object"),
    pytest.param(validate_install, install(params=deep(5000)), "params", id="params nested 5000 deep"),
    pytest.param(validate_upgrade, upgrade(params={(1, 2): 3}), "params", id="upgrade params tuple key"),
    # --- labels ----------------------------------------------------------------------------------
    pytest.param(validate_install, install(labels={"name": "x"}), "labels", id="label helm reserved name"),
    pytest.param(validate_install, install(labels={"owner": "me"}), "labels", id="label helm reserved owner"),
    pytest.param(validate_install, install(labels={"a b": "x"}), "labels", id="label key space"),
    pytest.param(validate_install, install(labels={"k": "v v"}), "labels", id="label value space"),
    pytest.param(validate_install, install(labels={"k": "a,b=c"}), "labels", id="label value injection"),
    pytest.param(validate_install, install(labels={"k,x": "v"}), "labels", id="label key comma"),
    pytest.param(validate_install, install(labels={"k": "v" * 64}), "labels", id="label value too long"),
    pytest.param(validate_install, install(labels={"k" * 64: "v"}), "labels", id="label name too long"),
    pytest.param(validate_install, install(labels={"Bad_Prefix/k": "v"}), "labels", id="label bad prefix"),
    pytest.param(validate_install, install(labels={"/k": "v"}), "labels", id="label empty prefix"),
    pytest.param(validate_install, install(labels={"k": 1}), "labels", id="label int value"),
    pytest.param(validate_install, install(labels=["k=v"]), "labels", id="labels list"),
    pytest.param(
        validate_install, install(labels={f"k{i}": "v" for i in range(65)}), "labels", id="labels 65"
    ),
    # --- db_dict: where status is written in MongoDB ------------------------------------------------
    pytest.param(validate_install, install(db_dict="nsrs"), "db_dict", id="db_dict string"),
    pytest.param(
        validate_install, install(db_dict={"collection": "nsrs"}), "db_dict", id="db_dict missing keys"
    ),
    pytest.param(validate_install, install(db_dict=db(extra=1)), "db_dict", id="db_dict extra key"),
    pytest.param(
        validate_install, install(db_dict=db(collection="$cmd")), "db_dict.collection", id="db coll $cmd"
    ),
    pytest.param(
        validate_install, install(db_dict=db(collection="system.users")), "db_dict.collection", id="db sys"
    ),
    pytest.param(
        validate_install, install(db_dict=db(collection="")), "db_dict.collection", id="db coll empty"
    ),
    pytest.param(validate_install, install(db_dict=db(collection=1)), "db_dict.collection", id="db coll int"),
    pytest.param(validate_install, install(db_dict=db(filter={})), "db_dict.filter", id="db filter empty"),
    pytest.param(validate_install, install(db_dict=db(filter="x")), "db_dict.filter", id="db filter string"),
    pytest.param(
        validate_install, install(db_dict=db(filter={"$where": "1"})), "db_dict.filter", id="db $where"
    ),
    pytest.param(
        validate_install,
        install(db_dict=db(filter={"_id": {"$ne": None}})),
        "db_dict.filter",
        id="db nested $ne",
    ),
    pytest.param(
        validate_install,
        install(db_dict=db(filter={"_id": float("nan")})),
        "db_dict.filter",
        id="db filter NaN",
    ),
    pytest.param(validate_install, install(db_dict=db(path="")), "db_dict.path", id="db path empty"),
    pytest.param(validate_install, install(db_dict=db(path="a..b")), "db_dict.path", id="db path empty key"),
    pytest.param(validate_install, install(db_dict=db(path="$set")), "db_dict.path", id="db path operator"),
    pytest.param(
        validate_install, install(db_dict=db(path="a.$.b")), "db_dict.path", id="db path positional"
    ),
    pytest.param(validate_install, install(db_dict=db(path=".a")), "db_dict.path", id="db path leading dot"),
    pytest.param(validate_install, install(db_dict=db(path="a b")), "db_dict.path", id="db path space"),
    pytest.param(validate_install, install(db_dict=db(path=5)), "db_dict.path", id="db path int"),
    pytest.param(
        validate_upgrade,
        upgrade(db_dict=DbDict(collection="nsrs", filter={"$or": []}, path="a")),
        "db_dict.filter",
        id="upgrade DbDict operator",
    ),
    pytest.param(
        validate_install, install(db_dict=db(filter={"no_such_field": None})), "db_dict.filter",
        id="db filter null matches every document",
    ),
    pytest.param(validate_install, install(db_dict=db(filter={"_id": {"a": 1}})), "db_dict.filter",
                 id="db filter object value"),
    pytest.param(validate_install, install(db_dict=db(filter={"_id": ["a"]})), "db_dict.filter",
                 id="db filter array value"),
    pytest.param(validate_install, install(db_dict=db(filter={"a..b": "x"})), "db_dict.filter",
                 id="db filter empty key segment"),
    pytest.param(validate_install, install(db_dict=db(filter={"_id": "x" * 300})), "db_dict.filter",
                 id="db filter long value"),
    pytest.param(validate_install, install(db_dict=db(filter={f"k{i}": i for i in range(20)})),
                 "db_dict.filter", id="db filter many fields"),
    pytest.param(validate_install, install(db_dict=db(path="credentials.x")), "db_dict.path",
                 id="db path creds"),
    pytest.param(validate_install, install(db_dict=db(path="_id")), "db_dict.path", id="db path _id"),
    pytest.param(validate_install, install(db_dict=db(path="a.Password")), "db_dict.path",
                 id="db path password"),
    # --- sizes -------------------------------------------------------------------------------------
    pytest.param(validate_install, install(params={"blob": "x" * (1024 * 1024)}), "params",
                 id="params 1 MiB"),
    # --- booleans and free text --------------------------------------------------------------------
    pytest.param(validate_install, install(atomic="false"), "atomic", id="atomic string false"),
    pytest.param(validate_install, install(atomic=0), "atomic", id="atomic int"),
    pytest.param(validate_upgrade, upgrade(reuse_values="yes"), "reuse_values", id="reuse string"),
    pytest.param(validate_upgrade, upgrade(force=None), "force", id="force None"),
    pytest.param(validate_scale_input, scale(atomic="true"), "atomic", id="scale atomic string"),
    pytest.param(validate_ref, ref(all_values="true"), "all_values", id="all_values string"),
    pytest.param(validate_install, install(kdu_name="x\ny"), "kdu_name", id="kdu_name newline"),
    pytest.param(validate_install, install(kdu_name="x" * 254), "kdu_name", id="kdu_name too long"),
    # --- inspect ---------------------------------------------------------------------------------
    pytest.param(validate_inspect, inspect(repo_url="ftp://x.io"), "repo_url", id="repo url ftp"),
    pytest.param(
        validate_inspect, inspect(kdu_model="c", repo_url="https://u:p@x.io/"), "repo_url", id="repo creds"
    ),
    pytest.param(
        validate_inspect, inspect(kdu_model="c", repo_url="https://x.io/?a=1"), "repo_url", id="repo query"
    ),
    pytest.param(
        validate_inspect, inspect(kdu_model="c", repo_url="https://x.io/../y"), "repo_url", id="repo dots"
    ),
    pytest.param(
        validate_inspect, inspect(kdu_model="c", repo_url="https://x io/"), "repo_url", id="repo space"
    ),
    pytest.param(
        validate_inspect, inspect(kdu_model="c", repo_url="https://"), "repo_url", id="repo no host"
    ),
    pytest.param(
        validate_inspect, inspect(repo_url="https://x.io/charts"), "kdu_model", id="repo with repo/chart"
    ),
    pytest.param(
        validate_inspect, inspect(cluster_uuid=""), "cluster_uuid", id="inspect repo chart no cluster"
    ),
    pytest.param(
        validate_inspect, inspect(cluster_uuid="../x"), "cluster_uuid", id="inspect cluster traversal"
    ),
    pytest.param(validate_inspect, inspect(version="--devel"), "version", id="inspect version flag"),
]


@pytest.mark.parametrize("validate, inp, field", HOSTILE)
def test_validation_refuses_hostile_input_naming_the_field(validate, inp, field):
    with pytest.raises(InvalidInputError) as info:
        validate(inp)
    err = info.value
    assert err.field == field
    assert err.type == "InvalidInput" and err.non_retryable
    assert err.message.startswith(f"invalid {field}: ")
    assert list(err.details) == [{"field": field}]


def test_hostile_table_is_big_and_ids_are_unique():
    ids = [p.id for p in HOSTILE]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


def test_validation_never_echoes_secret_values():
    secret = "s3cr3t-password"
    for bad in ({"password": secret, "n": float("nan")}, {"password": secret, 1: 2}):
        with pytest.raises(InvalidInputError) as info:
            validate_params(bad)
        assert secret not in info.value.message
    with pytest.raises(InvalidInputError) as info:
        validate_db_dict(db(filter={"_id": secret, "$where": "x"}))
    assert secret not in info.value.message


def test_validation_message_clips_huge_values():
    with pytest.raises(InvalidInputError) as info:
        validate_install(install(kdu_instance="A" * 100_000))
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    "model, expected",
    [
        pytest.param("stable/nginx", ChartRef("stable/nginx", "", "repo"), id="repo/chart"),
        pytest.param(
            "stable/openldap:1.2.2", ChartRef("stable/openldap", "1.2.2", "repo"), id="repo/chart:version"
        ),
        pytest.param(
            "bitnami/my_chart.v2:1.0.0-rc.1+b5",
            ChartRef("bitnami/my_chart.v2", "1.0.0-rc.1+b5", "repo"),
            id="prerelease and build metadata",
        ),
        pytest.param(
            "oci://registry.example.com:5000/charts/nginx:15.1.0",
            ChartRef("oci://registry.example.com:5000/charts/nginx", "15.1.0", "oci"),
            id="oci with port+tag",
        ),
        pytest.param("oci://localhost/nginx", ChartRef("oci://localhost/nginx", "", "oci"), id="oci minimal"),
        pytest.param(
            "oci://127.0.0.1:5000/a/b/c", ChartRef("oci://127.0.0.1:5000/a/b/c", "", "oci"), id="oci ip"
        ),
        pytest.param("mychart", ChartRef("mychart", "", "local"), id="local directory"),
        pytest.param("mychart-1.0.0.tgz", ChartRef("mychart-1.0.0.tgz", "", "local"), id="local archive"),
    ],
)
def test_parse_kdu_model_accepts_documented_forms(model, expected):
    assert parse_kdu_model(model) == expected


@pytest.mark.parametrize(
    "version",
    [
        ">=1.2.0 <2.0.0",
        "~1.2",
        "^1",
        "1.2 - 1.4.5",
        "1.2.3 || 2.x",
        "v2.3.4",
        "1.x",
        "*",
        "1.0.0-rc.1",
        ">= 1.0, < 2",
    ],
)
def test_validate_version_accepts_semver_and_constraints(version):
    assert validate_version(version) == version


def test_validate_install_version_field_overrides_model_suffix():
    assert validate_install(install(kdu_model="stable/nginx:1.0", version="2.0")) == ChartRef(
        "stable/nginx", "2.0", "repo"
    )
    assert validate_install(install(kdu_model="stable/nginx:1.0")).version == "1.0"


def test_validation_accepts_realistic_osm_inputs():
    full = install(
        cluster_uuid="0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
        kdu_instance="stable-openldap-1-2-2-0012345678",
        namespace="osm-ns",
        params={"a": {"b": [1, 2.5, None, True, "x"]}, "": 1},
        db_dict=DbDict(collection="nsrs", filter={"_id": "ns-1"}, path="_admin.deployed.K8s.0"),
        labels={"osm.etsi.org/ns-id": "ns-1", "managed-by": "osm.etsi.org", "empty": ""},
        kdu_name="ldap",
    )
    assert validate_install(full).chart == "stable/nginx"
    assert validate_upgrade(upgrade()) is None
    validate_rollback(rollback(revision=3))
    validate_scale_input(scale(resource_name="db.primary", scale=0))
    validate_uninstall(uninstall(namespace=""))
    validate_ref(ref(all_values=True))
    validate_instances(KduInstancesInput(cluster_uuid="c1"))
    assert validate_inspect(
        inspect(kdu_model="nginx", cluster_uuid="", repo_url="https://charts.example.com:8443/x")
    )
    assert validate_labels({}) == {}
    assert validate_db_dict(DB) == DbDict(**DB)


@pytest.mark.parametrize(("value", "ok"), [(0, True), (-1, True), (10, True), (30 * 86_400, True),
                                           (5, False), (-5, False), (30 * 86_400 + 1, False),
                                           (10**20, False), (True, False), (600.0, False)])
def test_sync_interval_bounds(value: object, ok: bool) -> None:
    if ok:
        assert validate_sync_interval(value) == value
    else:
        with pytest.raises(InvalidInputError) as info:
            validate_sync_interval(value)
        assert info.value.field == "sync_interval_s"


def test_db_dict_filter_values_are_not_echoed() -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_db_dict(db(filter={"_id": "tenant-secret-" + "x" * 300}))
    assert "tenant-secret" not in info.value.message
