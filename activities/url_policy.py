"""Which URLs workflow input may make the worker fetch from: the guard against SSRF.

A caller who can start workflows is not the worker's operator. Every URL or host that comes from
workflow input (InspectKdu ``repo_url``, ``oci://`` chart references in ``kdu_model``) goes through
:meth:`UrlPolicy.check` before helm runs, so a caller cannot make the worker fetch from loopback,
the cloud metadata service (169.254.169.254) or the operator's internal network.

Rules, in order:

1. Refused outright: a URL that does not parse, has a scheme other than http, https or oci, no host,
   credentials (``user:password@``), a query, a fragment, or a path with ``.``/``..`` segments or
   percent-encoded dots, slashes or backslashes.
2. Allowed, whatever its host resolves to: a *registered repository*. For http(s) that is a
   ``k8srepos`` document's ``url`` equal to the URL after normalisation (scheme and host in lower
   case, default port made explicit, empty path segments and a trailing slash dropped). For ``oci://``
   it is an OCI ``k8srepos`` document (``oci: true`` or an ``oci://`` / scheme-less URL) with the same
   host and port whose path is a prefix of the reference's path, compared segment by segment.
   ``k8srepos`` is written by the operator (or OSM's NBI), so its repositories are the operator's.
   Documents whose URL carries credentials are not repositories for this rule.
3. Allowed when an entry of ``settings.url_allowlist`` (``KDUFLOW_URL_ALLOWLIST``) matches and every
   address the host resolves to (``loop.getaddrinfo``) is globally routable. Entries:

   * ``scheme://host[:port][/path]`` (http, https, oci): the scheme must be equal; the port must be
     equal, an entry without a port meaning the scheme's default port (80 for http, 443 for https and
     oci); the entry's path must be a prefix of the URL's path on segment boundaries
     (``/charts`` matches ``/charts`` and ``/charts/x``, not ``/chartsx``). The host may be a glob.
   * ``host``: that host with any scheme and any port.
   * ``*.domain``: any host below ``domain`` (at least one more label; ``domain`` itself does not match).

   Addresses that are loopback, link-local, private, unspecified, multicast, reserved, site-local or
   otherwise not globally routable are refused (IPv4-mapped IPv6 addresses are judged by their IPv4
   address; 6to4 and NAT64 addresses also by the IPv4 address they embed), unless the address lies in
   one of ``settings.private_networks`` (``KDUFLOW_ALLOW_PRIVATE_NETWORKS``). A name that does not
   resolve (or not within ``resolve_timeout`` seconds) is refused the same way.
4. Everything else is refused.

A refusal is the non-retryable ``UrlNotAllowed`` whose message names the input field and says only
that the URL is neither a registered repository nor allowed by the operator's URL policy: it never
says what the name resolved to, and nothing was fetched, so nothing answered. The reason (rule,
resolved addresses) goes to this module's logger at WARNING, with credentials redacted; URLs allowed
through the allowlist are logged at INFO.

Limits (the policy checks a URL, helm fetches it afterwards):

* DNS rebinding: the check resolves the name, then helm resolves it again when it connects. A name
  whose answers change between the two (an attacker-controlled zone with a short TTL) can point helm
  at an internal address after passing the check. Allowlist only names whose DNS the operator
  trusts, or IP literals; an egress firewall or proxy in front of the worker closes the gap.
* Indirections: helm follows HTTP redirects, a repository index may list chart archives on other
  hosts, and OCI registries redirect blob downloads to storage hosts. Those follow-up URLs are chosen
  by the repository, not by the caller, and are not checked here: allowlist repositories the
  operator trusts to that extent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from temporalio import activity

from activities.errors import UrlNotAllowed
from activities.repo_cli import redact_url, url_has_userinfo

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
log = activity.LoggerAdapter(logging.getLogger(__name__), None)

REPOS_COLLECTION = "k8srepos"
#: Default port of every scheme a URL from workflow input may have.
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "oci": 443}
#: Seconds name resolution may take before the URL is refused.
DEFAULT_RESOLVE_TIMEOUT = 10.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
GetAddrInfo = Callable[..., Awaitable[Sequence[tuple[Any, ...]]]]

_HOST = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_ENCODED_PATH_HAZARD = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class _PolicySettings(Protocol):
    @property
    def url_allowlist(self) -> tuple[str, ...]: ...
    @property
    def private_networks(self) -> tuple[str, ...]: ...


class _RepoStore(Protocol):
    async def find(self, collection: str, filter: dict) -> list[dict]: ...


class UrlRefused(ValueError):
    """A URL failed a rule; the text is for the worker's log only (it may name addresses)."""


