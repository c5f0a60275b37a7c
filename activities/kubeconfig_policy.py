"""The kubeconfig policy: what a kubeconfig from a caller may contain before kduflow uses it.

A caller who can start workflows or write ``k8sclusters`` documents is not the worker's operator,
yet helm, kubectl and the status client act on the kubeconfig it supplies. Left unchecked, a
kubeconfig makes the worker run a command (``exec``, ``auth-provider``), read any file it can
(``tokenFile``, ``client-certificate``, ``client-key``, ``certificate-authority``) and send the
content to the caller's server, or route traffic through a proxy of the caller's choice.
:func:`check_kubeconfig` is the one gate every kubeconfig passes where it is accepted
(``ClusterEnvs.store_credentials``, the ``cluster.store_credentials`` activity) and where it is used
(``ClusterEnvs.get`` before helm/kubectl run, ``KubeApi.from_kubeconfig``).

Rules:

- Credentials are inline only: ``token``, ``username``/``password``, ``client-certificate-data``,
  ``client-key-data``, ``certificate-authority-data``. No field naming a file is accepted.
- ``exec`` only when its ``command`` equals an entry of the operator's allowlist
  (``KDUFLOW_EXEC_PLUGINS``); ``args`` and ``env`` pass unchanged once they are well-formed and
  bounded, except environment variables that make a program load code (``LD_*``, ``DYLD_*``,
  interpreter start-up variables), which are refused.
- ``auth-provider`` is refused; ``proxy-url`` only when the operator allows it
  (``KDUFLOW_ALLOW_KUBECONFIG_PROXY``).
- Cluster, user, context, exec and top-level entries accept only the fields client-go's kubeconfig
  schema defines and this policy knows to be harmless; any other field is refused, so a field a
  future client-go adds (which may read a file) is never passed through unseen.
- A cluster ``server`` is an ``https://`` or ``http://`` URL with a host and without userinfo,
  query or fragment.
- Bounds: text size, nesting depth, node count (counted by an iterative walk, so YAML aliases that
  expand exponentially are caught without expanding them), string lengths; header-bound values
  (tokens, passwords, names) carry no control characters.
- Nesting in YAML text is refused before it costs time: a text pre-scan refuses lines indented
  deeper than :data:`MAX_INDENT` columns (compact ``- ``/``? ``/``: `` indicators count as
  indentation) and flow collections (``[``/``{``) nested deeper than :data:`MAX_DEPTH`; the loader
  itself then refuses, as it reads them, block and flow collections open more than
  :data:`MAX_DEPTH` levels deep. PyYAML's scanner keeps one pending simple key per open flow level
  and re-examines all of them for every token, so unbounded flow nesting costs quadratic time
  before any depth check on the loaded data could run.

A refusal is :class:`activities.errors.CredentialsInvalid` (non-retryable). Its message names the
field path (``users[0].user.tokenFile``) and the rule, never a value, and is the same whether or
not a named file exists. :func:`check_kubeconfig` does no I/O.

Where a cluster's ``server`` may point is a second, asynchronous check,
:func:`check_cluster_servers`, because it resolves names: the host of every cluster ``server`` must
not be, nor resolve to, a loopback, link-local, private, unspecified, multicast, reserved or
otherwise not globally routable address (the classification of :mod:`activities.url_policy`),
unless the address lies in one of the operator's ``KDUFLOW_ALLOW_PRIVATE_NETWORKS``. Without it, a
caller registering a kubeconfig could make kubectl, helm and the status client connect to hosts on
the worker's own network and read from the error what answered there.
"""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import yaml
from temporalio import activity

from activities import errors, url_policy

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
log = activity.LoggerAdapter(logging.getLogger(__name__), None)

