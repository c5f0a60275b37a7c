"""Pure helm argv builders and output parsers for helm 3 (>= 3.14) and helm 4 (>= 4.2).

No I/O here: ``build_<verb>_argv(helm, version, ...) -> list[str]`` and ``parse_<verb>(stdout)``.
The runner executes the argv with the cluster's private environment (KUBECONFIG, HELM_* homes),
so no connection flag is ever built here, and chart values always travel as JSON on stdin
(``--values -``), never as ``--set`` strings.

Dialect differences handled (checked against ``helm <verb> --help`` of v3.17.3 and v4.3.1):

====================  ======================  =========================================
intent                helm 3                  helm 4
====================  ======================  =========================================
undo on failure       ``--atomic``            ``--rollback-on-failure``
wait for readiness    ``--wait``              ``--wait=watcher`` (always the ``=`` form)
replace strategy      ``--force``             ``--force-replace --server-side=false``
list every status     ``--all``               (default; ``--all`` is an unknown flag)
====================  ======================  =========================================
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from activities.errors import InvalidInput, UnsupportedHelm
from contract import validation
from contract.models import ReleaseInfo, ReleaseStatus, ReleaseSummary, RevisionInfo

#: Oldest supported releases: 3.14 has --labels and --reset-then-reuse-values; helm 4.0.0-4.1.1
#: reject --atomic and 4.1.x has a rollback regression (helm #31900, #32244).
MIN_HELM3 = (3, 14, 0)
MIN_HELM4 = (4, 2, 0)

# Release names: DNS-1123 subdomain, at most 53 characters (helm's own limit).
_RELEASE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CHART_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_~^<>=*, -]*$")
_URL = re.compile(r"^https?://\S+$")


# ------------------------------------------------------------------------------------------
# Version and dialect.
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HelmVersion:
    """A helm version from ``helm version --template '{{.Version}}'`` (``v3.17.3``)."""

    major: int
    minor: int
    patch: int
    text: str = ""

    @classmethod
    def parse(cls, text: str | bytes) -> HelmVersion:
        """Parse and check support.

        Raises:
            UnsupportedHelm: (non-retryable) not a version, helm 2, helm 3 < 3.14, 4.0/4.1, or >= 5.
        """
        raw = (text.decode() if isinstance(text, bytes) else text).strip()
        match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", raw)
        if match is None:
            raise UnsupportedHelm(f"cannot parse helm version {raw[:40]!r}")
        version = cls(int(match[1]), int(match[2]), int(match[3]), raw)
        triple = (version.major, version.minor, version.patch)
        if version.major == 3 and triple < MIN_HELM3:
            raise UnsupportedHelm(f"helm {raw} is too old: kduflow needs helm >= 3.14 or >= 4.2")
        if version.major == 4 and triple < MIN_HELM4:
            raise UnsupportedHelm(
                f"helm {raw} is unsupported (4.0/4.1 flag and rollback regressions): use >= 4.2"
            )
        if version.major not in (3, 4):
            raise UnsupportedHelm(f"helm {raw} is unsupported: kduflow drives helm 3 (>= 3.14) and helm 4")
        return version

    @property
    def dialect(self) -> int:
        """3 or 4: which flag spelling to build."""
        return self.major


def build_version_argv(helm: str) -> list[str]:
    return [helm, "version", "--template", "{{.Version}}"]


# ------------------------------------------------------------------------------------------
# Input validation (argument injection is impossible with argv lists, but a name starting with
# "-" would still be read as a flag by helm).
# ------------------------------------------------------------------------------------------


def check_release_name(name: str, field: str = "kdu_instance") -> str:
    if len(name) > 53 or not _RELEASE_NAME.match(name):
        raise InvalidInput(f"{field}: {name!r} is not a valid release name (lowercase DNS name, <= 53 chars)")
    return name


def check_namespace(namespace: str, field: str = "namespace") -> str:
    if len(namespace) > 63 or not _NAMESPACE.match(namespace):
        raise InvalidInput(f"{field}: {namespace!r} is not a valid namespace name")
    return namespace


def check_chart_version(version: str, field: str = "version") -> str:
    if version and (len(version) > 128 or not _CHART_VERSION.match(version)):
        raise InvalidInput(f"{field}: {version!r} is not a chart version or constraint")
    return version


def check_labels(labels: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    """Kubernetes label syntax, helm's reserved labels refused (the workflows' rule)."""
    try:
        return validation.validate_labels(labels, field)
    except validation.InvalidInputError as err:
        raise InvalidInput(f"{field}: {err.message}") from None


def _timeout(seconds: int | float) -> str:
    if seconds <= 0:
        raise InvalidInput(f"timeout: must be > 0, got {seconds}")
    return f"{int(seconds)}s"


def _wait_flag(version: HelmVersion) -> str:
    # helm 4's --wait takes an optional value: only the "=" form cannot be misread as a positional.
    return "--wait=watcher" if version.dialect == 4 else "--wait"


def _atomic_flag(version: HelmVersion) -> str:
    return "--rollback-on-failure" if version.dialect == 4 else "--atomic"


def _force_flags(version: HelmVersion) -> list[str]:
    # helm 4 refuses force-replace together with server-side apply.
    return ["--force-replace", "--server-side=false"] if version.dialect == 4 else ["--force"]


def _labels_flags(labels: Mapping[str, str]) -> list[str]:
    if not labels:
        return []
    return ["--labels", ",".join(f"{k}={v}" for k, v in sorted(check_labels(labels).items()))]


def _ns(namespace: str) -> list[str]:
    return ["--namespace", check_namespace(namespace)]


# ------------------------------------------------------------------------------------------
# Chart references.
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartRef:
    """A resolved chart reference: ``chart`` is the argv element, ``version`` goes to --version."""

    #: "repo" (repo/chart), "oci" (oci://...), "local" (under the charts dir)
    kind: str
    chart: str
    version: str = ""
    repo: str = ""


def parse_kdu_model(kdu_model: str, version: str = "", charts_dir: Path | None = None) -> ChartRef:
    """Resolve an N2VC ``kdu_model`` into a chart argv element and version.

    The accepted forms and their validation are the workflows' (``workflows.validation``), so an
    activity called directly refuses exactly what a workflow refuses: ``repo/chart``,
    ``repo/chart:1.2.3`` (N2VC's version suffix), ``oci://host[:port]/path/chart[:tag]``, and a chart
    directory or ``.tgz`` name directly under ``charts_dir``. ``version`` overrides any suffix.

    Raises:
        InvalidInput: (non-retryable) anything else, paths escaping ``charts_dir``, or a local
            chart that does not exist.
    """
    check_chart_version(version)
    try:
        ref = validation.parse_kdu_model(kdu_model.strip())
    except validation.InvalidInputError as err:
        raise InvalidInput(f"kdu_model: {err.message}") from None
    if ref.kind == "local":
        return ChartRef("local", str(resolve_local_chart(ref.chart, charts_dir)), "")
    repo = ref.chart.split("/", 1)[0] if ref.kind == "repo" else ""
    return ChartRef(ref.kind, ref.chart, version or ref.version, repo)


def resolve_local_chart(name: str, charts_dir: Path | None) -> Path:
    """The chart directory or archive ``name`` directly under ``charts_dir`` (symlinks resolved)."""
    if charts_dir is None:
        raise InvalidInput(
            f"kdu_model: {name!r} looks like a local chart but no charts directory is configured"
            " (KDUFLOW_CHARTS_DIR)"
        )
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise InvalidInput(f"kdu_model: {name!r} must be a name inside the charts directory")
    root = charts_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise InvalidInput(f"kdu_model: {name!r} escapes the charts directory")
    if not (path.is_dir() and (path / "Chart.yaml").is_file()) and not (
        path.is_file() and name.endswith(".tgz")
    ):
        raise InvalidInput(f"kdu_model: no chart directory or .tgz named {name!r} in the charts directory")
    return path


def _chart_args(chart: ChartRef, repo_url: str = "") -> list[str]:
    args = [chart.chart]
    if chart.version and chart.kind != "local":
        args += ["--version", chart.version]
    if repo_url:
        if not _URL.match(repo_url):
            raise InvalidInput(f"repo_url: {repo_url!r} is not an http(s) URL")
        args += ["--repo", repo_url]
    return args


# ------------------------------------------------------------------------------------------
# Values.
# ------------------------------------------------------------------------------------------


def build_values_stdin(values: Mapping[str, Any], set_values: Mapping[str, Any] | None = None) -> bytes:
    """Chart values as the JSON document helm reads from ``--values -``.

    ``set_values`` maps dotted keys (``"db.replicas"``) to typed values; they are merged into a
    copy of ``values`` (creating intermediate maps), so nothing needs ``--set`` string syntax.

    Raises:
        InvalidInput: a dotted key crosses a non-map value, or the values are not JSON-serialisable.
    """
    merged: dict[str, Any] = json.loads(json.dumps(dict(values))) if values else {}
    for dotted, value in (set_values or {}).items():
        parts = dotted.split(".")
        if not dotted or any(not p for p in parts):
            raise InvalidInput(f"set_values: {dotted!r} is not a dotted key")
        node = merged
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidInput(f"set_values: {'.'.join(parts[: i + 1])!r} is not a map in the values")
            node = child
        node[parts[-1]] = value
    try:
        return json.dumps(merged, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"values: not JSON-serialisable ({type(exc).__name__})") from exc


def secret_strings(values: Any) -> list[str]:
    """Leaves of the values as text, to scrub from error messages and logged argv.

    Numbers count too (a PIN or a numeric password is a number in YAML): helm and a chart's
    ``fail``/``required`` messages print them, so each is listed in the forms they appear in.
    Booleans and null are not secrets. The walk is iterative: values can be deeply nested.
    """
    found: list[str] = []
    stack = [values]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, str):
            found.append(node)
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int | float):
            # helm decodes values into float64 and Go's %v prints those in its shortest form.
            found.extend(dict.fromkeys((str(node), repr(float(node)), go_float(float(node)))))
    return found


def go_float(value: float) -> str:
    """``value`` as Go's ``fmt`` prints a float64 with ``%v`` (``strconv.FormatFloat(v, 'g', -1, 64)``).

    The shortest digits that round-trip, in exponent form when the decimal exponent is below -4 or
    at least 6: 123456 -> "123456", 1234567 -> "1.234567e+06", 0.00001 -> "1e-05".
    """
    if not math.isfinite(value):
        return {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, "NaN")
    if value == 0:
        return "0"
    sign, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    exp = len(digits) - 1 + int(exponent)
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{minus}0.{'0' * (-exp - 1)}{text}"
    whole = text[: exp + 1].ljust(exp + 1, "0")
    rest = text[exp + 1 :]
    return f"{minus}{whole}" + (f".{rest}" if rest else "")


# ------------------------------------------------------------------------------------------
# Builders.
# ------------------------------------------------------------------------------------------


def build_install_argv(
    helm: str,
    version: HelmVersion,
    *,
    release: str,
    chart: ChartRef,
    namespace: str,
    timeout: int,
    atomic: bool = False,
    wait: bool = True,
    create_namespace: bool = False,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """``helm install`` with values on stdin and JSON output."""
    argv = [helm, "install", check_release_name(release), *_chart_args(chart), *_ns(namespace),
            "--values", "-", "--output", "json", "--timeout", _timeout(timeout)]  # fmt: skip
    if create_namespace:
        argv.append("--create-namespace")
    if atomic:
        argv.append(_atomic_flag(version))
    if wait or atomic:
        argv.append(_wait_flag(version))
    return argv + _labels_flags(labels or {})


def upgrade_values_flags(reuse_values: bool, reset_values: bool) -> list[str]:
    """How the previous values combine with the new ones.

    - reuse only: ``--reuse-values`` (previous values + new ones);
    - reset only: ``--reset-values`` (chart defaults + new ones);
    - both: ``--reset-then-reuse-values`` (new chart defaults, then previous values, then new ones);
    - neither: no flag (helm's default: previous values only when no new values are given).

    N2VC tested ``reuse_values`` first and so never emitted the combined flag.
    """
    if reset_values and reuse_values:
        return ["--reset-then-reuse-values"]
    if reset_values:
        return ["--reset-values"]
    if reuse_values:
        return ["--reuse-values"]
    return []


def build_upgrade_argv(
    helm: str,
    version: HelmVersion,
    *,
    release: str,
    chart: ChartRef,
    namespace: str,
    timeout: int,
    reuse_values: bool = True,
    reset_values: bool = False,
    force: bool = False,
    atomic: bool = False,
    wait: bool = True,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """``helm upgrade`` (never ``--install``: installs go through the install activity)."""
    argv = [helm, "upgrade", check_release_name(release), *_chart_args(chart), *_ns(namespace),
            "--values", "-", "--output", "json", "--timeout", _timeout(timeout)]  # fmt: skip
    argv += upgrade_values_flags(reuse_values, reset_values)
    if force:
        argv += _force_flags(version)
    if atomic:
        argv.append(_atomic_flag(version))
    if wait or atomic:
        argv.append(_wait_flag(version))
    return argv + _labels_flags(labels or {})


def build_rollback_argv(
    helm: str,
    version: HelmVersion,
    *,
    release: str,
    revision: int,
    namespace: str,
    timeout: int,
    wait: bool = True,
) -> list[str]:
    """``helm rollback NAME REVISION`` to an explicit revision (helm's 0 means "previous": refused)."""
    if revision <= 0:
        raise InvalidInput(f"revision: must be an explicit revision > 0, got {revision}")
    argv = [helm, "rollback", check_release_name(release), str(revision), *_ns(namespace),
            "--timeout", _timeout(timeout)]  # fmt: skip
    if wait:
        argv.append(_wait_flag(version))
    return argv


def build_uninstall_argv(
    helm: str, version: HelmVersion, *, release: str, namespace: str, timeout: int, wait: bool = True
) -> list[str]:
    argv = [helm, "uninstall", check_release_name(release), *_ns(namespace), "--timeout", _timeout(timeout)]
    if wait:
        argv.append(_wait_flag(version))
    return argv


def build_status_argv(helm: str, version: HelmVersion, *, release: str, namespace: str) -> list[str]:
    return [helm, "status", check_release_name(release), *_ns(namespace), "--output", "json"]


def build_history_argv(helm: str, version: HelmVersion, *, release: str, namespace: str) -> list[str]:
    # --max 0 is not "all" for history; 256 is helm's default and above any --history-max kept.
    return [helm, "history", check_release_name(release), *_ns(namespace), "--output", "json", "--max", "256"]


def exact_name_filter(name: str) -> str:
    """A ``helm list --filter`` regex matching exactly ``name`` (Go RE2 accepts Python's escapes)."""
    return "^" + re.escape(check_release_name(name, "name")) + "$"


def build_list_argv(
    helm: str,
    version: HelmVersion,
    *,
    namespace: str = "",
    name: str = "",
    selector: Mapping[str, str] | None = None,
) -> list[str]:
    """``helm list`` of every status (pending and uninstalling included) and every release.

    ``--max 0`` lifts helm's 256-release page limit (helm treats 0 as "no limit");
    ``namespace`` "" means all namespaces; ``selector`` filters on release labels.
    """
    argv = [helm, "list", "--output", "json", "--max", "0"]
    argv += _ns(namespace) if namespace else ["--all-namespaces"]
    if version.dialect == 3:
        argv.append("--all")
    if name:
        argv += ["--filter", exact_name_filter(name)]
    if selector:
        argv += [
            "--selector",
            ",".join(f"{k}={v}" for k, v in sorted(check_labels(selector, "selector").items())),
        ]
    return argv


def build_get_values_argv(
    helm: str, version: HelmVersion, *, release: str, namespace: str, all_values: bool = False
) -> list[str]:
    argv = [helm, "get", "values", check_release_name(release), *_ns(namespace), "--output", "json"]
    return argv + (["--all"] if all_values else [])


def build_get_manifest_argv(helm: str, version: HelmVersion, *, release: str, namespace: str) -> list[str]:
    return [helm, "get", "manifest", check_release_name(release), *_ns(namespace)]


def build_get_metadata_argv(helm: str, version: HelmVersion, *, release: str, namespace: str) -> list[str]:
    return [helm, "get", "metadata", check_release_name(release), *_ns(namespace), "--output", "json"]


def build_show_argv(
    helm: str, version: HelmVersion, *, what: str, chart: ChartRef, repo_url: str = ""
) -> list[str]:
    """``helm show chart|values|readme CHART [--version V] [--repo URL]`` (no cluster needed)."""
    if what not in ("chart", "values", "readme"):
        raise InvalidInput(f"show: unknown subcommand {what!r}")
    return [helm, "show", what, *_chart_args(chart, repo_url)]


def build_search_repo_argv(
    helm: str, version: HelmVersion, *, chart_name: str, chart_version: str = ""
) -> list[str]:
    """``helm search repo`` for a chart name (to find which configured repo provides it)."""
    argv = [helm, "search", "repo", chart_name, "--output", "json"]
    return argv + (["--version", check_chart_version(chart_version)] if chart_version else [])


def build_template_argv(
    helm: str, version: HelmVersion, *, release: str, chart: ChartRef, namespace: str
) -> list[str]:
    """``helm template`` with values on stdin: offline render check in both dialects."""
    return [
        helm,
        "template",
        check_release_name(release),
        *_chart_args(chart),
        *_ns(namespace),
        "--values",
        "-",
    ]


def build_test_argv(
    helm: str, version: HelmVersion, *, release: str, namespace: str, timeout: int
) -> list[str]:
    return [helm, "test", check_release_name(release), *_ns(namespace), "--timeout", _timeout(timeout)]


# ------------------------------------------------------------------------------------------
# Parsers.
# ------------------------------------------------------------------------------------------


def _text(stdout: bytes | str) -> str:
    return stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else stdout


def load_json(stdout: bytes | str) -> Any:
    """The JSON document of helm's stdout, skipping lines printed before it.

    helm >= 4.2.1 prints ``Pulled: ...``/``Digest: ...`` on stdout before the JSON of an OCI
    install or upgrade; helm prints its JSON on one line, so parsing starts at the first line
    beginning with ``{``, ``[`` or ``null``.

    Raises:
        ValueError: no JSON document found.
    """
    text = _text(stdout)
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("{", "[", "null")):
            return json.loads("".join(lines[i:]))
    raise ValueError(f"no JSON document in helm output ({len(text)} bytes)")


def _status(value: Any) -> str:
    try:
        return ReleaseStatus(str(value)).value
    except ValueError:
        return ReleaseStatus.UNKNOWN.value


@dataclass(frozen=True)
class ReleaseDocument:
    """The parts of ``helm status|install|upgrade -o json`` kduflow uses (both dialects)."""

    name: str
    namespace: str
    revision: int
    status: str
    description: str
    chart_name: str
    chart_version: str
    app_version: str
    notes: str
    #: helm 4 only: "ssa" or "csa" ("" on helm 3).
    apply_method: str
    last_deployed: str
    #: helm 4 only: live objects keyed "v1/Kind" (helm 3: empty).
    resources: dict[str, Any]

    @property
    def chart(self) -> str:
        return f"{self.chart_name}-{self.chart_version}" if self.chart_name else ""

    def info(self) -> ReleaseInfo:
        return ReleaseInfo(
            kdu_instance=self.name, namespace=self.namespace, revision=self.revision, status=self.status,
            description=self.description, chart=self.chart, app_version=self.app_version,
        )  # fmt: skip


def release_text_fields(doc: Mapping[str, Any]) -> dict[str, str]:
    """The text fields of a helm release JSON object, which helm prints (``-o json``) and stores
    (the ``sh.helm.release.v1`` Secret) in the same shape. ``config`` (user values) is never read."""
    info = doc.get("info") or {}
    meta = (doc.get("chart") or {}).get("metadata") or {}
    return {
        "name": str(doc.get("name") or ""),
        "namespace": str(doc.get("namespace") or ""),
        "description": str(info.get("description") or ""),
        "chart_name": str(meta.get("name") or ""),
        "chart_version": str(meta.get("version") or ""),
        "app_version": str(meta.get("appVersion") or ""),
        "notes": str(info.get("notes") or ""),
        "apply_method": str(doc.get("apply_method") or ""),
        "last_deployed": str(info.get("last_deployed") or ""),
    }


def parse_release(stdout: bytes | str) -> ReleaseDocument:
    """Parse a release JSON document (``status``, ``install`` and ``upgrade`` with ``-o json``)."""
    doc = load_json(stdout)
    if not isinstance(doc, dict):
        raise ValueError("helm release output is not a JSON object")
    info = doc.get("info") or {}
    return ReleaseDocument(
        **release_text_fields(doc),
        revision=int(doc.get("version") or 0),
        status=_status(info.get("status")),
        resources=dict(info.get("resources") or {}),
    )


def parse_history(stdout: bytes | str) -> list[RevisionInfo]:
    """``helm history -o json`` entries sorted by revision (helm 4's ``rollback_revision`` ignored)."""
    doc = load_json(stdout) or []
    entries = [
        RevisionInfo(
            revision=int(e.get("revision") or 0),
            status=_status(e.get("status")),
            chart=str(e.get("chart") or ""),
            app_version=str(e.get("app_version") or ""),
            description=str(e.get("description") or ""),
            updated=str(e.get("updated") or ""),
        )  # fmt: skip
        for e in doc
    ]
    return sorted(entries, key=lambda e: e.revision)


def parse_list(stdout: bytes | str) -> list[ReleaseSummary]:
    """``helm list -o json`` (``revision`` is a string there, converted to int)."""
    doc = load_json(stdout) or []
    return [
        ReleaseSummary(
            name=str(e.get("name", "")),
            namespace=str(e.get("namespace", "")),
            revision=int(e.get("revision") or 0),
            status=_status(e.get("status")),
            chart=str(e.get("chart") or ""),
            app_version=str(e.get("app_version") or ""),
            updated=str(e.get("updated") or ""),
        )  # fmt: skip
        for e in doc
    ]


def parse_get_values(stdout: bytes | str) -> dict[str, Any]:
    """``helm get values -o json``: helm prints ``null`` when no values were supplied."""
    doc = load_json(stdout)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError("helm get values output is not a JSON object")
    return doc


def parse_get_metadata(stdout: bytes | str) -> dict[str, Any]:
    doc = load_json(stdout)
    if not isinstance(doc, dict):
        raise ValueError("helm get metadata output is not a JSON object")
    return doc


def parse_show_chart(stdout: bytes | str) -> dict[str, Any]:
    """``helm show chart``: Chart.yaml as a dict (stdout may carry OCI ``Pulled:`` lines first)."""
    text = _text(stdout)
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith(("apiVersion:", "name:"))), 0)
    doc = yaml.safe_load("".join(lines[start:]))
    if not isinstance(doc, dict):
        raise ValueError("helm show chart output is not a YAML mapping")
    return doc


def parse_search_repo(stdout: bytes | str) -> list[dict[str, str]]:
    return [dict(e) for e in (load_json(stdout) or [])]


def parse_manifest_services(manifest: bytes | str, default_namespace: str) -> list[tuple[str, str]]:
    """(namespace, name) of every Service in a ``helm get manifest`` stream (no namespace = the release's)."""
    found: list[tuple[str, str]] = []
    for doc in yaml.safe_load_all(_text(manifest)):
        if isinstance(doc, dict) and doc.get("kind") == "Service" and str(doc.get("apiVersion", "")) == "v1":
            meta = doc.get("metadata") or {}
            if meta.get("name"):
                found.append((str(meta.get("namespace") or default_namespace), str(meta["name"])))
    return found
