"""Pure helm repo/registry argv builders and parsers: golden argv per dialect, flags checked against
the real binaries' --help, parsers fed with output captured from helm v3.17.3 and v4.3.1."""

from __future__ import annotations

import re
import subprocess

import pytest

from activities import repo_cli
from activities.repo_cli import HELM3, HELM4, RepoCliError
from tests.conftest import HelmTools

H = "helm"
URL = "https://charts.example.com/stable"

GOLDEN = [
    pytest.param(
        lambda d: repo_cli.build_repo_add_argv(H, d, "bitnami", URL),
        {HELM3: [H, "repo", "add", "bitnami", URL], HELM4: [H, "repo", "add", "bitnami", URL]},
        id="add-plain",
    ),
    pytest.param(
        lambda d: repo_cli.build_repo_add_argv(
            H,
            d,
            "priv",
            URL,
            ca_file="/s/ca.crt",
            username="bob",
            password_stdin=True,
            force_update=True,
            timeout_s=30,
        ),
        {
            HELM3: [
                H,
                "repo",
                "add",
                "priv",
                URL,
                "--ca-file",
                "/s/ca.crt",
                "--username",
                "bob",
                "--password-stdin",
                "--force-update",
            ],
            HELM4: [
                H,
                "repo",
                "add",
                "priv",
                URL,
                "--ca-file",
                "/s/ca.crt",
                "--username",
                "bob",
                "--password-stdin",
                "--force-update",
                "--timeout",
                "30s",
            ],
        },
        id="add-full",
    ),
    pytest.param(
        lambda d: repo_cli.build_repo_update_argv(H, d, ["a", "b"]),
        {
            HELM3: [H, "repo", "update", "a", "b", "--fail-on-repo-update-fail"],
            HELM4: [H, "repo", "update", "a", "b"],
        },
        id="update-names",
    ),
    pytest.param(
        lambda d: repo_cli.build_repo_update_argv(H, d),
        {HELM3: [H, "repo", "update", "--fail-on-repo-update-fail"], HELM4: [H, "repo", "update"]},
        id="update-all",
    ),
    pytest.param(
        lambda d: repo_cli.build_repo_list_argv(H, d),
        {HELM3: [H, "repo", "list", "-o", "json"], HELM4: [H, "repo", "list", "-o", "json"]},
        id="list",
    ),
    pytest.param(
        lambda d: repo_cli.build_repo_remove_argv(H, d, "bitnami"),
        {HELM3: [H, "repo", "remove", "bitnami"], HELM4: [H, "repo", "remove", "bitnami"]},
        id="remove",
    ),
    pytest.param(
        lambda d: repo_cli.build_registry_login_argv(
            H, d, "oci://reg.example.com:5000/charts/x", username="u", ca_file="/s/ca.crt"
        ),
        {
            HELM3: [
                H,
                "registry",
                "login",
                "reg.example.com:5000",
                "--username",
                "u",
                "--password-stdin",
                "--ca-file",
                "/s/ca.crt",
            ],
            HELM4: [
                H,
                "registry",
                "login",
                "reg.example.com:5000",
                "--username",
                "u",
                "--password-stdin",
                "--ca-file",
                "/s/ca.crt",
            ],
        },
        id="registry-login",
    ),
    pytest.param(
        lambda d: repo_cli.build_search_repo_argv(H, d, "r1/webapp", version="^0.1", all_versions=True),
        {
            HELM3: [H, "search", "repo", "r1/webapp", "-o", "json", "--versions", "--version", "^0.1"],
            HELM4: [H, "search", "repo", "r1/webapp", "-o", "json", "--versions", "--version", "^0.1"],
        },
        id="search",
    ),
]


@pytest.mark.parametrize(("build", "expected"), GOLDEN)
@pytest.mark.parametrize("dialect", [HELM3, HELM4])
def test_golden_argv(build, expected, dialect: str) -> None:
    argv = build(dialect)
    assert argv == expected[dialect]
    assert not any(a.startswith("--password") and a != "--password-stdin" for a in argv)


_HELP_CACHE: dict[tuple[str, str], str] = {}


def _help(tools: HelmTools, verb: tuple[str, ...]) -> str:
    key = (str(tools.helm), " ".join(verb))
    if key not in _HELP_CACHE:
        out = subprocess.run(
            [str(tools.helm), *verb, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"},
        )
        _HELP_CACHE[key] = out.stdout
    return _HELP_CACHE[key]


@pytest.mark.parametrize(("build", "expected"), GOLDEN)
def test_every_flag_exists_in_the_real_binary(build, expected, tools: HelmTools) -> None:
    argv = build(tools.dialect)
    verb = tuple(argv[1:3])
    help_text = _help(tools, verb)
    for flag in (a for a in argv if a.startswith("--")):
        assert re.search(rf"(^|\s){re.escape(flag)}(\s|$)", help_text, re.M), (
            f"{tools.dialect}: {flag} of {verb}"
        )


def test_helm4_rejects_the_helm3_only_flags(helm4: HelmTools) -> None:
    assert "--fail-on-repo-update-fail" not in _help(helm4, ("repo", "update"))
    assert "--no-update" not in _help(helm4, ("repo", "add"))


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("oci://reg.example.com/charts", "reg.example.com"),
        ("oci://reg.example.com:5000/a/b", "reg.example.com:5000"),
        ("https://user:pw@reg.example.com/x", "reg.example.com"),
        ("reg.example.com/charts", "reg.example.com"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
    ],
)
def test_registry_host(url: str, host: str) -> None:
    assert repo_cli.registry_host(url) == host


