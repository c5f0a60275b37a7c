"""Hostile inputs: whoever can start a workflow on the task queue is a caller, not the operator.

Every case sends one caller's input (raw JSON-like values, so wrong types can be sent) to a real
worker (``KduflowPlugin`` on default settings: no exec plugins, status only into ``nsrs``, no URL
allowlist, no private networks) on the real ``temporal`` dev server, with a sandbox cluster and a
chart repository registered as a legitimate cluster so that valid-looking inputs reach deep code.
A sample goes through ``temporal workflow execute --input``. For each case the harness
(``tests/support/hostile.py``) checks that the workflow failed with the expected ``ApplicationError``
type naming the field, closed within seconds (a hung workflow is a failure), spawned nothing, read
or wrote no file outside the worker's state directory, contacted nothing (a recording listener on
127.0.0.1 stands in for every internal host), left every store document unchanged and leaked no
secret into the error or the history.

The dev server runs with a raised payload size limit (8 MiB) so that inputs beyond kduflow's own
bounds but within the frontend's 4 MB message limit reach the worker.

Case ids: ``<class>-<nn>-<workflow>-<what>`` (``-cli`` when sent through the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import yaml
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.common import RawValue
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.store import Store
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin
from sandbox import SandboxCluster
from tests.conftest import helm_tools, temporal_cli
from tests.support.charts import ChartRepoServer
from tests.support.hostile import (
    PROBE_WORKFLOWS,
    AuditRecorder,
    Canary,
    Case,
    CaseRunner,
    Ctx,
    Outcome,
    Policy,
    RecordingListener,
    Summary,
    alias_bomb_kubeconfig,
    default_read_roots,
    fake_pem_b64,
    kubeconfig,
    nested_kubeconfig,
    padded_kubeconfig,
    problems,
    restore_store,
    snapshot_store,
    store_diff,
    to_yaml,
)
from tests.support.sandbox import LOOPBACK_NETWORKS, sandbox_cluster
from workflows.cluster_models import schedule_id_for

pytestmark = pytest.mark.e2e

CLUSTER = "hostile-legit"
REPO_ID = "repo-hostile"
REPO_NAME = "legit"
RELEASE = "legit-web"
RELEASE_NS = "legit"
NSR = "nsr-hostile"
UNREGISTERED = "hostile-unregistered"
BLOB_LIMIT = 8 * 1024 * 1024
MIB = 1024 * 1024

# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

DROP = object()


def variant(base: Callable[[Ctx], dict[str, Any]]) -> Callable[..., Callable[[Ctx], dict[str, Any]]]:
    """``variant(base)(field=value, ...)``: the base input with fields replaced (``DROP`` removes
    one; a callable value is called with the context). ``_extra`` adds fields whose names are not
    identifiers."""

    def make(_extra: dict[str, Any] | None = None, **over: Any) -> Callable[[Ctx], dict[str, Any]]:
        def build(ctx: Ctx) -> dict[str, Any]:
            doc = base(ctx)
            for key, value in {**over, **(_extra or {})}.items():
                if value is DROP:
                    doc.pop(key, None)
                else:
                    doc[key] = value(ctx) if callable(value) else value
            return doc

        return build

    return make


install = variant(lambda c: {"cluster_uuid": c.cluster, "kdu_model": f"{REPO_NAME}/webapp:0.1.0",
                             "kdu_instance": "hostile-inst", "namespace": "hostile", "timeout": 30})
upgrade = variant(lambda c: {"cluster_uuid": c.cluster, "kdu_instance": RELEASE, "namespace": RELEASE_NS,
                             "timeout": 30})
rollback = variant(lambda c: {"cluster_uuid": c.cluster, "kdu_instance": RELEASE, "namespace": RELEASE_NS,
                              "timeout": 30})
scale = variant(lambda c: {"cluster_uuid": c.cluster, "kdu_instance": RELEASE, "namespace": RELEASE_NS,
                           "scale": 1, "timeout": 30})
uninstall = variant(lambda c: {"cluster_uuid": c.cluster, "kdu_instance": "hostile-absent",
                               "namespace": RELEASE_NS, "timeout": 30})
ref = variant(lambda c: {"cluster_uuid": c.cluster, "kdu_instance": RELEASE, "namespace": RELEASE_NS})
instances = variant(lambda c: {"cluster_uuid": c.cluster})
inspect = variant(lambda c: {"kdu_model": f"{REPO_NAME}/webapp", "cluster_uuid": c.cluster})
init = variant(lambda c: {"cluster_uuid": UNREGISTERED})
reset = variant(lambda c: {"cluster_uuid": UNREGISTERED})
sync = variant(lambda c: {"cluster_uuid": c.cluster})  # fmt: skip


def db(collection: str = "nsrs", filt: Any = None, path: str = "_admin.deployed.K8s.0") -> dict[str, Any]:
    return {"collection": collection, "filter": {"_id": NSR} if filt is None else filt, "path": path}


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        node = {"n": node}
    return node


def listener(fmt: str) -> Callable[[Ctx], str]:
    """A string with ``{port}`` replaced by the recording listener's port."""
    return lambda c: fmt.format(port=c.listener_port)


# Kubeconfigs (as YAML strings). Every one points at the recording listener, so a kubeconfig that
# got through would show up there (or as a spawn, a file read, or a marker file).


def kc_exec(command: str, args: list[str]) -> Callable[[Ctx], str]:
    return lambda c: to_yaml(kubeconfig(c.listener_https, user={"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": command,
        "args": [a.format(marker=c.marker_dir) for a in args], "interactiveMode": "Never"}}))  # fmt: skip


def kc_user(user: Callable[[Ctx], dict[str, Any]]) -> Callable[[Ctx], str]:
    return lambda c: to_yaml(kubeconfig(c.listener_https, user=user(c)))


def kc_cluster(extra: Callable[[Ctx], dict[str, Any]]) -> Callable[[Ctx], str]:
    return lambda c: to_yaml(kubeconfig(c.listener_https, cluster_extra=extra(c)))


