"""Input validation for every KDU workflow: pure, deterministic, shared by workflows and the client.

Every workflow calls its ``validate_<workflow>()`` first thing in ``run``. A refused input raises
:class:`InvalidInputError`, a non-retryable ``ApplicationError(type="InvalidInput")`` whose message
starts with ``invalid <field>:`` and whose first detail is ``{"field": <field>}``, before any activity
is scheduled. The client runs the same functions so a bad request fails before it reaches Temporal.

Why so strict: N2VC interpolated release names, models, namespaces and versions into command lines
so a value such as ``--post-renderer=/bin/sh`` became a helm flag. kduflow passes argv lists,
but a value that helm itself would parse as a flag or a path (``-x``, ``../../etc``, ``/abs``) is
still refused here, at the edge, with the field named. Values that reach MongoDB (``db_dict``) are
checked for operator injection (``$where``) and for the empty filter that would update an arbitrary
document. Nothing here echoes ``params`` or filter values back: they can be secrets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from temporalio.exceptions import ApplicationError

from contract.cluster import RepoAddInput, RepoListInput, RepoRemoveInput
from contract.errors import INVALID_INPUT
from contract.models import (
    DbDict,
    GetScaleCountInput,
    GetServiceInput,
    InspectKduInput,
    InstallKduInput,
    KduInstancesInput,
    KduRefInput,
    RollbackKduInput,
    ScaleKduInput,
    UninstallKduInput,
    UpgradeKduInput,
)

#: helm refuses release names longer than 53 characters (the Secret name gets a 20-char prefix).
MAX_RELEASE_NAME = 53
MAX_NAMESPACE = 63
#: Cluster ids are directory names under the state dir: keep them short and boring.
MAX_CLUSTER_UUID = 63
MAX_KDU_MODEL = 512
MAX_VERSION = 64
#: One day: an activity's start_to_close is derived from it, so it bounds how long a worker slot
#: can be held; longer "timeouts" are almost always a unit mistake (ms for s).
MAX_TIMEOUT = 86_400
#: A replica count beyond this is a typo or an attack on the cluster's scheduler, not a scale-out.
MAX_SCALE = 10_000
#: helm stores revisions as Go int and in Secret names; anything larger cannot exist.
MAX_REVISION = 2**31 - 1
MAX_RESOURCE_NAME = 253
MAX_LABELS = 64
#: Deeper values trees are not charts' values; the bound also keeps validation itself cheap.
MAX_PARAMS_DEPTH = 64
MAX_KDU_NAME = 253
#: Chart values as JSON text: helm stores a release (values included) in one Secret of at most 1 MiB.
MAX_PARAMS_BYTES = 1024 * 1024
#: OSM's filters name one document by one or two fields.
MAX_FILTER_FIELDS = 16
MAX_FILTER_VALUE = 256
#: A repository name as helm accepts it.
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: Repository credentials and CA: bounded, and no line breaks in what goes to helm's stdin as a line.
MAX_REPO_USER = 256
MAX_REPO_PASSWORD = 1024
MAX_REPO_CERT = 64 * 1024
#: The repository types RepoAdd accepts: N2VC's "chart" and OSM's k8srepos "helm-chart".
REPO_TYPES = ("chart", "helm-chart")
#: Status paths never touch these (the document id, and where clusters and repositories keep secrets).
PROTECTED_PATH_SEGMENTS = frozenset({"_id", "credentials", "password"})

# fullmatch is used everywhere: "$" alone would accept a trailing newline.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Starts with a letter or digit: no hidden directories, no "-flag", no clash with staging dirs.
_CLUSTER_UUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# One chart/repo name segment. Leading alphanumeric: no "-flag", no ".hidden", no "..".
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# DNS names and IPv4 literals; IPv6 literals ("[::1]") are not accepted, helm handles them poorly.
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
# Semver, tags and Masterminds constraints (">=1.2 <2", "~1.2", "^1", "1.x", "1.2 - 1.4 || 2.*").
_VERSION = re.compile(r"[A-Za-z0-9.+_~^*<>=!|, -]+")
_VERSION_TOKEN_START = re.compile(r"[A-Za-z0-9~^*<>=!|]")
# Excludes helm --set metacharacters (",", "=", "[", "\\") even though set_values are typed: a key
# path is also written into messages and status documents.
_RESOURCE_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# No dots and no "$": "system.*" and "$cmd" are MongoDB internals, never OSM status collections.
_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_DB_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_URL_PATH = re.compile(r"(/[A-Za-z0-9._~%-]*)*")

#: Labels helm stores on its release Secrets itself; ``helm install --labels`` refuses them.
HELM_SYSTEM_LABELS = frozenset({"name", "owner", "status", "version", "createdAt", "modifiedAt"})


class InvalidInputError(ApplicationError):
    """A refused workflow input. Non-retryable; ``field`` names the offending input field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(
            f"invalid {field}: {reason}", {"field": field}, type=INVALID_INPUT, non_retryable=True
        )
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ChartRef:
    """A validated ``kdu_model`` split the way helm wants it.

    ``chart`` is what goes to helm as the chart argument (no ``:version`` suffix), ``version`` the
    suffix (or ""), ``kind`` one of ``"repo"`` (repo/chart), ``"oci"`` or ``"local"`` (a chart
    directory or archive name under the worker's charts directory).
    """

    chart: str
    version: str
    kind: str