#: Largest kubeconfig text accepted (bytes of UTF-8).
MAX_TEXT_BYTES = 512 * 1024
#: Deepest nesting of mappings/lists accepted (the kubeconfig schema itself needs 8 levels).
MAX_DEPTH = 32
#: Deepest indentation of a YAML line accepted, in columns (compact ``- ``, ``? ``, ``: `` included).
MAX_INDENT = 256
#: Most mapping/list/scalar nodes accepted, counting every alias use as a copy.
MAX_NODES = 20_000
#: Longest ``*-data`` value (base64 certificates and keys).
MAX_DATA_CHARS = 256 * 1024
#: Longest token, password or extension string.
MAX_SECRET_CHARS = 16 * 1024
#: Longest other string (names, server, namespace, exec args and env values).
MAX_SHORT_CHARS = 4096
MAX_EXEC_ARGS = 64
MAX_EXEC_ENV = 64
#: Longest field path a message shows (longer ones keep their end).
MAX_PATH_CHARS = 200
#: Hex digits of a fingerprint (a prefix of the sha256 of the canonical kubeconfig).
FINGERPRINT_CHARS = 16

TOP_LEVEL_FIELDS = frozenset(
    {"apiVersion", "kind", "preferences", "clusters", "users", "contexts", "current-context", "extensions"}
)
PREFERENCES_FIELDS = frozenset({"colors", "extensions"})
CLUSTER_FIELDS = frozenset(
    {
        "server",
        "tls-server-name",
        "insecure-skip-tls-verify",
        "certificate-authority-data",
        "proxy-url",
        "disable-compression",
        "extensions",
    }
)
USER_FIELDS = frozenset(
    {
        "client-certificate-data",
        "client-key-data",
        "token",
        "username",
        "password",
        "as",
        "as-uid",
        "as-groups",
        "as-user-extra",
        "exec",
        "extensions",
    }
)
CONTEXT_FIELDS = frozenset({"cluster", "user", "namespace", "extensions"})
EXEC_FIELDS = frozenset(
    {"command", "args", "env", "apiVersion", "installHint", "provideClusterInfo", "interactiveMode"}
)
#: Fields of client-go's schema that name a file, with the inline field to use instead.
FILE_FIELDS: Mapping[str, str] = {
    "certificate-authority": "certificate-authority-data",
    "client-certificate": "client-certificate-data",
    "client-key": "client-key-data",
    "tokenFile": "token",
}
INTERACTIVE_MODES = frozenset({"Never", "IfAvailable", "Always"})
#: Environment variables an exec plugin's ``env`` may not set: they make the dynamic loader or an
#: interpreter load code chosen by the kubeconfig's author into the allowlisted plugin.
FORBIDDEN_EXEC_ENV = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "GCONV_PATH",
        "NODE_OPTIONS",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "PYTHONHOME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "RUBYLIB",
        "RUBYOPT",
    }
)
FORBIDDEN_EXEC_ENV_PREFIXES = ("LD_", "DYLD_")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TOKEN = re.compile(r"[\x21-\x7e]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_PRINTABLE_KEY = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
# YAML's line breaks (a line that starts after any of them is a new line to the loader).
_BREAKS = "\r\n\x85\u2028\u2029"
# Indentation deeper than MAX_INDENT columns, counting the compact block indicators "- ", "? " and
# ": " that open a nested collection on the same line. Matched from a line break (a pattern that
# starts with a character set is searched quickly); the first line is matched separately.
_INDENT_UNIT = rf"(?:[ \t]|[-?:](?=[ \t{_BREAKS}]|$))"
_DEEP_FIRST_LINE = re.compile(rf"{_INDENT_UNIT}{{{MAX_INDENT + 1}}}")
_DEEP_LINE = re.compile(rf"[{_BREAKS}]{_INDENT_UNIT}{{{MAX_INDENT + 1}}}")
# What the flow-depth pre-scan looks at: brackets, quotes and '#'; what may precede a node (so a
# bracket there opens a collection, a quote a quoted scalar, a '#' a comment); where a quoted
# scalar or a comment ends.
_FLOW_CHAR = re.compile(r"""[\[\]{}"'#]""")
_NODE_MAY_FOLLOW = frozenset(" \t,:" + _BREAKS)
_SKIP_TO = {
    '"': re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL),
    "'": re.compile(r"'(?:[^']|'')*'?"),
    "#": re.compile(rf"[^{_BREAKS}]*"),
}