KC_EXEC_SH = {n: kc_exec("/bin/sh", ["-c", "touch {marker}/" + n])
              for n in ("kc01", "doc01", "doc02", "doc14")}  # fmt: skip
KC_EXEC_TOUCH = {n: kc_exec("/usr/bin/touch", ["{marker}/" + n]) for n in ("kc02", "doc09")}
KC_EXEC_ENV = kc_exec("env", ["sh", "-c", "touch {marker}/kc03"])
KC_AUTH_PROVIDER = kc_user(lambda c: {"auth-provider": {"name": "oidc", "config": {
    "idp-issuer-url": c.listener_https, "client-id": "x", "refresh-token": "r",
    "id-token": "i"}}})  # fmt: skip
KC_PROXY = kc_cluster(lambda c: {"proxy-url": c.listener_http})
KC_TOKENFILE_ENVIRON = kc_user(lambda c: {"tokenFile": "/proc/self/environ"})
KC_TOKENFILE_CANARY = kc_user(lambda c: {"tokenFile": c.canary})
KC_CLIENT_CERT = kc_user(lambda c: {"client-certificate": c.canary, "client-key-data": fake_pem_b64()})
KC_CLIENT_KEY = kc_user(lambda c: {"client-certificate-data": fake_pem_b64(), "client-key": c.canary})
KC_CA_FILE = kc_cluster(lambda c: {"certificate-authority": c.canary, "insecure-skip-tls-verify": False})
KC_NESTED = lambda c: nested_kubeconfig(c.listener_https, 10_000)  # noqa: E731
KC_BOMB = lambda c: alias_bomb_kubeconfig(c.listener_https)  # noqa: E731
KC_TOKEN_CRLF = kc_user(lambda c: {"token": "hostile\r\nX-Injected: 1"})
KC_USERINFO = lambda c: to_yaml(kubeconfig(f"https://user:pass@127.0.0.1:{c.listener_port}"))  # noqa: E731
KC_LISTENER = lambda c: to_yaml(kubeconfig(c.listener_https))  # noqa: E731


def kc_other_token(c: Ctx) -> str:
    doc = yaml.safe_load(c.legit_kubeconfig)
    doc["users"][0]["user"] = {"token": "a-different-token"}
    return to_yaml(doc)


def cluster_doc(cid: str, credentials: Callable[[Ctx], Any], repos: bool = False) -> Callable[[Ctx], dict]:
    def build(c: Ctx) -> dict[str, Any]:
        admin: dict[str, Any] = {"helm_chart_repos": [REPO_ID]} if repos else {}
        return {"_id": cid, "name": cid, "credentials": credentials(c), "_admin": admin}

    return build


def as_dict(builder: Callable[[Ctx], str]) -> Callable[[Ctx], Any]:
    return lambda c: yaml.safe_load(builder(c))


def status_in(cid: str) -> Callable[[Ctx], dict[str, Any]]:
    return lambda c: {"cluster_uuid": cid, "kdu_instance": "web", "namespace": "default"}


def instances_in(cid: str) -> Callable[[Ctx], dict[str, Any]]:
    return lambda c: {"cluster_uuid": cid}


def install_in(cid: str) -> Callable[[Ctx], dict[str, Any]]:
    return lambda c: {"cluster_uuid": cid, "kdu_model": f"{REPO_NAME}/webapp:0.1.0",
                      "kdu_instance": "hostile-doc", "namespace": "hostile", "timeout": 30}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------

CASES: list[Case] = []


def case(cls: str, workflow: str, slug: str, inp: Callable[[Ctx], Any] | None, expect: str,
         field: str | tuple[str, ...] | None = None, **kw: Any) -> None:  # fmt: skip
    n = 1 + sum(1 for c in CASES if c.cls == cls)
    CASES.append(Case(cls, n, workflow, slug, inp, expect, field, **kw))


II = "InvalidInput"
CI = "CredentialsInvalid"
UNA = "UrlNotAllowed"

# -- types / decoding: a wrong JSON type must fail the workflow, never its task (that hangs) -------
T = "types"
case(T, "InstallKdu", "timeout-string", install(timeout="300"), II, "timeout", via="cli")
case(T, "InstallKdu", "cluster_uuid-int", install(cluster_uuid=5), II, "cluster_uuid")
case(T, "InstallKdu", "params-list", install(params=[1, 2]), II, "params")
case(T, "InstallKdu", "db_dict-string", install(db_dict="nsrs"), II, "db_dict")
case(T, "InstallKdu", "labels-int-value", install(labels={"tier": 1}), II, "labels")
case(T, "InstallKdu", "atomic-string", install(atomic="false"), II, "atomic")
case(T, "InstallKdu", "missing-kdu_model", install(kdu_model=DROP), II, "kdu_model")
case(T, "InstallKdu", "misspelt-kdu_instanse", install(kdu_instance=DROP, kdu_instanse="hostile-typo"), II,
     "kdu_instanse", note="a dropped unknown field would install under a generated name")
case(T, "InstallKdu", "input-list", lambda c: [install()(c)], II, "input")
case(T, "InstallKdu", "db_dict-missing-path", install(db_dict={"collection": "nsrs", "filter": {"_id": NSR}}),
     II, ("db_dict.path", "db_dict"))