def _show(value: Any, limit: int = 60) -> str:
    # Identifier-like values only; a hostile 1 MB string must not end up in the error message.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_str(value: Any, field: str) -> str:
    # Workflow inputs arrive as JSON: a client can send null or a number where a string belongs,
    # and str(None) == "None" would otherwise sail through the pattern checks as a name.
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, got {type(value).__name__}")
    return value


def _require_int(value: Any, field: str, low: int, high: int) -> int:
    # bool is an int subclass: True must not pass as timeout=1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(field, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidInputError(field, f"must be between {low} and {high}, got {value}")
    return value


def validate_bool(value: Any, field: str) -> bool:
    """A JSON client can send ``"false"``, which Python would treat as true: refuse non-bools."""
    if not isinstance(value, bool):
        raise InvalidInputError(field, f"must be a boolean, got {type(value).__name__}")
    return value


def validate_release_name(value: Any, field: str = "kdu_instance", *, allow_empty: bool = False) -> str:
    """A helm release name: a DNS-1123 label of at most 53 characters (empty only if allowed)."""
    name = _require_str(value, field)
    if name == "" and allow_empty:
        return name
    if name == "":
        raise InvalidInputError(field, "must not be empty")
    # helm itself also accepts dots ("a.b"), but release names become Service and label values
    # in most charts, where a dot breaks DNS: a label is the safe subset.
    if len(name) > MAX_RELEASE_NAME:
        raise InvalidInputError(field, f"longer than {MAX_RELEASE_NAME} characters (helm's limit)")
    if not _DNS1123_LABEL.fullmatch(name):
        raise InvalidInputError(
            field,
            f"{_show(name)} is not a DNS-1123 label (lower-case a-z, 0-9 and '-', alphanumeric at both ends)",
        )
    return name


def validate_namespace(value: Any, field: str = "namespace", *, allow_empty: bool = True) -> str:
    """A Kubernetes namespace: a DNS-1123 label of at most 63 characters. Empty means "resolve"."""
    ns = _require_str(value, field)
    if ns == "":
        if allow_empty:
            return ns
        raise InvalidInputError(field, "must not be empty")
    if len(ns) > MAX_NAMESPACE or not _DNS1123_LABEL.fullmatch(ns):
        raise InvalidInputError(
            field, f"{_show(ns)} is not a DNS-1123 label of at most {MAX_NAMESPACE} characters"
        )
    return ns


def validate_cluster_uuid(value: Any, field: str = "cluster_uuid", *, allow_empty: bool = False) -> str:
    """Cluster ids name a directory under the state dir: no separators, no "."/"..", no "-flag"."""
    cu = _require_str(value, field)
    if cu == "" and allow_empty:
        return cu
    if not _CLUSTER_UUID.fullmatch(cu):
        raise InvalidInputError(
            field,
            f"{_show(cu)} must be 1-{MAX_CLUSTER_UUID} characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit",
        )
    return cu