@pytest.mark.parametrize(
    "call",
    [
        lambda: repo_cli.build_repo_add_argv(H, HELM3, "a/b", URL),
        lambda: repo_cli.build_repo_add_argv(H, HELM3, "-x", URL),
        lambda: repo_cli.build_repo_add_argv(H, HELM3, "ok", "ftp://x"),
        lambda: repo_cli.build_repo_add_argv(H, HELM3, "ok", "--force-update"),
        lambda: repo_cli.build_repo_add_argv(H, "helm2", "ok", URL),
        lambda: repo_cli.build_repo_remove_argv(H, HELM4, ""),
        lambda: repo_cli.build_registry_login_argv(H, HELM4, "oci://r", username=""),
        lambda: repo_cli.build_search_repo_argv(H, HELM4, "--help"),
        lambda: repo_cli.build_repo_update_argv(H, HELM4, ["--all"]),
    ],
)
def test_invalid_arguments_are_refused(call) -> None:
    with pytest.raises(RepoCliError):
        call()


# Output captured from helm v3.17.3 and v4.3.1 (identical for these verbs).
REPO_LIST_OUT = (
    '[{"name":"r1","url":"http://127.0.0.1:33257"},{"name":"stable","url":"https://x.example/s"}]\n'
)
SEARCH_OUT = (
    '[{"name":"r1/webapp","version":"0.2.0","app_version":"2.0.0","description":"kduflow test chart"},'
    '{"name":"r1/webapp","version":"0.1.0","app_version":"1.0.0","description":"kduflow test chart"}]\n'
)


def test_parse_repo_list() -> None:
    assert repo_cli.parse_repo_list(REPO_LIST_OUT) == [
        repo_cli.RepoEntry("r1", "http://127.0.0.1:33257"),
        repo_cli.RepoEntry("stable", "https://x.example/s"),
    ]
    assert repo_cli.parse_repo_list("[]\n") == []
    assert repo_cli.parse_repo_list("") == []
    with pytest.raises(RepoCliError):
        repo_cli.parse_repo_list("Error: something")


def test_parse_search_repo() -> None:
    found = repo_cli.parse_search_repo(SEARCH_OUT)
    assert [(c.repo, c.chart, c.version, c.app_version) for c in found] == [
        ("r1", "webapp", "0.2.0", "2.0.0"),
        ("r1", "webapp", "0.1.0", "1.0.0"),
    ]


def test_message_recognisers() -> None:
    assert repo_cli.add_was_skipped('"r1" already exists with the same configuration, skipping\n')
    assert not repo_cli.add_was_skipped('"r1" has been added to your repositories\n')
    assert repo_cli.is_remove_absent('Error: no repo named "zz" found\n')
    assert repo_cli.is_remove_absent("Error: no repositories configured\n")
    assert not repo_cli.is_remove_absent("Error: permission denied\n")
    assert repo_cli.is_update_unknown_repo(
        "Error: no repositories found matching 'nope'.  Nothing will be updated\n"
    )


@pytest.mark.parametrize(
    ("url", "has", "redacted"),
    [
        ("https://alice:pw@charts.example.com/x", True, "https://***@charts.example.com/x"),
        ("https://alice@charts.example.com", True, "https://***@charts.example.com"),
        ("oci://bob:pw@reg.example.com:5000/charts", True, "oci://***@reg.example.com:5000/charts"),
        ("bob:pw@reg.example.com:5000/charts", True, "***@reg.example.com:5000/charts"),
        ("https://a:b@c@charts.example.com/x", True, "https://***@charts.example.com/x"),
        ("https://charts.example.com/x@y", False, "https://charts.example.com/x@y"),
        ("https://charts.example.com/x?u=a@b", False, "https://charts.example.com/x?u=a@b"),
        ("reg.example.com/charts", False, "reg.example.com/charts"),
    ],
)
def test_userinfo_detection_and_redaction(url: str, has: bool, redacted: str) -> None:
    assert repo_cli.url_has_userinfo(url) is has
    assert repo_cli.redact_url(url) == redacted


@pytest.mark.parametrize(
    "call",
    [
        lambda: repo_cli.validate_repo_url("https://alice:Secret-123@charts.example.com/x"),
        lambda: repo_cli.validate_repo_url("oci://alice:Secret-123@reg.example.com/x", oci=True),
        lambda: repo_cli.validate_repo_url("alice:Secret-123@reg.example.com/x", oci=True),
        lambda: repo_cli.build_repo_add_argv(H, HELM4, "priv", "https://alice:Secret-123@charts.example.com"),
    ],
)
def test_credentials_in_a_repository_url_never_reach_an_argv(call) -> None:
    with pytest.raises(RepoCliError) as err:
        call()
    assert "Secret-123" not in str(err.value) and "***@" in str(err.value)
    assert "user and password" in str(err.value)