# ---------------------------------------------------------------------------------------------
# Parsing and matching (pure).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedUrl:
    """A URL in the normalised form the rules compare."""

    scheme: str
    #: Lower case, no trailing dot; IP literals in their compressed form without brackets.
    host: str
    #: The effective port (the scheme's default when the URL gives none).
    port: int
    #: Non-empty path segments.
    segments: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str, int, tuple[str, ...]]:
        return (self.scheme, self.host, self.port, self.segments)


def normalise_host(host: str) -> str:
    """``host`` in lower case without a trailing dot; IP literals compressed. Raises UrlRefused."""
    value = host.strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not value or len(value) > 253 or not _HOST.fullmatch(value):
        raise UrlRefused(f"host {host!r} is not a host name or IP address")
    return value


def parse_url(url: str, *, default_scheme: str = "") -> ParsedUrl:
    """Parse and normalise ``url`` (rule 1 of the module docstring); raise :class:`UrlRefused`.

    ``default_scheme`` is given to a URL without ``://`` (registry references ``host[:port]/path``).
    """
    if not isinstance(url, str) or not url:
        raise UrlRefused("empty URL")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url) or "\\" in url:
        raise UrlRefused("whitespace, control, non-ASCII characters or backslashes in the URL")
    if url_has_userinfo(url):
        raise UrlRefused("the URL carries credentials (user:password@)")
    text = url if "://" in url or not default_scheme else f"{default_scheme}://{url}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise UrlRefused(f"malformed URL ({err})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlRefused(f"scheme {scheme!r} is not http, https or oci")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise UrlRefused("the URL has a query or a fragment")
    if not parts.hostname:
        raise UrlRefused("the URL has no host")
    if port == 0:
        raise UrlRefused("port 0")
    segments = tuple(s for s in parts.path.split("/") if s)
    if any(s in (".", "..") or _ENCODED_PATH_HAZARD.search(s) for s in segments):
        raise UrlRefused("the path has '.' or '..' segments or percent-encoded dots or slashes")
    return ParsedUrl(scheme, normalise_host(parts.hostname), port or DEFAULT_PORTS[scheme], segments)


def host_matches(pattern: str, host: str) -> bool:
    """``host`` equals ``pattern``, or lies below ``domain`` for a ``*.domain`` pattern."""
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".domain"
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