def validate_version(value: Any, field: str = "version") -> str:
    """A chart version, tag or constraint. Refuses anything helm could read as a flag."""
    version = _require_str(value, field)
    if version == "":
        return version
    # Spaces are legal (">=1.2 <2" is one constraint), so "1.0 --set x=1" cannot be refused by the
    # character class alone: the token rules below catch anything shaped like a flag.
    if len(version) > MAX_VERSION:
        raise InvalidInputError(field, f"longer than {MAX_VERSION} characters")
    if not _VERSION.fullmatch(version):
        raise InvalidInputError(
            field, f"{_show(version)} has characters not allowed in a version or constraint"
        )
    if "--" in version:
        raise InvalidInputError(field, f"{_show(version)} contains '--'")
    tokens = version.split(" ")
    for token in tokens:
        # A lone "-" is the hyphen range "1.2 - 1.4"; any other token must not look like a flag.
        if token == "-":
            continue
        if token == "" or not _VERSION_TOKEN_START.match(token):
            raise InvalidInputError(field, f"{_show(version)} is not a version or constraint")
    if not any(c.isalnum() or c == "*" for c in version):
        raise InvalidInputError(field, f"{_show(version)} has no version number")
    return version


def _reject_common_model_hazards(model: str, field: str) -> None:
    if model == "":
        raise InvalidInputError(field, "must not be empty")
    if len(model) > MAX_KDU_MODEL:
        raise InvalidInputError(field, f"longer than {MAX_KDU_MODEL} characters")
    # Printable ASCII only: chart and repo names are ASCII, and whitespace or control characters
    # are how N2VC's string-built commands were split into extra arguments.
    if any(ord(c) < 0x21 or ord(c) == 0x7F or ord(c) > 0x7E for c in model):
        raise InvalidInputError(field, "must not contain whitespace, control or non-ASCII characters")
    if model.startswith("-"):
        raise InvalidInputError(field, "must not start with '-' (it would be read as a helm flag)")
    if model.startswith("/") or model.startswith("~") or "\\" in model:
        raise InvalidInputError(field, "absolute or home-relative paths are not allowed")
    if ".." in model:
        raise InvalidInputError(field, "must not contain '..'")


def _split_tag(last: str, field: str, what: str) -> tuple[str, str]:
    if ":" not in last:
        return last, ""
    name, _, tag = last.partition(":")
    if tag == "" or ":" in tag:
        raise InvalidInputError(field, f"malformed ':version' suffix in the {what}")
    return name, tag


def _parse_oci(model: str, field: str) -> ChartRef:
    rest = model[len("oci://") :]
    # Registry credentials belong to the cluster's registry login (store, encrypted), never in a
    # chart reference that ends up in workflow history, status documents and logs.
    if any(c in rest for c in "@?#"):
        raise InvalidInputError(field, "OCI references must not carry credentials, queries or fragments")
    parts = rest.split("/")
    if len(parts) < 2:
        raise InvalidInputError(field, "OCI reference needs oci://host[:port]/[path/]chart[:tag]")
    host, _, port = parts[0].partition(":")
    if not _HOSTNAME.fullmatch(host) or len(host) > 253:
        raise InvalidInputError(field, f"OCI host {_show(parts[0])} is not a host name")
    if parts[0].endswith(":") or (port and not (port.isdigit() and 1 <= int(port) <= 65535)):
        raise InvalidInputError(field, f"OCI port {_show(port)} is not a port number")
    chart_segment, tag = _split_tag(parts[-1], field, "OCI reference")
    for segment in [*parts[1:-1], chart_segment]:
        if not _SEGMENT.fullmatch(segment):
            raise InvalidInputError(field, f"OCI path segment {_show(segment)} is not a valid name")
    if tag:
        validate_version(tag, field)
    chart = "oci://" + "/".join([parts[0], *parts[1:-1], chart_segment])
    return ChartRef(chart=chart, version=tag, kind="oci")


