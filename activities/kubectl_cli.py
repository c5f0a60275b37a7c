"""Pure kubectl argv builders and JSON parsers (kubectl v1.31 and v1.37 print the same shapes).

The runner supplies KUBECONFIG through the cluster environment; no connection flag is built here.
"""

from __future__ import annotations

from typing import Any

from activities.helm_cli import check_namespace, load_json
from contract.models import ServiceInfo, ServicePort


def build_get_services_argv(kubectl: str, *, namespace: str) -> list[str]:
    return [kubectl, "get", "services", "--namespace", check_namespace(namespace), "--output", "json"]


def build_get_namespaces_argv(kubectl: str) -> list[str]:
    return [kubectl, "get", "namespaces", "--output", "json"]


def build_create_namespace_argv(kubectl: str, *, namespace: str) -> list[str]:
    return [kubectl, "create", "namespace", check_namespace(namespace)]


def build_get_object_argv(kubectl: str, *, kind: str, name: str, namespace: str) -> list[str]:
    """One object as JSON (``kind`` is a fixed word chosen by kduflow, e.g. ``secret``)."""
    return [kubectl, "get", kind, name, "--namespace", check_namespace(namespace), "--output", "json"]


def build_replace_argv(kubectl: str, *, namespace: str) -> list[str]:
    """Replace the object read as JSON from stdin (its resourceVersion makes a concurrent change a
    conflict). ``--output name``: the object, which may hold secrets, is not printed back."""
    return [
        kubectl, "replace", "--validate=false", "--namespace", check_namespace(namespace),
        "--filename", "-", "--output", "name",
    ]  # fmt: skip


def build_version_argv(kubectl: str) -> list[str]:
    return [kubectl, "version", "--client", "--output", "json"]


def parse_version(stdout: bytes | str) -> str:
    """``kubectl version --client -o json`` -> ``"v1.31.9"``."""
    doc = load_json(stdout)
    return str(((doc or {}).get("clientVersion") or {}).get("gitVersion") or "")


def parse_namespaces(stdout: bytes | str) -> list[str]:
    doc = load_json(stdout) or {}
    return [str((item.get("metadata") or {}).get("name", "")) for item in doc.get("items") or []]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def parse_service(obj: dict[str, Any], default_namespace: str = "") -> ServiceInfo:
    """One Service object; missing ``spec``/``status`` fields give defaults, never an exception.

    A LoadBalancer whose ``status.loadBalancer.ingress`` is absent or empty is ``pending``; its
    ingress may carry IPs, hostnames (e.g. AWS ELB), or both (N2VC crashed on both).
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    svc_type = str(spec.get("type") or "ClusterIP")
    ports = [
        ServicePort(
            port=_int(p.get("port")),
            protocol=str(p.get("protocol") or "TCP"),
            name=str(p.get("name") or ""),
            target_port=str(p.get("targetPort") if p.get("targetPort") is not None else ""),
            node_port=_int(p.get("nodePort")),
        )
        for p in spec.get("ports") or []
        if isinstance(p, dict)
    ]
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ips = [str(i["ip"]) for i in ingress if isinstance(i, dict) and i.get("ip")]
    hostnames = [str(i["hostname"]) for i in ingress if isinstance(i, dict) and i.get("hostname")]
    return ServiceInfo(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or default_namespace),
        type=svc_type,
        cluster_ip=str(spec.get("clusterIP") or ""),
        ports=ports,
        external_ip=ips,
        external_hostname=hostnames,
        pending=svc_type == "LoadBalancer" and not (ips or hostnames),
    )


def parse_services(
    stdout: bytes | str, *, names: set[str] | None = None, namespace: str = ""
) -> list[ServiceInfo]:
    """``kubectl get services -o json`` (a List), optionally only the given names, sorted by name."""
    doc = load_json(stdout) or {}
    services = [parse_service(item, namespace) for item in doc.get("items") or [] if isinstance(item, dict)]
    if names is not None:
        services = [s for s in services if s.name in names]
    return sorted(services, key=lambda s: s.name)