case(T, "UpgradeKdu", "force-int", upgrade(force=1), II, "force")
case(T, "UpgradeKdu", "missing-kdu_instance", upgrade(kdu_instance=DROP), II, "kdu_instance")
case(T, "UpgradeKdu", "params-string", upgrade(params="replicaCount: 5"), II, "params")
case(T, "RollbackKdu", "revision-string", rollback(revision="1"), II, "revision")
case(T, "RollbackKdu", "revision-float", rollback(revision=1.5), II, "revision")
case(T, "ScaleKdu", "scale-false", scale(scale=False), II, "scale")
case(T, "ScaleKdu", "scale-float", scale(scale=2.9), II, "scale")
case(T, "ScaleKdu", "missing-scale", scale(scale=DROP), II, "scale")
case(T, "ScaleKdu", "timeout-float", scale(timeout=1e3), II, "timeout")
case(T, "UninstallKdu", "timeout-true", uninstall(timeout=True), II, "timeout")
case(T, "UninstallKdu", "two-arguments", None, II, "input", args=lambda c: [uninstall()(c), uninstall()(c)])
case(T, "KduStatus", "input-string", lambda c: f"{c.cluster} {RELEASE}", II, "input")
case(T, "KduStatus", "kdu_instance-bool", ref(kdu_instance=True), II, "kdu_instance")
case(T, "KduInstances", "input-null", lambda c: None, II, "input")
case(T, "KduInstances", "unknown-field", instances(all_namespaces=True), II, "all_namespaces")
case(T, "KduServices", "namespace-list", ref(namespace=[RELEASE_NS]), II, "namespace")
case(T, "KduValues", "all_values-string", ref(all_values="yes"), II, "all_values")
case(T, "InspectKdu", "kdu_model-object", inspect(kdu_model={"$ne": ""}), II, "kdu_model")
case(T, "InspectKdu", "no-argument", None, II, "input", no_arg=True)
case(T, "InitCluster", "sync_interval_s-string", init(sync_interval_s="600"), II, "sync_interval_s")
case(T, "InitCluster", "k8s_creds-object", init(k8s_creds={"apiVersion": "v1"}), II, "k8s_creds")
case(T, "InitCluster", "input-list", lambda c: [], II, "input")
case(T, "ResetCluster", "force-string", reset(force="true"), II, "force")
case(T, "ResetCluster", "cluster_uuid-null", reset(cluster_uuid=None), II, "cluster_uuid")
case(T, "SyncRepos", "cluster_uuid-list", sync(cluster_uuid=["x"]), II, "cluster_uuid")
case(T, "SyncRepos", "unknown-field", sync(repos=[REPO_ID]), II, "repos")
case(T, "InstallKdu", "params-nan", install(params={"replicaCount": float("nan")}), II, "params")
case(T, "InitCluster", "sync_interval_s-infinity", init(sync_interval_s=float("inf")), II, "sync_interval_s")


# Payloads a caller can send with any metadata: the SDK decodes them before workflow code runs.
def payload(data: bytes, **meta: bytes) -> Callable[[Ctx], RawValue]:
    return lambda c: RawValue(Payload(metadata=meta, data=data))


case(T, "KduInstances", "payload-unknown-encoding", payload(b'{"cluster_uuid": "x"}', encoding=b"x/unknown"),
     II, "input")
case(T, "KduInstances", "payload-binary", payload(b"\xff\x00", encoding=b"binary/plain"), II, "input")
case(T, "KduStatus", "payload-invalid-json", payload(b"{not json", encoding=b"json/plain"), II, "input")
case(T, "InstallKdu", "payload-json-nested-100k", payload(b"[" * 100_000 + b"]" * 100_000,
     encoding=b"json/plain"), II, "input")  # fmt: skip
case(T, "InitCluster", "payload-json-protobuf-bogus", payload(b"{}", encoding=b"json/protobuf",
     messageType=b"no.such.Message"), II, "input")  # fmt: skip
case(T, "KduValues", "payload-binary-null", payload(b"", encoding=b"binary/null"), II, "input")
case(T, "UninstallKdu", "payload-binary", lambda c: "aGVsbG8=", II, "input", via="cli",
     input_meta=("encoding=binary/plain",))

# -- injection: flags, paths, URLs and control characters in names ------------------------------
J = "injection"
case(J, "InstallKdu", "kdu_instance-flag", install(kdu_instance="--post-renderer=/bin/sh"), II,
     "kdu_instance", via="cli")
case(J, "InstallKdu", "namespace-flag", install(namespace="--kubeconfig=/etc/passwd"), II, "namespace")
case(J, "InstallKdu", "version-flag", install(version="--post-renderer=/bin/sh"), II, "version")
case(J, "InstallKdu", "kdu_model-flag", install(kdu_model="--post-renderer=/bin/sh"), II, "kdu_model")
case(J, "InstallKdu", "kdu_model-dotdot", install(kdu_model="../../etc/passwd"), II, "kdu_model")
case(J, "InstallKdu", "kdu_model-abspath", install(kdu_model="/etc/passwd"), II, "kdu_model")
case(J, "InstallKdu", "kdu_model-tilde", install(kdu_model="~root/x"), II, "kdu_model")
case(J, "InstallKdu", "kdu_model-http-url", install(kdu_model=listener("http://127.0.0.1:{port}/webapp.tgz")),
     II, "kdu_model", note="plain http(s) chart URLs are refused by syntax (only oci://)")
case(J, "InstallKdu", "kdu_model-file-url", install(kdu_model="file:///etc/passwd"), II, "kdu_model")
case(J, "InstallKdu", "kdu_model-newline", install(kdu_model=f"{REPO_NAME}/webapp\n--post-renderer=/bin/sh"),
     II, "kdu_model")
case(J, "InstallKdu", "kdu_model-nul", install(kdu_model=f"{REPO_NAME}/webapp:0.1.0\x00"), II, "kdu_model")
case(J, "InstallKdu", "kdu_model-repo-dotdot", install(kdu_model=f"{REPO_NAME}/../webapp"), II, "kdu_model")
case(J, "InstallKdu", "kdu_instance-nul", install(kdu_instance="web\x00evil"), II, "kdu_instance")
case(J, "InstallKdu", "kdu_instance-cr", install(kdu_instance="hostile-cr\r"), II, "kdu_instance")
case(J, "InstallKdu", "kdu_name-newline", install(kdu_name="a\nb"), II, "kdu_name")
case(J, "InstallKdu", "version-set-flag", install(version="1.0 --set x=1"), II, "version")
case(J, "InstallKdu", "labels-flag-key", install(labels={"--post-renderer": "/bin/sh"}), II, "labels")
case(J, "UpgradeKdu", "kdu_model-tag-flag", upgrade(kdu_model=f"{REPO_NAME}/webapp:--post-renderer=/bin/sh"),
     II, "kdu_model")