def parse_kdu_model(value: Any, field: str = "kdu_model") -> ChartRef:
    """Validate a chart reference and split off its ``:version``.

    Accepted forms: ``repo/chart``, ``repo/chart:1.2.3`` (N2VC), ``oci://host[:port]/path/chart[:tag]``,
    and a local chart directory or archive name (``name`` / ``name-1.0.0.tgz``) resolved by the worker
    under its charts directory. Anything else (paths, other URL schemes, credentials, flags) is refused.
    """
    model = _require_str(value, field)
    _reject_common_model_hazards(model, field)
    if "://" in model:
        # http(s) chart URLs would let any caller make the worker fetch arbitrary URLs (SSRF);
        # charts come from the cluster's configured repositories, registries or charts dir.
        if not model.startswith("oci://"):
            raise InvalidInputError(field, "only oci:// URLs are accepted as chart references")
        return _parse_oci(model, field)
    if "@" in model:
        raise InvalidInputError(field, "must not contain '@'")
    parts = model.split("/")
    if len(parts) > 2:
        raise InvalidInputError(field, "expected 'repo/chart[:version]' or a local chart name, not a path")
    if len(parts) == 2:
        repo, last = parts
        chart, version = _split_tag(last, field, "model")
        for what, segment in (("repository", repo), ("chart", chart)):
            if not _SEGMENT.fullmatch(segment):
                raise InvalidInputError(field, f"{what} name {_show(segment)} is not a valid name")
        if version:
            validate_version(version, field)
        return ChartRef(chart=f"{repo}/{chart}", version=version, kind="repo")
    # A local chart is one name under the charts dir: no subdirectories, so no way out of it.
    if ":" in model:
        raise InvalidInputError(field, "a local chart name takes no ':version' (use the version field)")
    if not _SEGMENT.fullmatch(model):
        raise InvalidInputError(field, f"local chart name {_show(model)} is not a valid name")
    return ChartRef(chart=model, version="", kind="local")


def validate_timeout(value: Any, field: str = "timeout") -> int:
    return _require_int(value, field, 1, MAX_TIMEOUT)


def validate_scale(value: Any, field: str = "scale") -> int:
    return _require_int(value, field, 0, MAX_SCALE)


def validate_revision(value: Any, field: str = "revision") -> int:
    return _require_int(value, field, 0, MAX_REVISION)


def validate_resource_name(value: Any, field: str = "resource_name") -> str:
    """A dotted values-key path ("db", "db.primary"), or "" for the top level."""
    name = _require_str(value, field)
    if name == "":
        return name
    if len(name) > MAX_RESOURCE_NAME:
        raise InvalidInputError(field, f"longer than {MAX_RESOURCE_NAME} characters")
    if not all(_RESOURCE_SEGMENT.fullmatch(seg) for seg in name.split(".")):
        raise InvalidInputError(
            field,
            f"{_show(name)} must be dot-separated keys of A-Z a-z 0-9 _ - (no empty keys, no '-' first)",
        )
    return name


def _check_json_tree(root: Any, field: str, *, forbid_operator_keys: bool) -> None:
    # Iterative walk: a hostile 10 000-level nesting must produce InvalidInput, not RecursionError.
    stack: list[tuple[Any, int, str]] = [(root, 0, field)]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_PARAMS_DEPTH:
            raise InvalidInputError(field, f"nested deeper than {MAX_PARAMS_DEPTH} levels")
        if isinstance(node, Mapping):
            for key, child in node.items():
                if not isinstance(key, str):
                    raise InvalidInputError(
                        field, f"keys must be strings, found {type(key).__name__} in {where}"
                    )
                if forbid_operator_keys and (key.startswith("$") or "\x00" in key):
                    raise InvalidInputError(field, f"MongoDB operator or NUL in key {_show(key)}")
                stack.append((child, depth + 1, f"{where}.{key}"[:200]))
        elif isinstance(node, list | tuple):
            stack.extend((child, depth + 1, f"{where}[{i}]"[:200]) for i, child in enumerate(node))
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise InvalidInputError(field, f"non-finite number in {where}")
        elif node is not None and not isinstance(node, str | int | bool):
            raise InvalidInputError(field, f"value of type {type(node).__name__} in {where} is not JSON")