@dataclass(frozen=True)
class AllowEntry:
    """One entry of ``url_allowlist``: a URL prefix, a bare host or a ``*.domain`` glob."""

    text: str
    host: str
    #: None for a bare host or glob (any scheme, any port).
    scheme: str | None = None
    #: None: the scheme's default port (URL entries) or any port (bare hosts).
    port: int | None = None
    segments: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """Raises ValueError for an entry the settings validation would refuse."""
        entry = text.strip()
        if "://" not in entry:
            glob = entry.startswith("*.")
            host = normalise_host(entry[2:] if glob else entry)
            return cls(entry, f"*.{host}" if glob else host)
        if url_has_userinfo(entry):
            raise ValueError(f"allowlist entry {redact_url(entry)!r} carries credentials")
        parts = urlsplit(entry)
        scheme = parts.scheme.lower()
        hostname = parts.hostname or ""
        if scheme not in DEFAULT_PORTS or not hostname or parts.query or parts.fragment:
            raise ValueError(f"allowlist entry {entry!r} is not an http, https or oci URL prefix")
        glob = hostname.startswith("*.")
        host = normalise_host(hostname[2:] if glob else hostname)
        segments = tuple(s for s in parts.path.split("/") if s)
        return cls(entry, f"*.{host}" if glob else host, scheme, parts.port, segments)

    def matches(self, url: ParsedUrl) -> bool:
        if not host_matches(self.host, url.host):
            return False
        if self.scheme is None:
            return True
        if url.scheme != self.scheme:
            return False
        if url.port != (self.port if self.port is not None else DEFAULT_PORTS[self.scheme]):
            return False
        return url.segments[: len(self.segments)] == self.segments


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4, NAT64 (64:ff9b::/96) or Teredo address carries, else None."""
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _class_of(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (its first matching class), or None."""
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def parse_address(address: str) -> IPAddress:
    """An address as ``getaddrinfo`` returns it (an IPv6 ``%scope`` suffix dropped). Raises ValueError."""
    return ipaddress.ip_address(address.split("%", 1)[0])


def address_problem(address: str | IPAddress, private_networks: Iterable[IPNetwork] = ()) -> str | None:
    """Why a URL from workflow input must not reach ``address``, or None when it may.

    An IPv4-mapped IPv6 address is judged as its IPv4 address. 6to4, NAT64 and Teredo addresses are
    refused when the IPv6 address or the IPv4 address they embed is not public. An address inside one
    of ``private_networks`` is accepted whatever its class.
    """
    ip = parse_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    networks = list(private_networks)
    if any(ip.version == net.version and ip in net for net in networks):
        return None
    problem = _class_of(ip)
    if problem is not None:
        return f"{ip} is {problem}"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            inner_problem = address_problem(inner, networks)
            if inner_problem is not None:
                return f"{ip} embeds {inner_problem}"
    return None


# ---------------------------------------------------------------------------------------------
# The policy.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UrlDecision:
    """Why a URL was allowed."""

    #: The URL as given (it carries no credentials: those are refused).
    url: str
    #: True when it is a registered repository (errors may then show helm's messages).
    registered: bool
    #: The rule that allowed it, for logs: "k8srepos <id>" or "allowlist <entry>".
    rule: str


def refusal_message(field: str) -> str:
    """The message of every refusal: the field, nothing about addresses or answers."""
    return f"{field}: the URL is neither a registered repository nor allowed by the operator's URL policy"


