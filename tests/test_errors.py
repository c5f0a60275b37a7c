"""The error tree, helm stderr classification (real captured stderr and known helm messages), and the
conversion to Temporal ApplicationError."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities import errors as e

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        pytest.param(
            "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
            e.OperationInProgress,
            id="lock held",
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: cannot re-use a name that is still in use",
            e.ReleaseNameInUse,
            id="name in use (helm 3)",
        ),
        pytest.param(
            'level=ERROR msg="release name check failed"\nError: INSTALLATION FAILED: release name check '
            "failed: cannot reuse a name that is still in use",
            e.ReleaseNameInUse,
            id="name in use (helm 4)",
        ),
        pytest.param(
            'Error: Kubernetes cluster unreachable: Get "https://127.0.0.1:1/version": dial tcp '
            "127.0.0.1:1: connect: connection refused",
            e.ClusterUnreachable,
            id="connection refused",
        ),
        pytest.param(
            'Error: kubernetes cluster unreachable: Get "https://k.example/version": dial tcp: lookup '
            "k.example: no such host",
            e.ClusterUnreachable,
            id="dns",
        ),
        pytest.param(
            "Error: Get https://10.0.0.1/api: net/http: TLS handshake timeout",
            e.ClusterUnreachable,
            id="tls handshake timeout",
        ),
        pytest.param("Error: dial tcp 10.0.0.1:6443: i/o timeout", e.ClusterUnreachable, id="i/o timeout"),
        pytest.param("Error: etcdserver: request timed out", e.ServerError, id="etcd"),
        pytest.param(
            "Error: the server is currently unable to handle the request (get secrets)",
            e.ServerError,
            id="503",
        ),
        pytest.param(
            'Error: an error on the server ("") has prevented the request from succeeding: status code: 502',
            e.ServerError,
            id="5xx status code",
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: Kubernetes cluster unreachable: the server has asked for the "
            "client to provide credentials",
            e.CredentialsInvalid,
            id="credentials beat unreachable",
        ),
        pytest.param("Error: Unauthorized", e.CredentialsInvalid, id="401"),
        pytest.param(
            'Error: secrets is forbidden: User "x" cannot list resource "secrets"',
            e.CredentialsInvalid,
            id="rbac",
        ),
        pytest.param(
            "Error: x509: certificate signed by unknown authority", e.CredentialsInvalid, id="bad ca"
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: repo nosuchrepo not found", e.ChartNotFound, id="repo not found"
        ),
        pytest.param(
            'Error: INSTALLATION FAILED: chart "nginx" version "9.9.9" not found in https://c.io repository',
            e.ChartNotFound,
            id="chart version not found",
        ),
        pytest.param("Error: no chart version found for mysql-9.9.9", e.ChartNotFound, id="no chart version"),
        pytest.param(
            "Error: failed to fetch https://c.io/a-1.0.tgz : 404 Not Found",
            e.ChartNotFound,
            id="404 fetching chart",
        ),
        pytest.param("Error: oci://reg.io/charts/app:1.0: not found", e.ChartNotFound, id="oci not found"),
        pytest.param(
            'Error: looks like "https://c.io" is not a valid chart repository or cannot be reached: Get '
            '"https://c.io/index.yaml": dial tcp: connection refused',
            e.HelmError,
            id="repo unreachable",
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: execution error at (x/templates/a.yaml:502:3): port 401 forbidden",
            e.RenderFailed,
            id="chart fail message with other rules' words",
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: values don't meet the specifications of the schema(s) in the "
            "following chart(s):\nx:\n- replicaCount: Invalid type",
            e.RenderFailed,
            id="values schema",
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: parse error at (x/templates/a.yaml:3): unclosed action",
            e.RenderFailed,
            id="template parse error",
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: YAML parse error on x/templates/a.yaml: error converting YAML to "
            "JSON",
            e.RenderFailed,
            id="yaml produced by template",
        ),
        pytest.param(
            'Error: UPGRADE FAILED: cannot patch "x" with kind Deployment: Deployment.apps "x" is invalid: '
            "spec.selector: field is immutable",
            e.InvalidResource,
            id="immutable field",
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: unable to build kubernetes objects from release manifest: "
            'resource mapping not found for name: "x"',
            e.InvalidResource,
            id="unknown kind",
        ),
        pytest.param(
            "Error: INSTALLATION FAILED: rendered manifests contain a resource that already exists",
            e.InvalidResource,
            id="resource owned elsewhere",
        ),
        pytest.param("Error: release: not found", e.ReleaseNotFound, id="release not found"),
        pytest.param(
            "Error: uninstall: Release not loaded: x: release: not found",
            e.ReleaseNotFound,
            id="uninstall of absent",
        ),
        pytest.param(
            'Error: UPGRADE FAILED: "x" has no deployed releases', e.ReleaseNotFound, id="no deployed"
        ),
        pytest.param("Error: unknown flag: --atomic", e.UnsupportedHelm, id="unknown flag"),
        pytest.param("Error: unknown shorthand flag: 'a' in -a", e.UnsupportedHelm, id="unknown shorthand"),
        pytest.param(
            "Error: something nobody foresaw", e.HelmError, id="unclassified is retryable HelmError"
        ),
        pytest.param("", e.HelmError, id="empty stderr"),
    ],
)
def test_classify_helm_stderr(stderr: str, expected: type[e.KduflowError]) -> None:
    err = e.classify_helm_stderr(stderr, 1)
    assert type(err) is expected
    assert err.details == {"returncode": 1}


@pytest.mark.parametrize("dialect", ["helm3", "helm4"])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("status-missing.err", e.ReleaseNotFound),
        ("history-missing.err", e.ReleaseNotFound),
        ("install-in-use.err", e.ReleaseNameInUse),
        ("install-render-fail.err", e.RenderFailed),
        ("install-fail.err", e.HelmError),
        ("install-atomic-fail.err", e.HelmError),
    ],
)
def test_classify_real_captured_stderr(dialect: str, name: str, expected: type[e.KduflowError]) -> None:
    assert type(e.classify_helm_stderr((DATA / dialect / name).read_bytes(), 1)) is expected


def test_warnings_are_never_the_reason() -> None:
    stderr = (
        "WARNING: Kubernetes configuration file is group-readable. This is insecure.\n"
        "Flag --atomic has been deprecated, use --rollback-on-failure instead\n"
        'level=WARN msg="--wait=true is deprecated"\n'
        "Error: release: not found\n"
    )
    err = e.classify_helm_stderr(stderr, 1, context="helm status demo")
    assert isinstance(err, e.ReleaseNotFound)
    assert err.message == "helm status demo: Error: release: not found"


def test_messages_are_short_and_scrubbed_of_secrets() -> None:
    stderr = "noise\n" * 50 + "Error: INSTALLATION FAILED: " + "x" * 2000 + " bad value s3cr3t-password-value"
    err = e.classify_helm_stderr(stderr, 1, secrets=["s3cr3t-password-value", "abc"])
    assert "s3cr3t" not in err.message and "<redacted>" in err.message
    assert len(err.message) <= e.MAX_MESSAGE_CHARS
    assert "noise | noise | noise | noise" not in err.message  # only the last relevant lines are kept


def test_tree_retryability_follows_the_architecture() -> None:
    for name in e.NON_RETRYABLE_TYPES:
        assert getattr(e, name).retryable is False, name
    for name in ("ClusterUnreachable", "ServerError", "OperationInProgress", "ProcessTimeout", "HelmError"):
        assert getattr(e, name).retryable is True, name
    assert issubclass(e.UpgradeRolledBack, e.ReleaseFailed) and issubclass(e.RollbackFailed, e.ReleaseFailed)


@pytest.mark.parametrize(
    ("err", "non_retryable"),
    [
        (
            e.UpgradeRolledBack(
                "helm upgrade demo: failed", details={"failed_revision": 3, "restored_revision": 2}
            ),
            True,
        ),
        (e.ClusterUnreachable("helm status demo: connection refused"), False),
    ],
)
def test_to_application_error(err: e.KduflowError, non_retryable: bool) -> None:
    app = e.to_application_error(err)
    assert isinstance(app, ApplicationError)
    assert app.type == type(err).__name__
    assert app.non_retryable is non_retryable
    assert app.message == err.message
    assert list(app.details) == ([err.details] if err.details else [])