def validate_params(value: Any, field: str = "params") -> dict[str, Any]:
    """Chart values: a JSON object with string keys all the way down (never echoed back)."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, f"must be a JSON object, got {type(value).__name__}")
    _check_json_tree(value, field, forbid_operator_keys=False)
    # After the tree check: the values are plain JSON, so this cannot fail or recurse too deep.
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PARAMS_BYTES:
        raise InvalidInputError(field, f"{size} bytes as JSON; at most {MAX_PARAMS_BYTES}")
    return dict(value)


def validate_labels(value: Any, field: str = "labels") -> dict[str, str]:
    """Kubernetes label syntax; helm's own system labels are refused as helm would refuse them."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, f"must be an object of strings, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise InvalidInputError(field, f"more than {MAX_LABELS} labels")
    for key, val in value.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise InvalidInputError(field, "keys and values must be strings")
        prefix, slash, name = key.rpartition("/")
        if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
            raise InvalidInputError(field, f"label key {_show(key)} has an invalid prefix")
        if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
            raise InvalidInputError(field, f"label key {_show(key)} is not a valid label name")
        # helm would reject these itself, but only after the chart was pulled; fail at the edge.
        if not slash and name in HELM_SYSTEM_LABELS:
            raise InvalidInputError(field, f"label key {_show(key)} is reserved by helm")
        if val and (len(val) > 63 or not _LABEL_NAME.fullmatch(val)):
            raise InvalidInputError(field, f"value of label {_show(key)} is not a valid label value")
    return dict(value)


def validate_db_dict(value: Any, field: str = "db_dict") -> DbDict | None:
    """OSM's ``{collection, filter, path}``; returns a DbDict (a plain mapping is accepted too)."""
    if value is None:
        return None
    # A client sending raw JSON may get a dict here rather than the dataclass; both are checked
    # the same way so the client-side validation matches the workflow's.
    if isinstance(value, DbDict):
        collection, filt, path = value.collection, value.filter, value.path
    elif isinstance(value, Mapping):
        if set(value) != {"collection", "filter", "path"}:
            raise InvalidInputError(field, "must have exactly the keys collection, filter and path")
        collection, filt, path = value["collection"], value["filter"], value["path"]
    else:
        raise InvalidInputError(field, f"must be an object, got {type(value).__name__}")
    if (
        not isinstance(collection, str)
        or not _COLLECTION.fullmatch(collection)
        or collection.startswith("system")
    ):
        raise InvalidInputError(f"{field}.collection", f"{_show(collection)} is not a safe collection name")
    if not isinstance(filt, Mapping) or not filt:
        # An empty filter would make update_one hit whichever document comes first.
        raise InvalidInputError(f"{field}.filter", "must be a non-empty object")
    if len(filt) > MAX_FILTER_FIELDS:
        raise InvalidInputError(f"{field}.filter", f"more than {MAX_FILTER_FIELDS} fields")
    for key, val in filt.items():
        # Field names follow the path rules (no "$" operators, no empty segments); values are
        # non-null scalars: null matches every document lacking the field, and an object or array
        # could be an operator expression or match more than the caller's own document.
        if not isinstance(key, str) or len(key) > 256 or not all(
            _DB_PATH_SEGMENT.fullmatch(seg) for seg in key.split(".")
        ):
            raise InvalidInputError(
                f"{field}.filter", "field names must be dot-separated keys of A-Z a-z 0-9 _ -"
            )
        if val is None or not isinstance(val, str | int | float):
            raise InvalidInputError(
                f"{field}.filter", f"the value of {_show(key)} must be a string, number or boolean"
            )
        if isinstance(val, float) and not math.isfinite(val):
            raise InvalidInputError(f"{field}.filter", f"the value of {_show(key)} is not finite")
        if isinstance(val, str) and (len(val) > MAX_FILTER_VALUE or "\x00" in val):
            raise InvalidInputError(
                f"{field}.filter", f"the value of {_show(key)} is longer than {MAX_FILTER_VALUE} characters"
            )
    if not isinstance(path, str) or path == "" or len(path) > 256:
        raise InvalidInputError(f"{field}.path", "must be a non-empty dotted path")
    # The path becomes the prefix of "$set" keys: "$" or empty segments would address operators or
    # the wrong field, so only plain dotted keys (array indexes are digits) are allowed.
    segments = path.split(".")
    if not all(_DB_PATH_SEGMENT.fullmatch(seg) for seg in segments):
        raise InvalidInputError(
            f"{field}.path",
            f"{_show(path)} must be dot-separated keys of A-Z a-z 0-9 _ - (no '$', no empty keys)",
        )
    forbidden = [seg for seg in segments if seg.lower() in PROTECTED_PATH_SEGMENTS]
    if forbidden:
        raise InvalidInputError(
            f"{field}.path", f"must not address {forbidden[0]!r}: status never goes near ids or credentials"
        )
    return DbDict(collection=collection, filter=dict(filt), path=path)