case(J, "UpgradeKdu", "namespace-dotdot", upgrade(namespace="../kube-system"), II, "namespace")
case(J, "RollbackKdu", "kdu_instance-path", rollback(kdu_instance="../../etc/passwd"), II, "kdu_instance")
case(J, "ScaleKdu", "resource_name-set-comma", scale(resource_name="web,replicaCount=100"), II,
     "resource_name")
case(J, "ScaleKdu", "resource_name-set-index", scale(resource_name="db.x[0]"), II, "resource_name")
case(J, "ScaleKdu", "resource_name-set-escape", scale(resource_name="a\\.b=1"), II, "resource_name")
case(J, "UninstallKdu", "namespace-newline", uninstall(namespace=f"{RELEASE_NS}\n"), II, "namespace")
case(J, "KduStatus", "kdu_instance-flag", ref(kdu_instance="-A"), II, "kdu_instance")
case(J, "KduValues", "namespace-flag", ref(namespace="--all-namespaces"), II, "namespace")
case(J, "KduServices", "cluster_uuid-path", ref(cluster_uuid="../../etc"), II, "cluster_uuid")
case(J, "KduInstances", "cluster_uuid-dotdot", instances(cluster_uuid=".."), II, "cluster_uuid")
case(J, "InspectKdu", "kdu_model-repo-flag", inspect(kdu_model=listener("--repo=http://127.0.0.1:{port}/")),
     II, "kdu_model")
case(J, "InspectKdu", "version-flag", inspect(version="--devel"), II, "version")
case(J, "InitCluster", "namespace-flag", init(namespace="--kubeconfig=/etc/passwd"), II, "namespace")
case(J, "InitCluster", "cluster_uuid-path", init(cluster_uuid="../../tmp/x"), II, "cluster_uuid")
case(J, "SyncRepos", "cluster_uuid-flag", sync(cluster_uuid="-x"), II, "cluster_uuid")
case(J, "ResetCluster", "cluster_uuid-dotdot", reset(cluster_uuid=f"../{CLUSTER}"), II, "cluster_uuid")
case(J, "InstallKdu", "kdu_model-cwd-dir", install(kdu_model="sandbox"), II, "kdu_model",
     note="a local chart name while no charts directory is configured; the worker's working "
     "directory has a directory of that name")  # fmt: skip
case(J, "InspectKdu", "kdu_model-cwd-dir", inspect(kdu_model="tests", cluster_uuid=""), II, "kdu_model")
case(J, "InstallKdu", "kdu_model-cwd-dir-generated-name", install(kdu_model="sandbox", kdu_instance=DROP), II,
     "kdu_model", note="without kdu_instance the workflow generates a name first")

# -- kubeconfig in InitCluster's k8s_creds --------------------------------------------------------
K = "kubeconfig"


def kc_case(slug: str, creds: Callable[[Ctx], str], markers: tuple[str, ...] = (), **kw: Any) -> None:
    n = 1 + sum(1 for c in CASES if c.cls == K)
    cid = f"hostile-kc-{n:02d}"
    case(K, "InitCluster", slug, init(cluster_uuid=cid, k8s_creds=creds), CI, markers=markers, **kw)


kc_case("exec-shell", KC_EXEC_SH["kc01"], ("kc01",), via="cli")
kc_case("exec-not-allowlisted", KC_EXEC_TOUCH["kc02"], ("kc02",))
kc_case("exec-env-bare-name", KC_EXEC_ENV, ("kc03",))
kc_case("auth-provider", KC_AUTH_PROVIDER)
kc_case("proxy-url", KC_PROXY)
kc_case("tokenFile-proc-environ", KC_TOKENFILE_ENVIRON)
kc_case("tokenFile-canary", KC_TOKENFILE_CANARY)
kc_case("client-certificate-path", KC_CLIENT_CERT)
kc_case("client-key-path", KC_CLIENT_KEY)
kc_case("certificate-authority-path", KC_CA_FILE)
kc_case("nested-10000", KC_NESTED)
kc_case("alias-bomb", KC_BOMB)
kc_case("2MiB", lambda c: padded_kubeconfig(c.listener_https, 2 * MIB))
kc_case("token-crlf", KC_TOKEN_CRLF)
kc_case("server-userinfo", KC_USERINFO)
kc_case("exec-in-unused-user", lambda c: to_yaml(kubeconfig(c.listener_https, top_extra={"users": [
    {"name": "u", "user": {"token": "t"}},
    {"name": "spare", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                        "command": "/bin/sh", "args": ["-c", f"touch {c.marker('kc17')}"]}}},
]})), ("kc17",), note="an exec entry that the current context does not use is still refused")  # fmt: skip
kc_case("server-file-url", lambda c: to_yaml(kubeconfig("file:///etc/passwd")))

# -- the same kubeconfigs written directly as k8sclusters documents ------------------------------
D = "document"


def doc_case(workflow: str, slug: str, creds: Callable[[Ctx], Any],
             inp: Callable[[str], Callable[[Ctx], Any]], markers: tuple[str, ...] = (),
             repos: bool = False) -> None:  # fmt: skip
    n = 1 + sum(1 for c in CASES if c.cls == D)
    cid = f"hostile-doc-{n:02d}"
    case(D, workflow, slug, inp(cid), CI, doc=cluster_doc(cid, creds, repos), markers=markers)