class _CanonicalDumper(yaml.SafeDumper):
    """Writes shared objects out in full (no anchors/aliases), so equal content is equal text."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _Refusal(Exception):
    def __init__(self, path: str, why: str) -> None:
        super().__init__(why)
        self.path = path
        self.why = why


def check_kubeconfig(
    credentials: Any,
    *,
    exec_plugins: Collection[str] | None = (),
    allow_proxy: bool = False,
    subject: str = "kubeconfig",
) -> dict[str, Any]:
    """Apply the policy to a kubeconfig (YAML text or mapping); return it as a dict.

    A missing ``current-context`` is filled in when there is exactly one context. The returned
    dict shares nested objects with the input.

    Args:
        credentials: the kubeconfig, as YAML text (``str``/``bytes``) or as a mapping.
        exec_plugins: the operator's allowlist of ``exec`` commands (exact match). ``None`` leaves
            the command unjudged (the exec entry is still validated): only for readers that never
            run a plugin themselves, such as the REST status client.
        allow_proxy: whether a cluster may name a ``proxy-url``.
        subject: how messages name the kubeconfig (e.g. ``credentials of cluster 'c1'``).

    Raises:
        errors.CredentialsInvalid: the kubeconfig is refused; ``details["field"]`` is the field path.
    """
    try:
        config = _load(credentials)
        _check_bounds(config)
        return _check_schema(config, exec_plugins, allow_proxy)
    except _Refusal as refusal:
        path = refusal.path if len(refusal.path) <= MAX_PATH_CHARS else "..." + refusal.path[-MAX_PATH_CHARS:]
        where = f"{path}: " if path else ""
        raise errors.CredentialsInvalid(
            f"{subject} refused: {where}{refusal.why}",
            details={"field": path} if path else None,
        ) from None


def canonical_bytes(config: Mapping[str, Any]) -> bytes:
    """The kubeconfig as sorted, alias-free YAML: equal content gives equal bytes.

    Only for a kubeconfig :func:`check_kubeconfig` returned (bounded depth and size).
    """
    text = yaml.dump(dict(config), Dumper=_CanonicalDumper, sort_keys=True, default_flow_style=False)
    return text.encode()


def fingerprint(config: Mapping[str, Any]) -> str:
    """A short sha256 prefix of :func:`canonical_bytes`: identifies the content, reveals none of it."""
    return hashlib.sha256(canonical_bytes(config)).hexdigest()[:FINGERPRINT_CHARS]


def exec_plugins_of(settings: Any) -> tuple[str, ...]:
    """``settings.exec_plugins`` (empty when the settings object has none)."""
    return tuple(getattr(settings, "exec_plugins", ()) or ())


def allow_proxy_of(settings: Any) -> bool:
    """``settings.kubeconfig_proxy`` (False when the settings object has none)."""
    return bool(getattr(settings, "kubeconfig_proxy", False))


# ---------------------------------------------------------------------------------------------
# Where cluster servers may be (this part resolves names).
# ---------------------------------------------------------------------------------------------

#: Seconds resolving a cluster server's name may take before the kubeconfig is refused.
RESOLVE_TIMEOUT = url_policy.DEFAULT_RESOLVE_TIMEOUT
#: The rule a refused server breaks, as the caller reads it: never an address nor what answered.
SERVER_REFUSED = (
    "the server address is outside the networks the operator allows (KDUFLOW_ALLOW_PRIVATE_NETWORKS)"
)


async def check_cluster_servers(
    config: Mapping[str, Any],
    settings: Any,
    *,
    subject: str = "kubeconfig",
    getaddrinfo: url_policy.GetAddrInfo | None = None,
    resolve_timeout: float = RESOLVE_TIMEOUT,
) -> None:
    """Refuse a kubeconfig whose cluster ``server`` is, or resolves to, an internal address.

    ``config`` is a kubeconfig :func:`check_kubeconfig` returned. The host of every
    ``clusters[i].cluster.server`` is judged: an IP literal as it is, a name by every address
    ``getaddrinfo`` gives for it (the running loop's by default, so the event loop is not blocked).
    An address is refused when :func:`activities.url_policy.address_problem` finds it loopback,
    link-local, private, unspecified, multicast, reserved or otherwise not globally routable
    (IPv4-mapped, 6to4, NAT64 and Teredo addresses also by the IPv4 address they carry) and it lies
    in none of ``settings.private_networks`` (``KDUFLOW_ALLOW_PRIVATE_NETWORKS``). A name that does
    not resolve within ``resolve_timeout`` seconds is refused the same way. Public addresses pass.

    The reason, with the resolved addresses, goes to this module's logger at WARNING. The error
    names the field and says only that the address is outside the networks the operator allows,
    identical for every reason, so it tells the caller nothing about the worker's network; nothing
    was connected to.

    Limit (check, then connect): kubectl and helm resolve the name again when they connect. A name
    whose answers change in between (DNS rebinding: a zone with a short TTL under the caller's
    control) passes with a public address and is then connected to at an internal one. Register
    clusters by IP address or by names whose DNS the operator trusts; an egress firewall in front of
    the worker closes the gap for every client. The in-process status client
    (:class:`activities.kubeapi.KubeApi` built with ``private_networks``) has no such gap: it
    connects only to the addresses it has just judged.

    Args:
        config: the kubeconfig as :func:`check_kubeconfig` returned it.
        settings: the worker's settings (``private_networks``).
        subject: how the message names the kubeconfig (e.g. ``credentials of cluster 'c1'``).
        getaddrinfo: replaces ``asyncio.get_running_loop().getaddrinfo`` (same signature; tests).
        resolve_timeout: seconds name resolution may take.

    Raises:
        errors.CredentialsInvalid: ``details["field"]`` is ``clusters[i].cluster.server``.
    """
    networks = url_policy.private_networks_of(settings)
    verdicts: dict[str, str | None] = {}
    for index, entry in enumerate(config.get("clusters") or ()):
        cluster = entry.get("cluster") if isinstance(entry, Mapping) else None
        server = cluster.get("server") if isinstance(cluster, Mapping) else None
        key = str(server)
        if key not in verdicts:
            verdicts[key] = await server_problem(
                server, networks, getaddrinfo=getaddrinfo, timeout=resolve_timeout
            )
        problem = verdicts[key]
        if problem is not None:
            field = f"clusters[{index}].cluster.server"
            log.warning("%s refused: %s: %s (not in KDUFLOW_ALLOW_PRIVATE_NETWORKS)", subject, field, problem)
            raise errors.CredentialsInvalid(f"{subject} refused: {field}: {SERVER_REFUSED}",
                                            details={"field": field})


async def server_problem(
    server: Any,
    private_networks: Iterable[url_policy.IPNetwork] = (),
    *,
    getaddrinfo: url_policy.GetAddrInfo | None = None,
    timeout: float = RESOLVE_TIMEOUT,
) -> str | None:
    """Why a cluster ``server`` URL must not be connected to, or None when it may.

    The text names the host and its addresses: for the worker's log only.
    """
    try:
        parts = urllib.parse.urlsplit(server if isinstance(server, str) else "")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = url_policy.normalise_host(parts.hostname or "")
    except ValueError:  # url_policy.UrlRefused included
        return "the server is not a URL naming a host name or IP address"
    try:
        addresses = [str(url_policy.parse_address(host))]
    except ValueError:
        try:
            addresses = await url_policy.resolve_host(host, port, getaddrinfo=getaddrinfo, timeout=timeout)
        except url_policy.UrlRefused as why:
            return str(why)
    problems = [p for p in (url_policy.address_problem(a, private_networks) for a in addresses) if p]
    if problems:
        return f"{host} resolves to {', '.join(addresses)}: {'; '.join(problems)}"
    return None


# ---------------------------------------------------------------------------------------------
# Parsing and bounds.
# ---------------------------------------------------------------------------------------------


class _NestingLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader, refusing collections nested too deep as it opens them.

    Its scanner keeps one indentation entry per open block collection and one flow level per open
    flow collection; both are checked each time one grows, so a document is refused at the first
    collection more than ``MAX_DEPTH + 1`` levels down, before the scanner's per-token work on every
    pending flow level adds up. One level looser than the depth bound on the loaded data (an empty
    collection at depth ``MAX_DEPTH`` is accepted there), so this fence never refuses a kubeconfig
    that bound would accept.
    """

    def add_indent(self, column: int) -> bool:
        added = bool(super().add_indent(column))
        if added:
            self._check_nesting()
        return added

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        super().fetch_flow_collection_start(token_class)
        self._check_nesting()

    def _check_nesting(self) -> None:
        if len(self.indents) + self.flow_level > MAX_DEPTH + 1:
            raise _Refusal("", f"YAML does not parse: nested deeper than {MAX_DEPTH} levels")


def _prescan(text: str) -> None:
    """Refuse deeply nested YAML text by a linear scan, before the loader sees it.

    Two cheap measures of nesting: the indentation of each line (compact ``- ``, ``? ``, ``: ``
    indicators counted, as each opens a block collection) against :data:`MAX_INDENT`, and the
    depth of flow collections against the loader's bound. The flow depth is approximate: a ``[``
    or ``{`` counts where a node may start (at the start of the text or of a line, after
    whitespace, ``,``, ``:`` or a bracket that counted), a quoted scalar or a comment starting
    there is skipped, and a closing bracket counts anywhere else. It is a fast path, not the
    fence: what it lets through, :class:`_NestingLoader` refuses exactly.
    """
    if _DEEP_FIRST_LINE.match(text) or _DEEP_LINE.search(text):
        raise _Refusal("", f"YAML does not parse: a line is indented deeper than {MAX_INDENT} columns")
    depth = 0
    pos = 0
    last_open = -2
    while (found := _FLOW_CHAR.search(text, pos)) is not None:
        at = found.start()
        char = text[at]
        pos = at + 1
        if char in "]}":
            depth = max(depth - 1, 0)
            continue
        before = text[at - 1] if at else "\n"
        if not (before in _NODE_MAY_FOLLOW or (before in "[{" and at - 1 == last_open)):
            continue  # inside a plain scalar, or right after a quoted one
        if char in "[{":
            last_open = at
            depth += 1
            if depth > MAX_DEPTH + 1:  # the loader's bound (see _NestingLoader)
                raise _Refusal("", f"YAML does not parse: nested deeper than {MAX_DEPTH} levels")
        else:
            skipped = _SKIP_TO[char].match(text, at)  # matches at least the opening character
            pos = skipped.end() if skipped else pos


def _load(credentials: Any) -> Any:
    if isinstance(credentials, bytes | bytearray):
        if len(credentials) > MAX_TEXT_BYTES:
            raise _Refusal("", f"larger than {MAX_TEXT_BYTES // 1024} KiB")
        try:
            credentials = bytes(credentials).decode("utf-8")
        except UnicodeDecodeError:
            raise _Refusal("", "not UTF-8 text") from None
    if isinstance(credentials, str):
        if len(credentials) > MAX_TEXT_BYTES or len(credentials.encode("utf-8", "replace")) > MAX_TEXT_BYTES:
            raise _Refusal("", f"larger than {MAX_TEXT_BYTES // 1024} KiB")
        _prescan(credentials)
        try:
            # A SafeLoader subclass (pure Python): safe tags only, nesting refused as it is read.
            # _NestingLoader is a yaml.SafeLoader subclass: safe_load with a nesting fence.
            config = yaml.load(credentials, Loader=_NestingLoader)  # noqa: S506
        except _Refusal:
            raise
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise _Refusal("", f"YAML does not parse{where}") from None
        except RecursionError:
            raise _Refusal("", f"YAML does not parse: nested deeper than {MAX_DEPTH} levels") from None
        except Exception:  # any other loader failure is a refusal, never a crash
            raise _Refusal("", "YAML does not parse") from None
    else:
        config = credentials
    if not isinstance(config, Mapping):
        raise _Refusal("", f"expected a mapping, got {type(config).__name__}")
    return config


def _check_bounds(config: Mapping[str, Any]) -> None:
    """Depth, node count, total characters and value types, by an iterative walk.

    Nodes are counted when they are queued and every use counts, so an object reachable through N
    aliases counts N times, a cyclic structure exceeds the depth bound, and the walk queues at most
    MAX_NODES entries whatever the shape.
    """
    nodes = 1
    chars = 0
    stack: list[tuple[Any, int, str]] = [(config, 0, "")]

    def queue(item: Any, depth: int, path: str) -> None:
        nonlocal nodes
        nodes += 1
        if nodes > MAX_NODES:
            raise _Refusal("", f"more than {MAX_NODES} nodes (YAML aliases count once per use)")
        stack.append((item, depth, path))

    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise _Refusal(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            chars += len(value)
            if "\x00" in value:
                raise _Refusal(path, "contains a NUL character")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _Refusal(path, "has a key that is not a string")
                chars += len(key)
                queue(item, depth + 1, _join(path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                queue(item, depth + 1, f"{path}[{index}]")
        elif value is not None and not isinstance(value, bool | int | float):
            raise _Refusal(path, f"has a value of unsupported type {type(value).__name__}")
        if chars > MAX_TEXT_BYTES:
            raise _Refusal("", f"holds more than {MAX_TEXT_BYTES // 1024} KiB of text")


# ---------------------------------------------------------------------------------------------
# Schema.
# ---------------------------------------------------------------------------------------------


def _check_schema(
    config: Mapping[str, Any], exec_plugins: Collection[str] | None, allow_proxy: bool
) -> dict[str, Any]:
    out = dict(config)
    _known_fields(out, TOP_LEVEL_FIELDS, "")
    for field in ("apiVersion", "kind"):
        _string(out, field, "", MAX_SHORT_CHARS, optional=True)
    preferences = out.get("preferences")
    if preferences is not None:
        prefs = _mapping(preferences, "preferences")
        _known_fields(prefs, PREFERENCES_FIELDS, "preferences")
        _boolean(prefs, "colors", "preferences")
        _extensions(prefs.get("extensions"), "preferences.extensions")
    _extensions(out.get("extensions"), "extensions")

    for section in ("clusters", "contexts", "users"):
        entries = out.get(section)
        if not isinstance(entries, list) or not entries:
            raise _Refusal(section, f"'{section}' must be a non-empty list")
        for index, entry in enumerate(entries):
            path = f"{section}[{index}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise _Refusal(path, f"every entry of '{section}' needs a 'name'")
            inner = {"clusters": "cluster", "contexts": "context", "users": "user"}[section]
            _known_fields(entry, {"name", inner}, path)
            _string(entry, "name", path, MAX_SHORT_CHARS)
            body = entry.get(inner)
            body_path = f"{path}.{inner}"
            if body is None and section != "clusters":
                continue
            body = _mapping(body, body_path)
            if section == "clusters":
                _check_cluster(body, body_path, allow_proxy)
            elif section == "users":
                _check_user(body, body_path, exec_plugins)
            else:
                _check_context(body, body_path)

    context_names = [entry["name"] for entry in out["contexts"]]
    current = out.get("current-context")
    if current is not None and not isinstance(current, str):
        raise _Refusal("current-context", "must be a string")
    if not current:
        if len(context_names) != 1:
            raise _Refusal("current-context", "no 'current-context' and more than one context")
        out["current-context"] = context_names[0]
    elif current not in context_names:
        raise _Refusal("current-context", "current-context is not among the contexts")
    return out


def _check_cluster(cluster: Mapping[str, Any], path: str, allow_proxy: bool) -> None:
    _known_fields(cluster, CLUSTER_FIELDS, path)
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise _Refusal(f"{path}.server", "a cluster needs a 'server' URL")
    _check_url(server, f"{path}.server", ("https", "http"), userinfo=False)
    _string(cluster, "tls-server-name", path, MAX_SHORT_CHARS, optional=True)
    _boolean(cluster, "insecure-skip-tls-verify", path)
    _boolean(cluster, "disable-compression", path)
    _base64(cluster, "certificate-authority-data", path)
    proxy = cluster.get("proxy-url")
    if proxy is not None and proxy != "":
        if not allow_proxy:
            raise _Refusal(
                f"{path}.proxy-url",
                "proxy-url is not allowed on this worker (KDUFLOW_ALLOW_KUBECONFIG_PROXY)",
            )
        if not isinstance(proxy, str):
            raise _Refusal(f"{path}.proxy-url", "must be a string")
        _check_url(proxy, f"{path}.proxy-url", ("https", "http", "socks5"), userinfo=True)
    _extensions(cluster.get("extensions"), f"{path}.extensions")


def _check_user(user: Mapping[str, Any], path: str, exec_plugins: Collection[str] | None) -> None:
    if "auth-provider" in user:
        raise _Refusal(
            f"{path}.auth-provider",
            "auth-provider plugins are not allowed; use a token, a client certificate or an "
            "allowlisted exec plugin",
        )
    _known_fields(user, USER_FIELDS, path)
    _base64(user, "client-certificate-data", path)
    _base64(user, "client-key-data", path)
    token = user.get("token")
    if token is not None and token != "":
        if not isinstance(token, str):
            raise _Refusal(f"{path}.token", "must be a string")
        if len(token) > MAX_SECRET_CHARS:
            raise _Refusal(f"{path}.token", f"longer than {MAX_SECRET_CHARS} characters")
        if not _TOKEN.fullmatch(token):
            raise _Refusal(f"{path}.token", "contains whitespace, control or non-ASCII characters")
    _string(user, "username", path, MAX_SHORT_CHARS, optional=True)
    _string(user, "password", path, MAX_SECRET_CHARS, optional=True)
    _string(user, "as", path, MAX_SHORT_CHARS, optional=True)
    _string(user, "as-uid", path, MAX_SHORT_CHARS, optional=True)
    groups = user.get("as-groups")
    if groups is not None:
        _string_list(groups, f"{path}.as-groups", MAX_EXEC_ARGS)
    extra = user.get("as-user-extra")
    if extra is not None:
        extra = _mapping(extra, f"{path}.as-user-extra")
        for key, values in extra.items():
            key_path = _join(f"{path}.as-user-extra", key)
            _plain(key, key_path, MAX_SHORT_CHARS)
            if values is not None:
                _string_list(values, key_path, MAX_EXEC_ARGS)
    exec_config = user.get("exec")
    if exec_config is not None:
        _check_exec(_mapping(exec_config, f"{path}.exec"), f"{path}.exec", exec_plugins)
    _extensions(user.get("extensions"), f"{path}.extensions")


def _check_exec(exec_config: Mapping[str, Any], path: str, exec_plugins: Collection[str] | None) -> None:
    _known_fields(exec_config, EXEC_FIELDS, path)
    command = exec_config.get("command")
    if not isinstance(command, str) or not command:
        raise _Refusal(f"{path}.command", "an exec plugin needs a 'command' string")
    if len(command) > MAX_SHORT_CHARS or _CONTROL.search(command):
        raise _Refusal(f"{path}.command", "is too long or contains control characters")
    if exec_plugins is not None and command not in exec_plugins:
        raise _Refusal(
            f"{path}.command",
            "exec plugin command is not in this worker's allowlist (KDUFLOW_EXEC_PLUGINS)",
        )
    args = exec_config.get("args")
    if args is not None:
        _string_list(args, f"{path}.args", MAX_EXEC_ARGS, allow_control=True)
    env = exec_config.get("env")
    if env is not None:
        if not isinstance(env, list):
            raise _Refusal(f"{path}.env", "must be a list of {name, value} entries")
        if len(env) > MAX_EXEC_ENV:
            raise _Refusal(f"{path}.env", f"more than {MAX_EXEC_ENV} entries")
        for index, item in enumerate(env):
            item_path = f"{path}.env[{index}]"
            if not isinstance(item, Mapping):
                raise _Refusal(item_path, "must be a {name, value} mapping")
            _known_fields(item, {"name", "value"}, item_path)
            name = item.get("name")
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise _Refusal(f"{item_path}.name", "is not an environment variable name")
            if name in FORBIDDEN_EXEC_ENV or name.startswith(FORBIDDEN_EXEC_ENV_PREFIXES):
                raise _Refusal(f"{item_path}.name", "names a variable that makes a program load code")
            value = item.get("value")
            if not isinstance(value, str):
                raise _Refusal(f"{item_path}.value", "must be a string")
            if len(value) > MAX_SHORT_CHARS:
                raise _Refusal(f"{item_path}.value", f"longer than {MAX_SHORT_CHARS} characters")
    _string(exec_config, "apiVersion", path, MAX_SHORT_CHARS, optional=True)
    _string(exec_config, "installHint", path, MAX_SHORT_CHARS, optional=True, allow_control=True)
    _boolean(exec_config, "provideClusterInfo", path)
    mode = exec_config.get("interactiveMode")
    if mode is not None and mode != "" and mode not in INTERACTIVE_MODES:
        raise _Refusal(f"{path}.interactiveMode", f"must be one of {', '.join(sorted(INTERACTIVE_MODES))}")


def _check_context(context: Mapping[str, Any], path: str) -> None:
    _known_fields(context, CONTEXT_FIELDS, path)
    for field in ("cluster", "user", "namespace"):
        _string(context, field, path, MAX_SHORT_CHARS, optional=True)
    _extensions(context.get("extensions"), f"{path}.extensions")


def _extensions(value: Any, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise _Refusal(path, "must be a list of {name, extension} entries")
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if not isinstance(item, Mapping):
            raise _Refusal(item_path, "must be a {name, extension} mapping")
        _known_fields(item, {"name", "extension"}, item_path)
        _string(item, "name", item_path, MAX_SHORT_CHARS)
        # The extension's content is opaque to client-go's loader; _check_bounds bounded it.


# ---------------------------------------------------------------------------------------------
# Field helpers.
# ---------------------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    shown = key if _PRINTABLE_KEY.fullmatch(key) else "<key>"
    return f"{path}.{shown}" if path else shown


def _known_fields(entry: Mapping[str, Any], allowed: Collection[str], path: str) -> None:
    for key in entry:
        if key in allowed:
            continue
        if key in FILE_FIELDS:
            raise _Refusal(
                _join(path, key),
                f"names a file; only inline credentials are accepted (use '{FILE_FIELDS[key]}')",
            )
        raise _Refusal(_join(path, key), "is not a field kduflow accepts in a kubeconfig")


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Refusal(path, "must be a mapping")
    return value


def _plain(value: Any, path: str, limit: int, *, allow_control: bool = False) -> None:
    if not isinstance(value, str):
        raise _Refusal(path, "must be a string")
    if len(value) > limit:
        raise _Refusal(path, f"longer than {limit} characters")
    if not allow_control and _CONTROL.search(value):
        raise _Refusal(path, "contains control characters")


def _string(
    entry: Mapping[str, Any], field: str, path: str, limit: int, *, optional: bool = False,
    allow_control: bool = False,
) -> None:
    value = entry.get(field)
    if value is None and optional:
        return
    _plain(value, _join(path, field), limit, allow_control=allow_control)


def _string_list(value: Any, path: str, limit: int, *, allow_control: bool = False) -> None:
    if not isinstance(value, list):
        raise _Refusal(path, "must be a list of strings")
    if len(value) > limit:
        raise _Refusal(path, f"more than {limit} entries")
    for index, item in enumerate(value):
        _plain(item, f"{path}[{index}]", MAX_SHORT_CHARS, allow_control=allow_control)


def _boolean(entry: Mapping[str, Any], field: str, path: str) -> None:
    value = entry.get(field)
    if value is not None and not isinstance(value, bool):
        raise _Refusal(_join(path, field), "must be true or false")


def _base64(entry: Mapping[str, Any], field: str, path: str) -> None:
    value = entry.get(field)
    if value is None:
        return
    where = _join(path, field)
    if not isinstance(value, str):
        raise _Refusal(where, "must be a base64 string")
    if len(value) > MAX_DATA_CHARS:
        raise _Refusal(where, f"longer than {MAX_DATA_CHARS} characters")
    if not _BASE64.fullmatch(value):
        raise _Refusal(where, "is not base64")


def _check_url(value: str, path: str, schemes: tuple[str, ...], *, userinfo: bool) -> None:
    if len(value) > MAX_SHORT_CHARS or _CONTROL.search(value) or any(c.isspace() for c in value):
        raise _Refusal(path, "is too long or contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _Refusal(path, "is not a URL") from None
    if parts.scheme not in schemes:
        raise _Refusal(path, f"must be a {' or '.join(s + '://' for s in schemes)} URL")
    if not parts.hostname:
        raise _Refusal(path, "must name a host")
    if not userinfo and "@" in parts.netloc:
        raise _Refusal(path, "must not carry userinfo (user:password@)")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise _Refusal(path, "must not carry a query or fragment")