def check_status_collection(db: DbDict, allowed: tuple[str, ...], field: str = "db_dict") -> None:
    """Refuse a status collection outside the worker's allowlist (``KDUFLOW_STATUS_COLLECTIONS``)."""
    if db.collection not in allowed:
        raise InvalidInputError(
            f"{field}.collection",
            f"{db.collection!r} is not a collection this worker writes status to "
            f"(KDUFLOW_STATUS_COLLECTIONS: {', '.join(allowed)})",
        )


def validate_repo_url(value: Any, field: str = "repo_url", *, oci: bool = False) -> str:
    """An http(s) chart repository URL without credentials, query or fragment ("" = none).

    With ``oci``: an OCI registry URL instead, ``oci://host[:port]/path`` or ``host[:port]/path``.
    """
    url = _require_str(value, field)
    if url == "":
        return url
    scheme, sep, rest = url.partition("://")
    if oci and not sep:
        scheme, sep, rest = "oci", "://", url
    if not sep or scheme not in (("oci",) if oci else ("http", "https")):
        expected = "an oci:// URL" if oci else "an http:// or https:// URL"
        raise InvalidInputError(field, f"must be {expected}")
    if len(url) > 512 or any(c in rest for c in "@?# \t\r\n\\") or ".." in rest:
        raise InvalidInputError(field, "must not carry credentials, queries, fragments, spaces or '..'")
    hostport, slash, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    if not _HOSTNAME.fullmatch(host) or (port and not (port.isdigit() and 1 <= int(port) <= 65535)):
        raise InvalidInputError(field, f"host {_show(hostport)} is not a host name")
    if hostport.endswith(":") or not _URL_PATH.fullmatch(slash + path):
        raise InvalidInputError(field, "has characters not allowed in a repository URL")
    return url


#: InitCluster's SyncRepos schedule: at least every 10 s (a tighter loop only loads the repositories),
#: at most every 30 days; 0 = the worker default, -1 = no schedule.
MIN_SYNC_INTERVAL = 10
MAX_SYNC_INTERVAL = 30 * 86_400


def validate_sync_interval(value: Any, field: str = "sync_interval_s") -> int:
    interval = _require_int(value, field, -1, MAX_SYNC_INTERVAL)
    if 0 < interval < MIN_SYNC_INTERVAL:
        raise InvalidInputError(
            field, f"0 (worker default), -1 (no schedule) or {MIN_SYNC_INTERVAL}..{MAX_SYNC_INTERVAL} seconds"
        )
    return interval


def validate_kdu_name(value: Any, field: str = "kdu_name") -> str:
    name = _require_str(value, field)
    if len(name) > MAX_KDU_NAME or not name.isprintable():
        raise InvalidInputError(field, f"must be at most {MAX_KDU_NAME} printable characters")
    return name


# ------------------------------------------------------------------------------------------------
# One entry point per workflow input. Field order follows the dataclass so the first bad field wins.
# ------------------------------------------------------------------------------------------------


