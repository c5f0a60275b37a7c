"""kubectl_cli: golden argv, flags checked against both real kubectl binaries, Service parsing from captured
real output and from the shapes N2VC crashed on (pending LoadBalancer, hostname-only ingress)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from activities import kubectl_cli as k
from activities.errors import InvalidInput

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            k.build_get_services_argv("kubectl", namespace="ns1"),
            ["kubectl", "get", "services", "--namespace", "ns1", "--output", "json"],
            id="get services",
        ),
        pytest.param(
            k.build_get_namespaces_argv("kubectl"),
            ["kubectl", "get", "namespaces", "--output", "json"],
            id="get namespaces",
        ),
        pytest.param(
            k.build_create_namespace_argv("kubectl", namespace="ns1"),
            ["kubectl", "create", "namespace", "ns1"],
            id="create namespace",
        ),
        pytest.param(
            k.build_version_argv("kubectl"),
            ["kubectl", "version", "--client", "--output", "json"],
            id="version",
        ),
    ],
)
def test_builders_golden_argv(argv: list[str], expected: list[str]) -> None:
    assert argv == expected


def test_builders_reject_flag_like_namespaces() -> None:
    with pytest.raises(InvalidInput, match="namespace"):
        k.build_get_services_argv("kubectl", namespace="--all-namespaces")


def test_real_kubectl_version_parses(tools) -> None:
    proc = subprocess.run(k.build_version_argv(str(tools.kubectl)), capture_output=True, env={}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert k.parse_version(proc.stdout) == ("v1.31.9" if tools.dialect == "helm3" else "v1.37.1")


def test_every_built_flag_exists_in_real_kubectl(tools) -> None:
    for argv in (
        k.build_get_services_argv(str(tools.kubectl), namespace="ns1"),
        k.build_create_namespace_argv(str(tools.kubectl), namespace="ns1"),
    ):
        help_text = subprocess.run([*argv[:2], "--help"], capture_output=True, text=True, env={}).stdout
        help_text += subprocess.run([argv[0], "options"], capture_output=True, text=True, env={}).stdout
        for flag in (a for a in argv if a.startswith("--")):
            assert f"{flag}=" in help_text or f"{flag} " in help_text, (tools.dialect, flag)


def test_parse_services_from_real_kubectl_output(tools) -> None:
    (svc,) = k.parse_services(
        (DATA / tools.dialect / "kubectl-services.out").read_bytes(), names={"demo-1-webapp"}
    )
    assert (svc.name, svc.namespace, svc.type) == ("demo-1-webapp", "ns1", "LoadBalancer")
    assert svc.cluster_ip and svc.external_ip and not svc.pending
    assert (svc.ports[0].port, svc.ports[0].protocol, svc.ports[0].target_port) == (80, "TCP", "http")
    assert (
        k.parse_services((DATA / tools.dialect / "kubectl-services.out").read_bytes(), names={"other"}) == []
    )


def service(name: str, svc_type: str, status: dict | None = None, **spec: object) -> dict:
    obj: dict = {"metadata": {"name": name}, "spec": {"type": svc_type, **spec}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("obj", "ips", "hostnames", "pending"),
    [
        pytest.param(service("a", "LoadBalancer"), [], [], True, id="LB without status"),
        pytest.param(
            service("a", "LoadBalancer", {"loadBalancer": {}}), [], [], True, id="LB ingress absent"
        ),
        pytest.param(
            service("a", "LoadBalancer", {"loadBalancer": {"ingress": None}}),
            [],
            [],
            True,
            id="LB ingress null (N2VC TypeError)",
        ),
        pytest.param(
            service("a", "LoadBalancer", {"loadBalancer": {"ingress": [{"hostname": "x.elb.aws"}]}}),
            [],
            ["x.elb.aws"],
            False,
            id="hostname only (N2VC KeyError)",
        ),
        pytest.param(
            service(
                "a",
                "LoadBalancer",
                {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "5.6.7.8", "hostname": "h"}]}},
            ),
            ["1.2.3.4", "5.6.7.8"],
            ["h"],
            False,
            id="several",
        ),
        pytest.param(service("a", "ClusterIP"), [], [], False, id="ClusterIP is never pending"),
        pytest.param({"metadata": {"name": "a"}}, [], [], False, id="no spec at all"),
    ],
)
def test_parse_service_never_crashes_on_partial_status(obj: dict, ips, hostnames, pending) -> None:
    svc = k.parse_service(obj, "ns1")
    assert (svc.external_ip, svc.external_hostname, svc.pending, svc.namespace) == (
        ips,
        hostnames,
        pending,
        "ns1",
    )


def test_parse_service_ports_and_node_ports() -> None:
    obj = service(
        "a",
        "NodePort",
        ports=[{"port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053}, {"port": "bad"}],
    )
    svc = k.parse_service(obj)
    assert [(p.port, p.protocol, p.target_port, p.node_port) for p in svc.ports] == [
        (53, "UDP", "5353", 30053),
        (0, "TCP", "", 0),
    ]


def test_parse_namespaces() -> None:
    doc = {"items": [{"metadata": {"name": "default"}}, {"metadata": {"name": "ns1"}}]}
    assert k.parse_namespaces(json.dumps(doc)) == ["default", "ns1"]