doc_case("KduStatus", "exec-shell", KC_EXEC_SH["doc01"], status_in, ("doc01",))
doc_case("InstallKdu", "exec-shell-dict", as_dict(KC_EXEC_SH["doc02"]), install_in, ("doc02",))
doc_case("KduStatus", "tokenFile-canary", KC_TOKENFILE_CANARY, status_in)
doc_case("InstallKdu", "tokenFile-proc-environ", KC_TOKENFILE_ENVIRON, install_in)
doc_case("KduStatus", "client-key-path", KC_CLIENT_KEY, status_in)
doc_case("KduInstances", "certificate-authority-path", KC_CA_FILE, instances_in)
doc_case("InstallKdu", "proxy-url", KC_PROXY, install_in)
doc_case("KduStatus", "auth-provider", KC_AUTH_PROVIDER, status_in)
doc_case("KduValues", "exec-not-allowlisted", KC_EXEC_TOUCH["doc09"], status_in, ("doc09",))
doc_case("KduStatus", "nested-10000", KC_NESTED, status_in)
doc_case("KduInstances", "alias-bomb", KC_BOMB, instances_in)
doc_case("KduStatus", "2.5MiB", lambda c: padded_kubeconfig(c.listener_https, 5 * MIB // 2), status_in)
doc_case("KduServices", "server-userinfo", KC_USERINFO, status_in)
doc_case("SyncRepos", "exec-shell", KC_EXEC_SH["doc14"], instances_in, ("doc14",), repos=True)

# -- credential takeover: InitCluster must not replace a registered cluster's credentials --------
TK = "takeover"
case(TK, "InitCluster", "same-uuid", init(cluster_uuid=CLUSTER, k8s_creds=KC_LISTENER), "ClusterExists",
     via="cli")
case(TK, "InitCluster", "reuse-uuid",
     init(cluster_uuid=DROP, reuse_cluster_uuid=CLUSTER, k8s_creds=KC_LISTENER), "ClusterExists")
case(TK, "InitCluster", "same-server-other-token", init(cluster_uuid=CLUSTER, k8s_creds=kc_other_token),
     "ClusterExists")
case(TK, "InitCluster", "replace_credentials-string",
     init(cluster_uuid=CLUSTER, k8s_creds=KC_LISTENER, replace_credentials="true"), II, "replace_credentials",
     note="a truthy non-boolean must not replace credentials")

# -- status writes: db_dict may only address the operator's collections, one document, plain paths -
S = "status"
case(S, "UninstallKdu", "collection-k8sclusters", uninstall(db_dict=db("k8sclusters", {"_id": CLUSTER},
     "_admin.hostile")), II, "db_dict.collection", via="cli")  # fmt: skip
case(S, "UninstallKdu", "collection-k8srepos", uninstall(db_dict=db("k8srepos", {"_id": REPO_ID}, "status")),
     II, "db_dict.collection")
case(S, "UninstallKdu", "collection-system.users", uninstall(db_dict=db("system.users", {"_id": "admin"})),
     II, "db_dict.collection")
case(S, "UninstallKdu", "collection-$cmd", uninstall(db_dict=db("$cmd", {"_id": "x"})), II,
     "db_dict.collection")
case(S, "UninstallKdu", "collection-other_tenant", uninstall(db_dict=db("other_tenant", {"_id": "t1"})), II,
     "db_dict.collection", note="syntactically fine, outside the operator's status_collections")
case(S, "InstallKdu", "filter-null-value", install(db_dict=db(filt={"no_such_field": None})), II,
     "db_dict.filter")
case(S, "InstallKdu", "filter-empty", install(db_dict=db(filt={})), II, "db_dict.filter")
case(S, "InstallKdu", "filter-$ne", install(db_dict=db(filt={"_id": {"$ne": 1}})), II, "db_dict.filter")
case(S, "RollbackKdu", "filter-$where", rollback(db_dict=db(filt={"$where": "sleep(100000)"})), II,
     "db_dict.filter")
case(S, "RollbackKdu", "filter-value-object", rollback(db_dict=db(filt={"_id": {"a": 1}})), II,
     "db_dict.filter")
case(S, "RollbackKdu", "filter-value-list", rollback(db_dict=db(filt={"_id": [NSR]})), II, "db_dict.filter")
case(S, "ScaleKdu", "path-credentials", scale(db_dict=db(path="credentials.x")), II, "db_dict.path")
case(S, "ScaleKdu", "path-_id", scale(db_dict=db(path="_id")), II, "db_dict.path")
case(S, "UpgradeKdu", "path-password", upgrade(db_dict=db(path="a.password")), II, "db_dict.path")
case(S, "UninstallKdu", "path-$set", uninstall(db_dict=db(path="$set")), II, "db_dict.path")
case(S, "UninstallKdu", "path-empty-segment", uninstall(db_dict=db(path="a..b")), II, "db_dict.path")

# -- URLs: nothing outside the registered repositories / operator allowlist is fetched -------------
U = "urls"
SYNTAX = "refused by syntax (InvalidInput), not by URL policy"


def repo_url(url: str | Callable[[Ctx], str], cluster: bool = True) -> Callable[[Ctx], dict[str, Any]]:
    return inspect(kdu_model="webapp", repo_url=url, cluster_uuid=CLUSTER if cluster else "")


case(U, "InspectKdu", "repo_url-loopback", repo_url(listener("http://127.0.0.1:{port}/")), UNA)
case(U, "InspectKdu", "repo_url-localhost", repo_url(listener("http://localhost:{port}/")), UNA)
case(U, "InspectKdu", "repo_url-metadata", repo_url("http://169.254.169.254/latest/meta-data/"), UNA,
     via="cli")
case(U, "InspectKdu", "repo_url-10.0.0.1", repo_url("http://10.0.0.1/charts"), UNA)
case(U, "InspectKdu", "repo_url-192.168.1.1", repo_url("http://192.168.1.1/"), UNA)
case(U, "InspectKdu", "repo_url-172.16.0.1", repo_url("http://172.16.0.1/"), UNA)
case(U, "InspectKdu", "repo_url-unspecified", repo_url(listener("http://0.0.0.0:{port}/")), UNA)
case(U, "InspectKdu", "repo_url-ipv6-loopback", repo_url(listener("http://[::1]:{port}/")), II, "repo_url",
     note=SYNTAX + ": IPv6 literals")
case(U, "InspectKdu", "repo_url-userinfo", repo_url(listener("http://user:pass@127.0.0.1:{port}/")), II,
     "repo_url", note=SYNTAX + ": credentials in the URL")
case(U, "InspectKdu", "repo_url-unregistered-host", repo_url("https://charts.example.invalid/"), UNA)
case(U, "InspectKdu", "repo_url-short-ipv4", repo_url(listener("http://127.1:{port}/")), UNA)
case(U, "InspectKdu", "repo_url-decimal-ipv4", repo_url(listener("http://2130706433:{port}/")), UNA)
case(U, "InspectKdu", "repo_url-loopback-no-cluster", repo_url(listener("http://127.0.0.1:{port}/"), False),
     UNA)
case(U, "InstallKdu", "oci-loopback", install(kdu_model=listener("oci://127.0.0.1:{port}/charts/webapp:0.1.0")),
     UNA)
case(U, "InstallKdu", "oci-localhost", install(kdu_model=listener("oci://localhost:{port}/charts/webapp")),
     UNA)
case(U, "InstallKdu", "oci-metadata", install(kdu_model="oci://169.254.169.254/charts/webapp"), UNA)
case(U, "InstallKdu", "oci-10.0.0.1", install(kdu_model="oci://10.0.0.1/charts/webapp"), UNA)
case(U, "InstallKdu", "oci-unregistered-host", install(kdu_model="oci://charts.example.invalid/charts/webapp"),
     UNA)
case(U, "InstallKdu", "oci-ipv6-loopback", install(kdu_model=listener("oci://[::1]:{port}/charts/webapp")),
     II, "kdu_model", note=SYNTAX + ": IPv6 literals")
case(U, "InstallKdu", "oci-userinfo", install(kdu_model=listener("oci://user:pass@127.0.0.1:{port}/c/webapp")),
     II, "kdu_model", note=SYNTAX + ": credentials in the reference")
case(U, "InspectKdu", "oci-loopback", inspect(kdu_model=listener("oci://127.0.0.1:{port}/charts/webapp"),
     cluster_uuid=""), UNA)  # fmt: skip
case(U, "InspectKdu", "oci-192.168.1.1",
     inspect(kdu_model="oci://192.168.1.1/charts/webapp", cluster_uuid=""), UNA)
case(U, "InspectKdu", "oci-unspecified", inspect(kdu_model=listener("oci://0.0.0.0:{port}/charts/webapp"),
     cluster_uuid=""), UNA)  # fmt: skip
case(U, "InstallKdu", "oci-loopback-generated-name",
     install(kdu_model=listener("oci://127.0.0.1:{port}/charts/webapp"), kdu_instance=DROP), UNA,
     note="without kdu_instance the workflow generates a name first")
case(U, "UpgradeKdu", "oci-172.16.0.1", upgrade(kdu_model="oci://172.16.0.1/charts/webapp"), UNA)
case(U, "UpgradeKdu", "oci-loopback", upgrade(kdu_model=listener("oci://127.0.0.1:{port}/charts/webapp")),
     UNA)

# -- bounds -----------------------------------------------------------------------------------------
B = "bounds"
case(B, "InitCluster", "sync_interval_s-1e20", init(sync_interval_s=1e20), II, "sync_interval_s")
case(B, "InitCluster", "sync_interval_s-1e300", init(sync_interval_s=1e300), II, "sync_interval_s")
case(B, "InitCluster", "sync_interval_s-minus5", init(sync_interval_s=-5), II, "sync_interval_s",
     note="the InitClusterInput docs still say negative means no schedule")
case(B, "InitCluster", "sync_interval_s-5", init(sync_interval_s=5), II, "sync_interval_s")
case(B, "InstallKdu", "timeout-0", install(timeout=0), II, "timeout")
case(B, "UpgradeKdu", "timeout-minus1", upgrade(timeout=-1), II, "timeout")
case(B, "RollbackKdu", "timeout-1e12", rollback(timeout=10**12), II, "timeout")
case(B, "ScaleKdu", "timeout-2pow64", scale(timeout=2**64), II, "timeout")
case(B, "ScaleKdu", "scale-minus1", scale(scale=-1), II, "scale")
case(B, "ScaleKdu", "scale-1e9", scale(scale=10**9), II, "scale", via="cli")
case(B, "RollbackKdu", "revision-minus1", rollback(revision=-1), II, "revision")
case(B, "RollbackKdu", "revision-2pow63", rollback(revision=2**63), II, "revision")
case(B, "InstallKdu", "params-nested-200", install(params=nested(200)), II, "params")
case(B, "InstallKdu", "params-3.5MB", install(params={"blob": "x" * (7 * MIB // 2)}), II, "params",
     note="beyond kduflow's bound, within the Temporal frontend's 4 MB message limit")
case(B, "InstallKdu", "params-5MB", install(params={"blob": "x" * (5 * MIB)}), II, "params",
     frontend_may_refuse=True, note="the Temporal frontend refuses messages over 4 MB itself")
case(B, "InstallKdu", "labels-1000", install(labels={f"k{i}": "v" for i in range(1000)}), II, "labels")
case(B, "InstallKdu", "kdu_instance-10k", install(kdu_instance="a" * 10_000), II, "kdu_instance")
case(B, "InstallKdu", "kdu_model-10k", install(kdu_model=f"{REPO_NAME}/" + "w" * 10_000), II, "kdu_model")
case(B, "InstallKdu", "version-10k", install(version="1" * 10_000), II, "version")
case(B, "InstallKdu", "kdu_name-10k", install(kdu_name="n" * 10_000), II, "kdu_name")
case(B, "InstallKdu", "db_dict-filter-1000-fields",
     install(db_dict=db(filt={f"f{i}": i for i in range(1000)})), II, "db_dict.filter")
case(B, "InstallKdu", "db_dict-filter-value-10k", install(db_dict=db(filt={"_id": "x" * 10_000})), II,
     "db_dict.filter")
case(B, "KduStatus", "namespace-10k", ref(namespace="n" * 10_000), II, "namespace")
case(B, "InspectKdu", "kdu_model-10k", inspect(kdu_model="w" * 10_000, cluster_uuid=""), II, "kdu_model")
case(B, "UninstallKdu", "db_dict-path-10k", uninstall(db_dict=db(path="p" * 10_000)), II, "db_dict.path")
case(B, "SyncRepos", "cluster_uuid-10k", sync(cluster_uuid="c" * 10_000), II, "cluster_uuid")

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"

# ------------------------------------------------------------------------------------------------
# The stack: one dev server, one worker, one sandbox cluster and chart repository for the module
# ------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    client: Client
    task_queue: str
    store: Store
    settings: Settings
    cluster: SandboxCluster
    repo: ChartRepoServer
    recorder: AuditRecorder
    policy: Policy
    listener: RecordingListener
    canary: Canary
    ctx: Ctx
    runner: CaseRunner

    async def execute(self, workflow: str, arg: Any) -> Any:
        return await self.client.execute_workflow(
            workflow, arg, id=f"hostile-setup-{workflow}-{uuid.uuid4()}", task_queue=self.task_queue,
            result_type=dict,
        )  # fmt: skip


@pytest_asyncio.fixture(scope="module")
async def stack(chart_repo_factory, tmp_path_factory) -> AsyncIterator[Stack]:
    tools = helm_tools("helm4")
    repo = chart_repo_factory()
    state = tmp_path_factory.mktemp("hostile-state") / "state"
    outside = tmp_path_factory.mktemp("hostile-outside")
    markers = outside / "markers"
    markers.mkdir()
    canary = Canary(outside / "canary-token")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        ui=False,
        dev_server_extra_args=[
            "--dynamic-config-value", f"limit.blobSize.error={BLOB_LIMIT}",
            "--dynamic-config-value", f"limit.blobSize.warn={BLOB_LIMIT}",
        ],
    )  # fmt: skip
    listener_ = RecordingListener()
    try:
        with sandbox_cluster(ready_delay=0.2) as cluster:
            settings = Settings.from_env(
                {}, helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=state,
                private_networks=LOOPBACK_NETWORKS,
            )
            store = Store.open(settings)
            await store.insert_one("k8srepos", {"_id": REPO_ID, "name": REPO_NAME, "url": repo.url,
                                                "type": "helm-chart"})  # fmt: skip
            await store.insert_one("k8sclusters", {"_id": CLUSTER, "name": CLUSTER,
                                                   "credentials": cluster.kubeconfig(),
                                                   "_admin": {"helm_chart_repos": [REPO_ID]}})  # fmt: skip
            await store.insert_one("nsrs", {"_id": NSR, "_admin": {"deployed": {"K8s": [{"kdu-name": "k"}]}}})
            plugin = KduflowPlugin(settings=settings, store=store)
            task_queue = f"hostile-{uuid.uuid4()}"
            address = env.client.service_client.config.target_host
            host, _, port = address.rpartition(":")
            read_roots = default_read_roots()
            for path in (str(outside), str(state)):
                assert not any(path.startswith(r.rstrip("/") + "/") for r in read_roots), path
            policy = Policy(
                state_dir=os.path.realpath(state),
                read_roots=read_roots,
                allowed_connect=frozenset({(host, int(port))}),
                own_executables=frozenset({temporal_cli()}),
            )
            ctx = Ctx(
                cluster=CLUSTER, release=RELEASE, release_namespace=RELEASE_NS, nsr_id=NSR,
                listener_port=listener_.port, canary=str(canary.path), marker_dir=str(markers),
                legit_kubeconfig=cluster.kubeconfig(),
            )  # fmt: skip
            async with Worker(env.client, task_queue=task_queue, plugins=[plugin], workflows=PROBE_WORKFLOWS):
                runner = CaseRunner(
                    client=env.client, task_queue=task_queue, store=store, db_name=settings.mongo_db,
                    recorder=AuditRecorder.install(), policy=policy, listener=listener_, canary=canary,
                    ctx=ctx, temporal_cli=temporal_cli(), temporal_address=address,
                    secrets=(canary.secret, cluster.token or ""),
                )  # fmt: skip
                s = Stack(env.client, task_queue, store, settings, cluster, repo, runner.recorder, policy,
                          listener_, canary, ctx, runner)  # fmt: skip
                # A legitimate cluster with its repository and one release, so that inputs which get
                # past validation reach the activities.
                synced = await s.execute("SyncRepos", {"cluster_uuid": CLUSTER})
                assert synced["added"] == {REPO_ID: REPO_NAME}, synced
                installed = await s.execute("InstallKdu", {
                    "cluster_uuid": CLUSTER, "kdu_model": f"{REPO_NAME}/webapp:0.1.0",
                    "kdu_instance": RELEASE, "namespace": RELEASE_NS, "timeout": 60})  # fmt: skip
                assert installed["status"] == "deployed", installed
                yield s
            await store.close()
    finally:
        listener_.close()
        await env.shutdown()


@pytest.fixture(scope="module")
def summary(request: pytest.FixtureRequest) -> Any:
    collected = Summary()
    yield collected
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    lines = collected.lines()
    if reporter is not None and capture is not None and lines:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
    report = os.environ.get("KDUFLOW_HOSTILE_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as handle:
            json.dump(collected.rows, handle, indent=1)


# ------------------------------------------------------------------------------------------------
# Harness controls: the checks can fail
# ------------------------------------------------------------------------------------------------


async def test_control_harness_sees_spawn_read_write_connect_store_and_marker(stack: Stack) -> None:
    before = await snapshot_store(stack.store, stack.settings.mongo_db)
    accepted = stack.listener.accepted
    marker = stack.ctx.marker("control")
    stack.canary.arm()
    stack.recorder.arm(stack.policy)
    blocked: list[str] = []
    try:
        with open(stack.canary.path, encoding="utf-8") as handle:
            assert handle.read().strip() == stack.canary.secret
        subprocess.run(["/bin/true"], check=True)
        with socket.create_connection(("127.0.0.1", stack.listener.port), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            conn.recv(64)
        with open(marker, "w", encoding="utf-8") as handle:
            handle.write("ran")
        await stack.store.insert_one("other_tenant", {"_id": "control"})
        # Off-box traffic is blocked, not only recorded.
        try:
            socket.create_connection(("10.0.0.1", 9), timeout=2).close()
        except ConnectionRefusedError as err:
            blocked.append(str(err))
        try:
            socket.getaddrinfo("charts.example.invalid", 443)
        except socket.gaierror as err:
            blocked.append(str(err))
        try:
            subprocess.run(["/bin/echo", "http://169.254.169.254/"], check=False, capture_output=True)
        except PermissionError as err:
            blocked.append(str(err))
    finally:
        events = stack.recorder.disarm()
    for _ in range(40):
        if stack.listener.accepted > accepted:
            break
        await asyncio.sleep(0.05)
    after = await snapshot_store(stack.store, stack.settings.mongo_db)
    changes = store_diff(before, after)
    await restore_store(stack.store, stack.settings.mongo_db, before)
    assert store_diff(before, await snapshot_store(stack.store, stack.settings.mongo_db)) == []
    assert len(blocked) == 3, blocked
    out = Outcome(
        state="failed", error_type="InvalidInput", message="invalid x: refused", events=events,
        accepted=stack.listener.connections[accepted:], store_changes=changes,
        markers_present=["control"] if os.path.exists(marker) else [], canary_read=stack.canary.was_read(),
    )  # fmt: skip
    os.unlink(marker)
    found = problems(Case("control", 1, "Probe", "all", None, "InvalidInput", "x"), out)
    kinds = {p.split(":", 1)[0] for p in found}
    expected = {"SPAWNED", "READ", "WROTE", "NETWORK", "STORE CHANGED", "MARKER CREATED (code ran)"}
    assert kinds == expected, found
    assert any("/bin/true" in str(e) for e in events if e.kind == "spawn"), events
    assert any(str(stack.canary.path) in e.detail for e in events if e.kind == "read"), events
    assert any(e.kind == "connect" and e.detail.endswith(f":{stack.listener.port}") for e in events), events
    assert any(e.kind == "connect" and e.blocked and "10.0.0.1" in e.detail for e in events), events
    assert any(e.kind == "resolve" and e.blocked for e in events), events
    assert out.canary_read and out.accepted and changes == ["other_tenant: added \"control\""], (out, changes)


async def test_control_runner_reports_hang_timeout_and_refusal(stack: Stack) -> None:
    hang = Case("control", 1, "HostileProbeHang", "hang", lambda c: {}, "InvalidInput")
    out = await stack.runner.run(hang)
    assert out.state == "hung" and out.elapsed < 5 and "RUNNING" in out.why, out
    assert problems(hang, out)[0].startswith("HUNG"), problems(hang, out)

    slow = Case("control", 2, "HostileProbeSlow", "slow", lambda c: {}, "InvalidInput")
    out = await stack.runner.run(slow, timeout=2.0)
    assert out.state == "timeout" and out.status == "RUNNING", out
    assert problems(slow, out)[0].startswith("NOT CLOSED"), problems(slow, out)

    for via in ("client", "cli"):
        refuse = Case("control", 3, "HostileProbeRefuse", "refuse", lambda c: {"x": 1}, "InvalidInput",
                      "probe_field", via=via)  # fmt: skip
        out = await stack.runner.run(refuse)
        assert out.state == "failed" and out.error_type == "InvalidInput", out
        assert problems(refuse, out) == [], problems(refuse, out)
        wrong = Case("control", 4, "HostileProbeRefuse", "refuse", lambda c: {}, "UrlNotAllowed", "other")
        assert problems(wrong, out)[0].startswith("WRONG TYPE"), problems(wrong, out)


async def test_control_benign_refusal_has_no_violations(stack: Stack) -> None:
    """An ordinary refusal that runs an activity and reads the store: the harness flags nothing."""
    benign = Case("control", 5, "KduStatus", "unregistered-cluster",
                  lambda c: {"cluster_uuid": UNREGISTERED, "kdu_instance": "web", "namespace": "default"},
                  "ClusterNotFound")  # fmt: skip
    out = await stack.runner.run(benign)
    assert problems(benign, out) == [], (problems(benign, out), out)


# ------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hostile", CASES, ids=lambda c: c.id)
async def test_hostile_input(stack: Stack, summary: Summary, hostile: Case) -> None:
    out = await stack.runner.run(hostile)
    found = problems(hostile, out)
    summary.add(hostile, out, found)
    note = f" [{hostile.note}]" if hostile.note else ""
    assert not found, f"{hostile.id}{note} (state {out.state}, {out.elapsed:.1f}s):\n  " + "\n  ".join(found)


# ------------------------------------------------------------------------------------------------
# Positive: the operator's explicit replacement of credentials is allowed
# ------------------------------------------------------------------------------------------------


async def test_replace_credentials_is_allowed(stack: Stack) -> None:
    cid = "hostile-replace"
    await stack.store.insert_one(
        "k8sclusters", {"_id": cid, "name": cid, "credentials": stack.cluster.kubeconfig()}
    )
    new = stack.cluster.kubeconfig(namespace="replaced")
    try:
        result = await stack.execute(
            "InitCluster", {"cluster_uuid": cid, "k8s_creds": new, "replace_credentials": True}
        )
        assert result["cluster_uuid"] == cid, result
        doc = await stack.store.find_one("k8sclusters", {"_id": cid})
        assert doc is not None
        stored = doc["credentials"]
        assert (yaml.safe_load(stored) if isinstance(stored, str) else stored) == yaml.safe_load(new)
    finally:
        # Absent when InitCluster failed before creating it.
        with contextlib.suppress(Exception):
            await stack.client.get_schedule_handle(schedule_id_for(cid)).delete()
        await stack.store.delete_one("k8sclusters", {"_id": cid})