def validate_install(inp: InstallKduInput) -> ChartRef:
    """Returns the parsed chart; ``inp.version`` (if set) overrides the model's ``:version``."""
    validate_cluster_uuid(inp.cluster_uuid)
    ref = parse_kdu_model(inp.kdu_model)
    validate_release_name(inp.kdu_instance, allow_empty=True)
    validate_namespace(inp.namespace)
    version = validate_version(inp.version)
    validate_bool(inp.atomic, "atomic")
    validate_timeout(inp.timeout)
    validate_params(inp.params)
    validate_db_dict(inp.db_dict)
    # kdu_name is OSM's descriptor name, only ever recorded; it still must not smuggle newlines
    # into logs or status text.
    validate_kdu_name(inp.kdu_name)
    validate_labels(inp.labels)
    return ChartRef(ref.chart, version or ref.version, ref.kind)


def validate_upgrade(inp: UpgradeKduInput) -> ChartRef | None:
    """Returns the parsed chart, or None for "keep the release's chart" (empty kdu_model)."""
    validate_cluster_uuid(inp.cluster_uuid)
    validate_release_name(inp.kdu_instance)
    validate_namespace(inp.namespace)
    ref = parse_kdu_model(inp.kdu_model) if _require_str(inp.kdu_model, "kdu_model") else None
    version = validate_version(inp.version)
    validate_params(inp.params)
    for flag in ("reuse_values", "reset_values", "force", "atomic"):
        validate_bool(getattr(inp, flag), flag)
    validate_timeout(inp.timeout)
    validate_db_dict(inp.db_dict)
    if ref is None:
        # A version alone is ambiguous (which chart?); helm would silently pin the current chart.
        if version:
            raise InvalidInputError("version", "a version needs kdu_model (the chart to upgrade to)")
        return None
    return ChartRef(ref.chart, version or ref.version, ref.kind)


def validate_rollback(inp: RollbackKduInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)
    validate_release_name(inp.kdu_instance)
    validate_namespace(inp.namespace)
    validate_revision(inp.revision)
    validate_timeout(inp.timeout)
    validate_db_dict(inp.db_dict)


def validate_scale_input(inp: ScaleKduInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)
    validate_release_name(inp.kdu_instance)
    validate_namespace(inp.namespace)
    validate_scale(inp.scale)
    validate_resource_name(inp.resource_name)
    validate_timeout(inp.timeout)
    validate_bool(inp.atomic, "atomic")
    validate_db_dict(inp.db_dict)


def validate_uninstall(inp: UninstallKduInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)
    validate_release_name(inp.kdu_instance)
    validate_namespace(inp.namespace)
    validate_timeout(inp.timeout)
    validate_db_dict(inp.db_dict)


def validate_ref(inp: KduRefInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)
    validate_release_name(inp.kdu_instance)
    validate_namespace(inp.namespace)
    validate_bool(inp.all_values, "all_values")


def validate_instances(inp: KduInstancesInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)


def validate_inspect(inp: InspectKduInput) -> ChartRef:
    """With ``repo_url`` the model must be a bare chart name: helm ``--repo`` looks it up there."""
    # Inspect may run without a cluster: only local charts and --repo lookups need none.
    ref = parse_kdu_model(inp.kdu_model)
    validate_cluster_uuid(inp.cluster_uuid, allow_empty=True)
    version = validate_version(inp.version)
    repo_url = validate_repo_url(inp.repo_url)
    # helm --repo resolves a bare name in that repository; "repo/chart" plus --repo is what crashed
    # N2VC's _split_repo, so refuse the combination instead of guessing.
    if repo_url and ref.kind != "local":
        raise InvalidInputError("kdu_model", "with repo_url, kdu_model must be a bare chart name")
    if ref.kind == "repo" and not inp.cluster_uuid:
        raise InvalidInputError(
            "cluster_uuid", "a 'repo/chart' model needs the cluster whose repositories resolve it"
        )
    return ChartRef(ref.chart, version or ref.version, ref.kind)