class UrlPolicy:
    """Decides whether a URL from workflow input may be fetched (see the module docstring).

    Args:
        settings: ``url_allowlist`` and ``private_networks`` (``kduflow.config.Settings``).
        store: source of the registered repositories (``k8srepos``); None: none are registered.
        getaddrinfo: replaces ``asyncio.get_running_loop().getaddrinfo`` (same signature; tests).
        resolve_timeout: seconds name resolution may take.
    """

    def __init__(
        self,
        settings: _PolicySettings,
        store: _RepoStore | None = None,
        *,
        getaddrinfo: GetAddrInfo | None = None,
        resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
    ) -> None:
        self.store = store
        self.allowlist: tuple[AllowEntry, ...] = tuple(
            AllowEntry.parse(entry) for entry in getattr(settings, "url_allowlist", ()) or ()
        )
        self.private_networks: tuple[IPNetwork, ...] = private_networks_of(settings)
        self._getaddrinfo = getaddrinfo
        self.resolve_timeout = resolve_timeout

    async def check(self, url: str, *, field: str) -> UrlDecision:
        """Allow ``url`` (taken from the input field ``field``) or raise ``UrlNotAllowed``.

        Raises:
            UrlNotAllowed: (non-retryable) the URL is refused; the reason is logged, not raised.
        """
        try:
            parsed = parse_url(url)
            registered = await self._registered(parsed)
            if registered is not None:
                log.info("URL policy: %s=%s allowed: registered repository (%s)", field, url, registered)
                return UrlDecision(url, True, registered)
            entry = next((e for e in self.allowlist if e.matches(parsed)), None)
            if entry is None:
                raise UrlRefused("neither a registered repository nor matched by an allowlist entry")
            addresses = await self._resolve(parsed)
            problems = [p for p in (address_problem(a, self.private_networks) for a in addresses) if p]
            if problems:
                raise UrlRefused(
                    f"allowlist entry {entry.text!r} matches but {parsed.host} resolves to "
                    f"{', '.join(addresses)}: {'; '.join(problems)} (not in KDUFLOW_ALLOW_PRIVATE_NETWORKS)"
                )
        except UrlRefused as why:
            log.warning("URL policy: %s=%s refused: %s", field, redact_url(str(url)), why)
            raise UrlNotAllowed(refusal_message(field)) from None
        log.info(
            "URL policy: %s=%s allowed: allowlist entry %r, %s resolves to %s",
            field, url, entry.text, parsed.host, ", ".join(addresses),
        )  # fmt: skip
        return UrlDecision(url, False, f"allowlist {entry.text}")

    async def _registered(self, url: ParsedUrl) -> str | None:
        """``"k8srepos <id>"`` of the document ``url`` belongs to (rule 2), else None."""
        if self.store is None:
            return None
        for doc in await self.store.find(REPOS_COLLECTION, {}):
            raw = doc.get("url")
            if not isinstance(raw, str) or not raw:
                continue
            # As activities.repos.load_repo reads it: a scheme-less URL is a registry only with oci set.
            oci = doc.get("oci") is True or str(doc.get("oci", "")).lower() == "true"
            oci = oci or raw.startswith("oci://")
            try:
                repo = parse_url(raw, default_scheme="oci" if oci else "")
            except UrlRefused as why:
                log.debug("URL policy: k8srepos %s skipped: %s", doc.get("_id"), why)
                continue
            if url.scheme == "oci":
                if (
                    oci
                    and repo.scheme == "oci"
                    and (repo.host, repo.port) == (url.host, url.port)
                    and url.segments[: len(repo.segments)] == repo.segments
                ):
                    return f"k8srepos {doc.get('_id')}"
            elif not oci and repo.key == url.key:
                return f"k8srepos {doc.get('_id')}"
        return None

    async def _resolve(self, url: ParsedUrl) -> list[str]:
        """Every address ``url.host`` resolves to (an IP literal resolves to itself)."""
        return await resolve_host(
            url.host, url.port, getaddrinfo=self._getaddrinfo, timeout=self.resolve_timeout
        )


def private_networks_of(settings: Any) -> tuple[IPNetwork, ...]:
    """``settings.private_networks`` (``KDUFLOW_ALLOW_PRIVATE_NETWORKS``) as networks; () when absent."""
    return tuple(
        ipaddress.ip_network(net, strict=False) for net in getattr(settings, "private_networks", ()) or ()
    )


async def resolve_host(
    host: str,
    port: int,
    *,
    getaddrinfo: GetAddrInfo | None = None,
    timeout: float = DEFAULT_RESOLVE_TIMEOUT,
) -> list[str]:
    """Every address ``host`` resolves to, without duplicates (an IP literal resolves to itself).

    Resolution goes through ``getaddrinfo`` (default: the running loop's, so the event loop is not
    blocked) and is bounded by ``timeout`` seconds.

    Raises:
        UrlRefused: the name does not resolve (in time), or resolves to nothing or to something
            that is not an IP address; the text is for the worker's log only.
    """
    lookup = getaddrinfo or asyncio.get_running_loop().getaddrinfo
    try:
        infos = await asyncio.wait_for(lookup(host, port, type=socket.SOCK_STREAM), timeout)
    except (OSError, UnicodeError, TimeoutError) as err:
        raise UrlRefused(f"{host} does not resolve ({err.__class__.__name__}: {err})") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        try:
            parse_address(address)
        except ValueError:
            raise UrlRefused(f"{host} resolves to {address!r}, not an IP address") from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefused(f"{host} resolves to no address")
    return addresses
