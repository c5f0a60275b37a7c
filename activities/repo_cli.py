"""Pure argv builders and output parsers for helm's repository and registry verbs, helm 3 and helm 4.

No I/O here: the activities in ``activities/repos.py`` run what these functions build. Secrets never
appear in an argv: passwords go through ``--password-stdin`` and the caller writes them to stdin.

Dialect differences handled here (measured with helm v3.17.3 and v4.3.1, reference anchors.md 5.12, 7):

* ``repo update``: helm 3 exits 0 when a repository fails unless ``--fail-on-repo-update-fail`` is given,
  so it is always passed; helm 4 fails by itself and rejects that flag as unknown.
* ``repo add``: helm 4 removed ``--no-update`` (never passed). Re-adding an identical repository is a
  no-op ("already exists with the same configuration, skipping", exit 0) on both; a different URL
  under the same name fails unless ``--force-update``.
* ``registry login``: helm 4 accepts a registry host only; helm 3 accepts a URL but also the host, so
  the host (``host[:port]``) is passed to both.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

HELM3 = "helm3"
HELM4 = "helm4"
DIALECTS = (HELM3, HELM4)

#: helm's repository name rule (``repo add`` refuses "/" and a few other characters).
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RepoCliError(ValueError):
    """An argument is invalid for a helm repo/registry command (bad name, URL or dialect)."""


@dataclass(frozen=True)
class RepoEntry:
    """One entry of ``helm repo list -o json``."""

    name: str
    url: str


@dataclass(frozen=True)
class ChartVersion:
    """One entry of ``helm search repo -o json``."""

    #: "repo/chart"
    name: str
    version: str
    app_version: str = ""
    description: str = ""

    @property
    def repo(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def chart(self) -> str:
        return self.name.split("/", 1)[-1]


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise RepoCliError(f"unknown helm dialect {dialect!r} (expected one of {DIALECTS})")


def validate_repo_name(name: str) -> str:
    """Return ``name`` if helm accepts it as a repository name, else raise :class:`RepoCliError`."""
    if not isinstance(name, str) or not _REPO_NAME.match(name):
        raise RepoCliError(
            f"repository name {name!r} must start with a letter or digit and contain only "
            "letters, digits, '.', '_' and '-' (at most 100 characters)"
        )
    return name


def _authority(url: str) -> str:
    """The ``[userinfo@]host[:port]`` part of ``url`` (a scheme-less URL is read as ``host/path``)."""
    rest = url.partition("://")[2] if "://" in url else url
    for end in "/?#":
        rest = rest.partition(end)[0]
    return rest


def url_has_userinfo(url: str) -> bool:
    """True when ``url`` carries ``user[:password]@`` before its host (scheme-less URLs included)."""
    return "@" in _authority(url)


def redact_url(url: str) -> str:
    """``url`` with any ``user[:password]@`` replaced by ``***@`` (for logs, results and messages)."""
    authority = _authority(url)
    if "@" not in authority:
        return url
    host = authority.rpartition("@")[2]
    scheme, sep, _ = url.partition("://")
    prefix = f"{scheme}{sep}" if sep else ""
    return f"{prefix}***@{host}{url[len(prefix) + len(authority) :]}"


def validate_repo_url(url: str, *, oci: bool = False) -> str:
    """Return ``url`` if it is an http(s) URL (or oci:// / a registry host when ``oci``), else raise.

    A URL carrying credentials (``https://user:password@host``) is refused: credentials reach helm
    on stdin (``--password-stdin``), never on an argv. Messages show the URL with its userinfo redacted.
    """
    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        shown = redact_url(url) if isinstance(url, str) else url
        raise RepoCliError(f"repository URL {shown!r} is empty or contains whitespace")
    if url_has_userinfo(url):
        raise RepoCliError(
            f"repository URL {redact_url(url)!r} carries credentials; give them as the repository's "
            "user and password instead"
        )
    parts = urlsplit(url if "://" in url else f"oci://{url}" if oci else url)
    allowed = {"http", "https", "oci"} if oci else {"http", "https"}
    if parts.scheme not in allowed or not parts.netloc:
        raise RepoCliError(f"repository URL {url!r} must be {' or '.join(sorted(allowed))}://host/...")
    return url


def registry_host(url: str) -> str:
    """The registry host (``host[:port]``) of an OCI URL such as ``oci://reg.example:5000/charts``."""
    parts = urlsplit(url if "://" in url else f"oci://{url}")
    if not parts.netloc:
        raise RepoCliError(f"cannot find a registry host in {url!r}")
    # Credentials embedded in a URL must never reach an argv.
    return parts.netloc.rsplit("@", 1)[-1]


def build_repo_add_argv(
    helm: str,
    dialect: str,
    name: str,
    url: str,
    *,
    ca_file: str | None = None,
    username: str | None = None,
    password_stdin: bool = False,
    force_update: bool = False,
    pass_credentials: bool = False,
    timeout_s: int | None = None,
) -> list[str]:
    """argv of ``helm repo add NAME URL``.

    ``password_stdin`` adds ``--password-stdin``: the caller writes the password to the process's stdin.
    ``force_update`` replaces an existing entry of that name (needed when the URL changed).
    ``timeout_s`` is helm 4 only (index download timeout); ignored on helm 3, which has no such flag.
    """
    _check_dialect(dialect)
    validate_repo_name(name)
    validate_repo_url(url)
    argv = [helm, "repo", "add", name, url]
    if ca_file:
        argv += ["--ca-file", ca_file]
    if username:
        argv += ["--username", username]
    if password_stdin:
        argv.append("--password-stdin")
    if pass_credentials:
        argv.append("--pass-credentials")
    if force_update:
        argv.append("--force-update")
    if timeout_s is not None and dialect == HELM4:
        argv += ["--timeout", f"{int(timeout_s)}s"]
    return argv


def build_repo_update_argv(
    helm: str, dialect: str, names: list[str] | tuple[str, ...] = (), *, timeout_s: int | None = None
) -> list[str]:
    """argv of ``helm repo update [NAME...]`` that fails (exit != 0) when any repository fails."""
    _check_dialect(dialect)
    for name in names:
        validate_repo_name(name)
    argv = [helm, "repo", "update", *names]
    if dialect == HELM3:
        argv.append("--fail-on-repo-update-fail")
    elif timeout_s is not None:
        argv += ["--timeout", f"{int(timeout_s)}s"]
    return argv


def build_repo_list_argv(helm: str, dialect: str) -> list[str]:
    _check_dialect(dialect)
    return [helm, "repo", "list", "-o", "json"]


def build_repo_remove_argv(helm: str, dialect: str, name: str) -> list[str]:
    _check_dialect(dialect)
    validate_repo_name(name)
    return [helm, "repo", "remove", name]


def build_registry_login_argv(
    helm: str,
    dialect: str,
    url: str,
    *,
    username: str,
    ca_file: str | None = None,
    insecure: bool = False,
) -> list[str]:
    """argv of ``helm registry login HOST --username U --password-stdin``: the password goes to stdin."""
    _check_dialect(dialect)
    if not username:
        raise RepoCliError("registry login needs a username")
    argv = [helm, "registry", "login", registry_host(url), "--username", username, "--password-stdin"]
    if ca_file:
        argv += ["--ca-file", ca_file]
    if insecure:
        argv.append("--insecure")
    return argv


def build_registry_logout_argv(helm: str, dialect: str, url: str) -> list[str]:
    _check_dialect(dialect)
    return [helm, "registry", "logout", registry_host(url)]


def build_search_repo_argv(
    helm: str,
    dialect: str,
    keyword: str,
    *,
    version: str = "",
    all_versions: bool = False,
    devel: bool = False,
) -> list[str]:
    """argv of ``helm search repo KEYWORD -o json`` (``--version`` takes a semver constraint)."""
    _check_dialect(dialect)
    if not keyword or keyword.startswith("-"):
        raise RepoCliError(f"search keyword {keyword!r} is empty or looks like a flag")
    argv = [helm, "search", "repo", keyword, "-o", "json"]
    if all_versions:
        argv.append("--versions")
    if version:
        argv += ["--version", version]
    if devel:
        argv.append("--devel")
    return argv


def _json_list(stdout: str, what: str) -> list[Any]:
    text = stdout.strip()
    if not text:
        return []
    # helm may print warnings before the JSON document; it starts at the first '['.
    start = text.find("[")
    if start < 0:
        raise RepoCliError(f"{what}: no JSON list in helm's output")
    try:
        data = json.loads(text[start:])
    except json.JSONDecodeError as err:
        raise RepoCliError(f"{what}: helm's output is not JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise RepoCliError(f"{what}: expected a JSON list")
    return data


def parse_repo_list(stdout: str) -> list[RepoEntry]:
    """Parse ``helm repo list -o json`` (``[{"name":..,"url":..}]``; empty output = no repositories)."""
    return [
        RepoEntry(name=str(item.get("name", "")), url=str(item.get("url", "")))
        for item in _json_list(stdout, "repo list")
        if isinstance(item, dict)
    ]


def parse_search_repo(stdout: str) -> list[ChartVersion]:
    """Parse ``helm search repo -o json``."""
    return [
        ChartVersion(
            name=str(item.get("name", "")),
            version=str(item.get("version", "")),
            app_version=str(item.get("app_version", "")),
            description=str(item.get("description", "")),
        )
        for item in _json_list(stdout, "search repo")
        if isinstance(item, dict)
    ]


_ADD_SKIPPED = re.compile(r'"[^"]+" already exists with the same configuration, skipping')
_NO_SUCH_REPO = re.compile(r'no repo named "[^"]*" found|no repositories configured')
_NO_MATCH = re.compile(r"no repositories found matching")


def add_was_skipped(stdout: str) -> bool:
    """True when ``repo add`` found an identical entry and changed nothing (both dialects)."""
    return bool(_ADD_SKIPPED.search(stdout))


def is_remove_absent(stderr: str) -> bool:
    """True when ``repo remove`` failed only because the repository was not configured."""
    return bool(_NO_SUCH_REPO.search(stderr))


def is_update_unknown_repo(stderr: str) -> bool:
    """True when ``repo update NAME`` failed because no configured repository is called NAME."""
    return bool(_NO_MATCH.search(stderr))