__all__ = [
    "MAX_REPO_CERT",
    "MAX_REPO_PASSWORD",
    "MAX_REPO_USER",
    "REPO_TYPES",
    "validate_repo_remove",
    "validate_repo_list",
    "validate_repo_add",
    "validate_repo_name",
    "validate_get_service",
    "validate_get_scale_count",
    "ChartRef",
    "HELM_SYSTEM_LABELS",
    "INVALID_INPUT",
    "InvalidInputError",
    "MAX_CLUSTER_UUID",
    "MAX_FILTER_FIELDS",
    "MAX_FILTER_VALUE",
    "MAX_KDU_MODEL",
    "MAX_KDU_NAME",
    "MAX_LABELS",
    "MAX_NAMESPACE",
    "MAX_PARAMS_BYTES",
    "MAX_PARAMS_DEPTH",
    "MAX_RELEASE_NAME",
    "MAX_RESOURCE_NAME",
    "MAX_REVISION",
    "MAX_SCALE",
    "MAX_SYNC_INTERVAL",
    "MAX_TIMEOUT",
    "MAX_VERSION",
    "MIN_SYNC_INTERVAL",
    "PROTECTED_PATH_SEGMENTS",
    "check_status_collection",
    "parse_kdu_model",
    "validate_bool",
    "validate_cluster_uuid",
    "validate_db_dict",
    "validate_inspect",
    "validate_install",
    "validate_instances",
    "validate_kdu_name",
    "validate_labels",
    "validate_namespace",
    "validate_params",
    "validate_ref",
    "validate_release_name",
    "validate_repo_url",
    "validate_resource_name",
    "validate_revision",
    "validate_rollback",
    "validate_scale",
    "validate_scale_input",
    "validate_sync_interval",
    "validate_timeout",
    "validate_uninstall",
    "validate_upgrade",
    "validate_version",
]


def validate_get_scale_count(inp: GetScaleCountInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)
    validate_release_name(inp.kdu_instance)
    validate_resource_name(inp.resource_name)
    validate_namespace(inp.namespace)
    # Recorded only (the count is read from the release), but still never free-form megabytes.
    if len(_require_str(inp.kdu_model, "kdu_model")) > MAX_KDU_MODEL or not inp.kdu_model.isprintable():
        raise InvalidInputError("kdu_model", f"must be at most {MAX_KDU_MODEL} printable characters")


def validate_get_service(inp: GetServiceInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)
    # Service names are DNS-1035 labels: a subset of DNS-1123 labels of at most 63 characters.
    name = _require_str(inp.service_name, "service_name")
    if not name or len(name) > 63 or not _DNS1123_LABEL.fullmatch(name):
        raise InvalidInputError("service_name", f"{_show(name)} is not a Service name (a DNS-1123 label)")
    validate_namespace(inp.namespace, allow_empty=False)


def validate_repo_name(value: Any, field: str = "name") -> str:
    name = _require_str(value, field)
    if not _REPO_NAME.fullmatch(name):
        raise InvalidInputError(
            field, f"{_show(name)} must be 1-100 characters of A-Z a-z 0-9 . _ -, starting alphanumeric"
        )
    return name


def _secret_line(value: Any, field: str, limit: int) -> str:
    # Never echoed: the value may be a password.
    text = _require_str(value, field)
    if len(text) > limit or any(c in text for c in "\r\n\x00"):
        raise InvalidInputError(field, f"must be at most {limit} characters without line breaks")
    return text


def validate_repo_add(inp: RepoAddInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)
    validate_repo_name(inp.name)
    oci = validate_bool(inp.oci, "oci")
    if not validate_repo_url(inp.url, "url", oci=oci):
        raise InvalidInputError("url", "must not be empty")
    if inp.repo_type not in REPO_TYPES:
        raise InvalidInputError("repo_type", f"must be one of {', '.join(REPO_TYPES)}")
    cert = _require_str(inp.cert, "cert")
    if len(cert) > MAX_REPO_CERT or "\x00" in cert:
        raise InvalidInputError("cert", f"must be a PEM certificate of at most {MAX_REPO_CERT} characters")
    _secret_line(inp.user, "user", MAX_REPO_USER)
    _secret_line(inp.password, "password", MAX_REPO_PASSWORD)
    if inp.password and not inp.user:
        raise InvalidInputError("user", "a password needs a user")


def validate_repo_list(inp: RepoListInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)


def validate_repo_remove(inp: RepoRemoveInput) -> None:
    validate_cluster_uuid(inp.cluster_uuid)
    validate_repo_name(inp.name)
