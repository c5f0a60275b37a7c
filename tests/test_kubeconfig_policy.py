"""The kubeconfig policy: a table of hostile kubeconfigs, the settings that relax it, and the fences
with the real kubectl/helm against the sandbox cluster (an allowlisted exec plugin runs, others never)."""

from __future__ import annotations

import copy
import os
import random
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.exceptions import ApplicationError

from activities import errors, kubeconfig_policy
from activities.cluster_env import ClusterEnvs, kuberc_bytes
from activities.clusters import ClusterActivities
from activities.kubeconfig_policy import (
    MAX_DEPTH,
    MAX_NODES,
    canonical_bytes,
    check_kubeconfig,
    fingerprint,
)
from activities.store import Store
from kduflow.config import Settings
from sandbox import SandboxCluster
from tests.conftest import HelmTools, helm_tools
from tests.support import sandbox as sandbox_support
from workflows.cluster_models import ClusterRef, StoreCredentialsInput

sandbox = sandbox_support.sandbox

CANARY = "canary-Zq8v"  # put into hostile values: it must never show up in an error message


def base() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": "k", "cluster": {"server": "https://10.1.2.3:6443",
                                              "certificate-authority-data": "QUJD"}}],
        "users": [{"name": "u", "user": {"token": "good-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ns"}}],
        "current-context": "c",
    }


def with_user(**user: Any) -> dict[str, Any]:
    config = base()
    config["users"][0]["user"] = user
    return config


def with_cluster(**fields: Any) -> dict[str, Any]:
    config = base()
    config["clusters"][0]["cluster"].update(fields)
    return config


def exec_user(command: Any = "/bin/sh", **more: Any) -> dict[str, Any]:
    return with_user(exec={"apiVersion": "client.authentication.k8s.io/v1", "command": command,
                           "interactiveMode": "Never", **more})


def nested_dict(levels: int) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    for _ in range(levels):
        inner = {"x": inner}
    return inner


def alias_bomb() -> str:
    lines = [f'a0: &a0 ["{CANARY}", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 9):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


# (kubeconfig, keyword arguments of check_kubeconfig, expected field path or "" for "whole document",
#  a phrase of the message)
HOSTILE: list[Any] = [
    pytest.param(exec_user("/bin/sh", args=["-c", f"touch /tmp/{CANARY}"]), {},
                 "users[0].user.exec.command", "allowlist", id="exec-bin-sh"),
    pytest.param(exec_user("aws", args=["eks", "get-token"]), {"exec_plugins": ("kubelogin",)},
                 "users[0].user.exec.command", "KDUFLOW_EXEC_PLUGINS", id="exec-not-allowlisted"),
    pytest.param(exec_user("/usr/local/bin/aws"), {"exec_plugins": ("aws",)},
                 "users[0].user.exec.command", "allowlist", id="exec-path-vs-bare-name"),
    pytest.param(with_user(**{"auth-provider": {"name": "gcp", "config": {"cmd-path": f"/bin/{CANARY}"}}}),
                 {}, "users[0].user.auth-provider", "auth-provider", id="auth-provider"),
    pytest.param(with_cluster(**{"proxy-url": f"http://{CANARY}:3128"}), {},
                 "clusters[0].cluster.proxy-url", "KDUFLOW_ALLOW_KUBECONFIG_PROXY", id="proxy-url"),
    pytest.param(with_cluster(**{"proxy-url": f"file:///{CANARY}"}), {"allow_proxy": True},
                 "clusters[0].cluster.proxy-url", "URL", id="proxy-url-not-a-proxy"),
    pytest.param(with_user(tokenFile="/proc/self/environ"), {},
                 "users[0].user.tokenFile", "names a file", id="tokenFile-proc-environ"),
    pytest.param(with_user(token="t", tokenFile=f"/etc/{CANARY}"), {},
                 "users[0].user.tokenFile", "names a file", id="tokenFile-beside-token"),
    pytest.param(with_user(**{"client-certificate": f"/etc/{CANARY}.crt", "client-key-data": "QUJD"}), {},
                 "users[0].user.client-certificate", "client-certificate-data", id="client-certificate"),
    pytest.param(with_user(**{"client-certificate-data": "QUJD", "client-key": f"/etc/{CANARY}.key"}), {},
                 "users[0].user.client-key", "client-key-data", id="client-key"),
    pytest.param(with_cluster(**{"certificate-authority": f"/etc/{CANARY}.pem"}), {},
                 "clusters[0].cluster.certificate-authority", "names a file", id="certificate-authority"),
    pytest.param(with_user(token="t", futureFileField=CANARY), {},
                 "users[0].user.futureFileField", "not a field", id="unknown-user-key"),
    pytest.param(with_cluster(**{"tls-ca-path": CANARY}), {},
                 "clusters[0].cluster.tls-ca-path", "not a field", id="unknown-cluster-key"),
    pytest.param({**base(), "contexts": [{"name": "c", "context": {"cluster": "k", "kubeconfig": CANARY}}]},
                 {}, "contexts[0].context.kubeconfig", "not a field", id="unknown-context-key"),
    pytest.param({**base(), "include": CANARY}, {}, "include", "not a field", id="unknown-top-level-key"),
    pytest.param("[" * 10_000 + "]" * 10_000, {}, "", "nested deeper", id="deep-nesting-text-10000"),
    pytest.param({**base(), "extensions": [{"name": "e", "extension": nested_dict(10_000)}]}, {},
                 "", "nested deeper", id="deep-nesting-dict-10000"),
    pytest.param(alias_bomb(), {}, "", f"more than {MAX_NODES} nodes", id="alias-bomb"),
    pytest.param("a: &a [*a]\n", {}, "", "nested deeper", id="recursive-alias"),
    pytest.param("# " + "x" * (2 * 1024 * 1024) + "\n" + yaml.safe_dump(base()), {}, "",
                 "larger than 512 KiB", id="2MB-text"),
    pytest.param(with_user(token=f"{CANARY}\r\nX-Injected: 1"), {}, "users[0].user.token",
                 "control", id="token-crlf"),
    pytest.param(with_user(token=f"{CANARY}\n"), {}, "users[0].user.token", "control", id="token-lf"),
    pytest.param(with_user(username="admin", password=f"{CANARY}\r\n"), {}, "users[0].user.password",
                 "control", id="password-crlf"),
    pytest.param(with_cluster(server=f"https://admin:{CANARY}@10.1.2.3:6443"), {},
                 "clusters[0].cluster.server", "userinfo", id="server-userinfo"),
    pytest.param(with_cluster(server=f"ftp://{CANARY}"), {}, "clusters[0].cluster.server",
                 "https:// or http://", id="server-ftp"),
    pytest.param(with_cluster(server=f"file:///etc/{CANARY}"), {}, "clusters[0].cluster.server",
                 "https:// or http://", id="server-file"),
    pytest.param(with_cluster(server="https://"), {}, "clusters[0].cluster.server", "host",
                 id="server-no-host"),
    pytest.param(with_cluster(server=f"https://h:{CANARY}"), {}, "clusters[0].cluster.server", "URL",
                 id="server-bad-port"),
    pytest.param({**base(), "clusters": [{"name": "k", "cluster": {"insecure-skip-tls-verify": True}}]}, {},
                 "clusters[0].cluster.server", "needs a 'server'", id="server-missing"),
    pytest.param(exec_user(["/bin/sh"]), {"exec_plugins": ("/bin/sh",)}, "users[0].user.exec.command",
                 "'command' string", id="command-not-a-string"),
    pytest.param(exec_user("plugin", args=f"-c {CANARY}"), {"exec_plugins": ("plugin",)},
                 "users[0].user.exec.args", "list of strings", id="args-not-a-list"),
    pytest.param(exec_user("plugin", args=["ok", 7]), {"exec_plugins": ("plugin",)},
                 "users[0].user.exec.args[1]", "string", id="args-not-strings"),
    pytest.param(exec_user("plugin", args=["a"] * 65), {"exec_plugins": ("plugin",)},
                 "users[0].user.exec.args", "more than 64", id="args-too-many"),
    pytest.param(exec_user("plugin", env={"A": CANARY}), {"exec_plugins": ("plugin",)},
                 "users[0].user.exec.env", "list", id="env-not-a-list"),
    pytest.param(exec_user("plugin", env=[{"name": "A", "value": 1}]), {"exec_plugins": ("plugin",)},
                 "users[0].user.exec.env[0].value", "string", id="env-value-not-a-string"),
    pytest.param(exec_user("plugin", env=[{"name": "A=B", "value": CANARY}]), {"exec_plugins": ("plugin",)},
                 "users[0].user.exec.env[0].name", "variable name", id="env-bad-name"),
    pytest.param(exec_user("plugin", env=[{"name": "LD_PRELOAD", "value": f"/tmp/{CANARY}.so"}]),
                 {"exec_plugins": ("plugin",)}, "users[0].user.exec.env[0].name", "load code",
                 id="env-ld-preload"),
    pytest.param(exec_user("plugin", shell=CANARY), {"exec_plugins": ("plugin",)},
                 "users[0].user.exec.shell", "not a field", id="exec-unknown-key"),
    pytest.param(exec_user("plugin", interactiveMode="Sometimes"), {"exec_plugins": ("plugin",)},
                 "users[0].user.exec.interactiveMode", "one of", id="exec-bad-interactive-mode"),
    pytest.param(f"users: !!python/object/apply:os.system ['{CANARY}']\n", {}, "", "YAML does not parse",
                 id="python-tag"),
    pytest.param(yaml.safe_dump(base()).replace("token: good-token", "token: !!binary QUJD"), {},
                 "users[0].user.token", "unsupported type", id="binary-token"),
    pytest.param(with_user(**{"client-key-data": f"-----BEGIN {CANARY}-----"}), {},
                 "users[0].user.client-key-data", "base64", id="key-data-not-base64"),
    pytest.param({**base(), "users": []}, {}, "users", "non-empty list", id="no-users"),
    pytest.param({**base(), "current-context": CANARY}, {}, "current-context", "not among the contexts",
                 id="unknown-current-context"),
    pytest.param(["not", "a", "mapping"], {}, "", "expected a mapping", id="not-a-mapping"),
]


@pytest.mark.parametrize(("config", "kwargs", "field", "phrase"), HOSTILE)
def test_hostile_kubeconfigs_are_refused(
    config: Any, kwargs: dict[str, Any], field: str, phrase: str
) -> None:
    with pytest.raises(errors.CredentialsInvalid) as info:
        check_kubeconfig(config, **kwargs)
    err = info.value
    assert not err.retryable
    app = errors.to_application_error(err)
    assert app.type == "CredentialsInvalid" and app.non_retryable
    message = str(err)
    assert phrase in message
    if field:
        assert err.details == {"field": field}
        assert f"{field}: " in message
    assert CANARY not in message and "/proc/self/environ" not in message
    assert "good-token" not in message


@pytest.mark.parametrize(
    ("config", "kwargs"),
    [
        pytest.param(base(), {}, id="plain-token"),
        pytest.param(with_user(username="admin", password="p@ss word"), {}, id="basic-auth"),
        pytest.param(with_user(**{"client-certificate-data": "QUJD", "client-key-data": "QUJD"}), {},
                     id="cert-data"),
        pytest.param(with_user(token="t", **{"as": "jane", "as-groups": ["g"],
                                             "as-user-extra": {"k": ["v"]}}),
                     {}, id="impersonation"),
        pytest.param(with_cluster(**{"tls-server-name": "kube.test", "disable-compression": True,
                                     "extensions": [{"name": "x", "extension": {"any": ["thing", 1]}}]}),
                     {}, id="harmless-cluster-fields"),
        pytest.param(with_cluster(server="http://127.0.0.1:8080/base/path"), {}, id="http-server-with-path"),
        pytest.param(with_cluster(**{"proxy-url": "socks5://proxy.example:1080"}), {"allow_proxy": True},
                     id="proxy-allowed"),
        pytest.param(exec_user("/opt/bin/kubelogin", args=["get-token", "--login", "azurecli"],
                               env=[{"name": "AZURE_CONFIG_DIR", "value": "/srv/azure"}],
                               installHint="install kubelogin\nfrom your package manager",
                               provideClusterInfo=True),
                     {"exec_plugins": ("aws", "/opt/bin/kubelogin")}, id="exec-allowlisted-absolute"),
        pytest.param(exec_user("aws", args=["eks", "get-token"], env=None), {"exec_plugins": ("aws",)},
                     id="exec-allowlisted-bare-name"),
        pytest.param(exec_user("anything"), {"exec_plugins": None}, id="exec-unjudged-for-readers"),
    ],
)
def test_acceptable_kubeconfigs_pass_unchanged(config: dict[str, Any], kwargs: dict[str, Any]) -> None:
    original = copy.deepcopy(config)
    checked = check_kubeconfig(config, **kwargs)
    assert checked == original and config == original
    # The same as YAML text.
    assert check_kubeconfig(yaml.safe_dump(config), **kwargs) == original


def test_single_context_fills_current_context() -> None:
    config = base()
    del config["current-context"]
    assert check_kubeconfig(config)["current-context"] == "c"
    assert "current-context" not in config  # the input is not modified


def test_error_is_the_same_whether_the_file_exists(tmp_path: Path) -> None:
    present = tmp_path / "token"
    present.write_text("file-secret")
    messages = set()
    for target in (str(present), str(tmp_path / "absent"), "/proc/self/environ", "relative/token"):
        with pytest.raises(errors.CredentialsInvalid) as info:
            check_kubeconfig(with_user(tokenFile=target))
        messages.add(str(info.value))
    assert len(messages) == 1
    assert "file-secret" not in messages.pop()


def test_subject_names_the_cluster() -> None:
    with pytest.raises(errors.CredentialsInvalid, match=r"^credentials of cluster 'c1' refused: "):
        check_kubeconfig(with_user(tokenFile="/x"), subject="credentials of cluster 'c1'")


def test_canonical_form_and_fingerprint() -> None:
    as_dict = base()
    as_text = "# a comment\n" + yaml.safe_dump(base(), sort_keys=False)
    a, b = check_kubeconfig(as_dict), check_kubeconfig(as_text)
    assert canonical_bytes(a) == canonical_bytes(b) and fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 16 and int(fingerprint(a), 16) >= 0
    other = check_kubeconfig(with_user(token="other-token"))
    assert fingerprint(other) != fingerprint(a)
    assert b"good-token" not in fingerprint(a).encode()
    # Shared (aliased) objects are written out in full: no anchors reach kubectl.
    aliased = "users:\n- &u {name: u, user: {token: t}}\n- *u\n" + yaml.safe_dump(
        {k: v for k, v in base().items() if k != "users"})
    text = canonical_bytes(check_kubeconfig(aliased)).decode()
    assert "&" not in text and "*" not in text and text.count("token: t") == 2


# ---------------------------------------------------------------------------------------------
# Deep nesting in YAML text is refused in linear time (the loader's scanner is quadratic in it).
# ---------------------------------------------------------------------------------------------

LEVELS = 10_000
KUBECONFIG_TEXT = yaml.safe_dump(base(), sort_keys=False)


def refusal_seconds(text: str) -> tuple[float, str]:
    """The fastest of three refusals of ``text`` and its message."""
    best = float("inf")
    message = ""
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(errors.CredentialsInvalid) as info:
            check_kubeconfig(text)
        best = min(best, time.perf_counter() - started)
        message = info.value.message
    return best, message


def deep(preferences: str) -> str:
    """A valid kubeconfig text followed by ``preferences`` (YAML text)."""
    return KUBECONFIG_TEXT + "preferences:" + preferences + "\n"


OPEN, CLOSE = "[" * LEVELS, "]" * LEVELS
DEEP_TEXTS = [
    pytest.param(deep("\n  deep: " + OPEN + CLOSE), id="flow-sequences"),
    pytest.param(deep(" {deep: " + "{a: " * LEVELS + "1" + "}" * LEVELS + "}"), id="flow-mappings"),
    pytest.param(deep("\n  deep: " + "[&a " * LEVELS + CLOSE), id="flow-with-anchors"),
    pytest.param(KUBECONFIG_TEXT + "--- " + OPEN + CLOSE + "\n", id="flow-after-document-start"),
    pytest.param(deep("\n  deep:\n  " + "- " * LEVELS + "x"), id="block-sequences-compact"),
    pytest.param(deep("\n  deep:\n  " + "? " * LEVELS + "x"), id="block-keys-compact"),
    # 10 000 indented levels would be 50 MB (refused by size); as deep as 512 KiB allows.
    pytest.param("".join(" " * i + "a:\n" for i in range(1_000)), id="block-mappings-indented"),
    pytest.param("a:\r" + "".join(" " * i + "a:\r" for i in range(1, 400)), id="block-cr-line-breaks"),
]


@pytest.mark.parametrize("text", DEEP_TEXTS)
def test_deep_nesting_is_refused_in_well_under_100_ms(text: str) -> None:
    seconds, message = refusal_seconds(text)
    assert "YAML does not parse" in message and ("nested deeper" in message or "indented deeper" in message)
    assert seconds < 0.05, f"{seconds * 1000:.1f} ms"


@pytest.mark.parametrize(
    "text",
    [
        # A quote inside a plain scalar looks like the start of a quoted one to the pre-scan.
        pytest.param(deep("\n  deep: [a 'x " + OPEN + CLOSE + "]"), id="quote-inside-a-plain-scalar"),
        pytest.param(deep("\n  deep: [a" + OPEN + CLOSE + "]"), id="brackets-right-after-a-plain-scalar"),
    ],
)
def test_the_loader_refuses_what_the_text_pre_scan_misses(text: str) -> None:
    kubeconfig_policy._prescan(text)  # passes the approximate pre-scan...
    seconds, message = refusal_seconds(text)  # ...and is refused by the loader as it reads it
    assert f"nested deeper than {MAX_DEPTH} levels" in message
    assert seconds < 0.05, f"{seconds * 1000:.1f} ms"


def nested_extension(levels: int) -> dict[str, Any]:
    """base() whose deepest node (an empty mapping) is at depth 3 + levels."""
    return {**base(), "extensions": [{"name": "e", "extension": nested_dict(levels)}]}


@pytest.mark.parametrize("flow", [False, True], ids=["block", "flow"])
def test_nesting_up_to_the_bound_is_accepted_as_text(flow: bool) -> None:
    at_bound = nested_extension(MAX_DEPTH - 3)
    assert check_kubeconfig(yaml.safe_dump(at_bound, default_flow_style=flow)) == at_bound
    beyond = yaml.safe_dump(nested_extension(MAX_DEPTH - 2), default_flow_style=flow)
    with pytest.raises(errors.CredentialsInvalid, match="nested deeper"):
        check_kubeconfig(beyond)


HOSTILE_SCALARS = ["[", "{", "]", "}", "'", '"', "#", ": ", ", ", " #", "[[", "{{", "\\", "- ", "? ",
                   "|", ">"]


@pytest.mark.parametrize("seed", range(40))
def test_the_pre_scan_accepts_strings_full_of_yaml_indicators(seed: int) -> None:
    """Tokens, passwords, names and extensions made of brackets, quotes and comment signs (as
    yaml.safe_dump writes them, block and flow style) are data, not nesting."""
    rng = random.Random(seed)

    def text(length: int, lines: bool = False) -> str:
        pieces = HOSTILE_SCALARS + ["a", "b", "1"] + (["\n", "\n  "] if lines else [])
        return "".join(rng.choice(pieces) for _ in range(length))

    config = base()
    config["users"][0]["user"] = {"username": text(60), "password": text(200)}
    config["clusters"][0]["cluster"]["extensions"] = [  # opaque: may hold line breaks
        {"name": text(20), "extension": {text(10, True): [text(30, True), {text(5): text(40, True)}] * 5}}
    ]
    config["contexts"][0]["context"]["namespace"] = text(30)
    for flow in (False, True, None):
        dumped = yaml.safe_dump(config, default_flow_style=flow, width=rng.choice([40, 80, 10_000]))
        assert check_kubeconfig(dumped) == config


def test_a_token_of_brackets_is_data() -> None:
    config = with_user(token="a" + "[" * 200 + "{" * 200)
    for flow in (False, True):
        assert check_kubeconfig(yaml.safe_dump(config, default_flow_style=flow)) == config


# ---------------------------------------------------------------------------------------------
# Settings: KDUFLOW_EXEC_PLUGINS and KDUFLOW_ALLOW_KUBECONFIG_PROXY take effect.
# ---------------------------------------------------------------------------------------------


def settings_from_env(tmp_path: Path, tools: HelmTools, **variables: str) -> Settings:
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "KDUFLOW_HELM": str(tools.helm),
        "KDUFLOW_KUBECTL": str(tools.kubectl),
        "KDUFLOW_STATE_DIR": str(tmp_path / f"state-{uuid.uuid4().hex[:6]}"),
        # The test kubeconfigs name servers in 10.0.0.0/8; the sandbox runs on loopback.
        "KDUFLOW_ALLOW_PRIVATE_NETWORKS": ",".join((*sandbox_support.LOOPBACK_NETWORKS, "10.0.0.0/8")),
        **variables,
    }
    return Settings.from_env(environ)


async def test_exec_plugins_setting_takes_effect(tmp_path: Path, store: Store) -> None:
    tools = helm_tools("helm4")
    config = exec_user("/opt/bin/kubelogin", args=["get-token"])
    strict = ClusterEnvs(settings_from_env(tmp_path, tools), store)
    with pytest.raises(ApplicationError) as err:
        await strict.store_credentials("c-exec", config)
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    assert "users[0].user.exec.command" in str(err.value)
    assert await store.find_one("k8sclusters", {"_id": "c-exec"}) is None

    allowing = ClusterEnvs(settings_from_env(tmp_path, tools, KDUFLOW_EXEC_PLUGINS="aws,/opt/bin/kubelogin"),
                           store)
    assert allowing.exec_plugins == ("aws", "/opt/bin/kubelogin")
    assert await allowing.store_credentials("c-exec", config) == "created"
    env = await allowing.get("c-exec")
    assert yaml.safe_load(env.kubeconfig.read_text())["users"][0]["user"]["exec"]["args"] == ["get-token"]
    kuberc = yaml.safe_load(Path(env.env["KUBERC"]).read_text())
    assert kuberc["credentialPluginPolicy"] == "Allowlist"
    assert kuberc["credentialPluginAllowlist"] == [{"name": "aws"}, {"name": "/opt/bin/kubelogin"}]
    # The strict worker refuses the stored document on use, before helm/kubectl could run it.
    with pytest.raises(ApplicationError) as err:
        await strict.get("c-exec")
    assert err.value.type == "CredentialsInvalid"
    assert not (strict.clusters_dir / "c-exec").exists()


async def test_kubeconfig_proxy_setting_takes_effect(tmp_path: Path, store: Store) -> None:
    tools = helm_tools("helm4")
    config = with_cluster(**{"proxy-url": "http://proxy.example:3128"})
    strict = ClusterEnvs(settings_from_env(tmp_path, tools, KDUFLOW_ALLOW_KUBECONFIG_PROXY="false"), store)
    with pytest.raises(ApplicationError) as err:
        await strict.store_credentials("c-proxy", config)
    assert err.value.type == "CredentialsInvalid" and "clusters[0].cluster.proxy-url" in str(err.value)
    allowing = ClusterEnvs(settings_from_env(tmp_path, tools, KDUFLOW_ALLOW_KUBECONFIG_PROXY="true"), store)
    assert allowing.allow_proxy is True
    assert await allowing.store_credentials("c-proxy", config) == "created"
    env = await allowing.get("c-proxy")
    assert yaml.safe_load(env.kubeconfig.read_text())["clusters"][0]["cluster"]["proxy-url"] == (
        "http://proxy.example:3128"
    )


async def test_bare_name_plugins_are_on_the_cluster_path(tmp_path: Path, store: Store,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "plugins-bin"
    bindir.mkdir()
    plugin = bindir / "kduflow-test-auth"
    plugin.write_text("#!/bin/sh\nexit 0\n")
    plugin.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    tools = helm_tools("helm4")
    settings = Settings(helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path / "w",
                        exec_plugins=("kduflow-test-auth", "/abs/other-plugin", "not-installed-anywhere"),
                        private_networks=("10.0.0.0/8",))
    envs = ClusterEnvs(settings, store)
    await envs.store_credentials("c-path", base())
    env = await envs.get("c-path")
    assert env.env["PATH"].split(":") == [str(tools.helm.parent), str(bindir), "/usr/bin", "/bin"]


# ---------------------------------------------------------------------------------------------
# The real kubectl/helm against the sandbox: an allowlisted plugin runs, others never do.
# ---------------------------------------------------------------------------------------------

PLUGIN_SCRIPT = """#!/bin/sh
# Test exec credential plugin: records that it ran, then hands out the token it was given.
touch "$2"
printf '{"apiVersion":"client.authentication.k8s.io/v1",'
printf '"kind":"ExecCredential","status":{"token":"%s"}}\\n' "$SANDBOX_TOKEN"
"""


def write_plugin(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    plugin = directory / name
    plugin.write_text(PLUGIN_SCRIPT)
    plugin.chmod(stat.S_IRWXU)
    return plugin


def plugin_kubeconfig(cluster: SandboxCluster, plugin: str, marker: Path) -> dict[str, Any]:
    config = yaml.safe_load(cluster.kubeconfig())
    config["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": plugin,
            "args": ["--marker", str(marker)],
            "env": [{"name": "SANDBOX_TOKEN", "value": cluster.token}],
            "interactiveMode": "Never",
        }
    }
    return config


def activities_for(tools: HelmTools, store: Store, state_dir: Path,
                   exec_plugins: tuple[str, ...] = ()) -> ClusterActivities:
    settings = Settings(helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=state_dir,
                        exec_plugins=exec_plugins, private_networks=sandbox_support.LOOPBACK_NETWORKS)
    return ClusterActivities(settings, ClusterEnvs(settings, store), store)


async def test_allowlisted_exec_plugin_runs_through_kubectl_and_helm(
    tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    plugin = write_plugin(tmp_path / "bin", "kduflow-sandbox-auth")
    marker = tmp_path / "plugin-ran"
    acts = activities_for(tools, store, tmp_path / "w", exec_plugins=(str(plugin),))
    cluster = str(uuid.uuid4())
    await acts.store_credentials(
        StoreCredentialsInput(cluster, yaml.safe_dump(plugin_kubeconfig(sandbox, str(plugin), marker)))
    )
    assert not marker.exists()  # storing runs nothing
    version = await acts.verify(ClusterRef(cluster))
    assert version.server_version.startswith("v1.")
    assert marker.exists()  # kubectl authenticated through the plugin, with its args and env
    marker.unlink()
    env = await acts.envs.get(cluster)
    listed = subprocess.run([str(tools.helm), "list", "-A", "-o", "json"], env=env.env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert marker.exists()


async def test_disallowed_exec_plugin_never_runs(
    tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    allowed = write_plugin(tmp_path / "bin", "allowed-auth")
    hostile = write_plugin(tmp_path / "bin", "hostile-auth")
    marker = tmp_path / "hostile-ran"
    acts = activities_for(tools, store, tmp_path / "w", exec_plugins=(str(allowed),))
    config = plugin_kubeconfig(sandbox, str(hostile), marker)

    # Through the activity: refused before anything is stored.
    cluster = str(uuid.uuid4())
    with pytest.raises(ApplicationError) as err:
        await acts.store_credentials(StoreCredentialsInput(cluster, yaml.safe_dump(config)))
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    assert "users[0].user.exec.command" in str(err.value) and str(hostile) not in str(err.value)
    assert await store.find_one("k8sclusters", {"_id": cluster}) is None

    # Written straight into the store: refused on use, before kubectl runs.
    await store.insert_one("k8sclusters", {"_id": cluster, "credentials": config})
    with pytest.raises(ApplicationError) as err:
        await acts.verify(ClusterRef(cluster))
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable

    # A shell is no better.
    shell = str(uuid.uuid4())
    config["users"][0]["user"]["exec"].update(command="/bin/sh", args=["-c", f"touch {marker}"])
    await store.insert_one("k8sclusters", {"_id": shell, "credentials": yaml.safe_dump(config)})
    with pytest.raises(ApplicationError) as err:
        await acts.verify(ClusterRef(shell))
    assert err.value.type == "CredentialsInvalid"
    assert not marker.exists()


def run_kubectl(kubectl: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(kubectl), *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("allowlist", ["none", "other-plugin"])
async def test_kuberc_makes_kubectl_refuse_other_plugins(
    store: Store, tmp_path: Path, sandbox: SandboxCluster, allowlist: str
) -> None:
    """The second fence: even a kubeconfig that bypassed the policy cannot make kubectl 1.37 run a
    plugin outside the allowlist, because the cluster env's kuberc says so."""
    tools = helm_tools("helm4")
    allowed = write_plugin(tmp_path / "bin", "allowed-auth")
    hostile = write_plugin(tmp_path / "bin", "hostile-auth")
    plugins = (str(allowed),) if allowlist == "other-plugin" else ()
    envs = ClusterEnvs(Settings(helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path / "w",
                                exec_plugins=plugins, private_networks=sandbox_support.LOOPBACK_NETWORKS),
                       store)
    await envs.store_credentials("c-kuberc", sandbox.kubeconfig())
    env = await envs.get("c-kuberc")
    assert Path(env.env["KUBERC"]).read_bytes() == kuberc_bytes(plugins)

    # kubectl accepts the file as it is (no decoding warning, no preference error).
    accepted = run_kubectl(tools.kubectl, env.env, "version", "--client", "-v=6")
    assert accepted.returncode == 0, accepted.stderr
    assert f"kuberc: using entry 1 (kubectl.config.k8s.io/v1beta1) in {env.env['KUBERC']}" in accepted.stderr
    assert "strict decoding error" not in accepted.stderr
    assert "error occurred while applying preferences" not in accepted.stderr

    # A kubeconfig placed beside the policy, naming a plugin that is not allowlisted.
    marker = tmp_path / "hostile-ran"
    bypass = tmp_path / "bypass-kubeconfig"
    bypass.write_text(yaml.safe_dump(plugin_kubeconfig(sandbox, str(hostile), marker)))
    refused = run_kubectl(tools.kubectl, {**env.env, "KUBECONFIG": str(bypass)}, "get", "namespaces",
                          "--request-timeout=10s")
    assert refused.returncode != 0
    expected = "not permitted by the credential plugin allowlist" if plugins else 'policy set to "DenyAll"'
    assert expected in refused.stderr
    assert not marker.exists()

    if plugins:
        # The allowlisted one is run by the same kubectl with the same kuberc.
        ok_marker = tmp_path / "allowed-ran"
        bypass.write_text(yaml.safe_dump(plugin_kubeconfig(sandbox, str(allowed), ok_marker)))
        ran = run_kubectl(tools.kubectl, {**env.env, "KUBECONFIG": str(bypass)}, "get", "namespaces",
                          "--request-timeout=10s")
        assert ran.returncode == 0, ran.stderr
        assert ok_marker.exists()


def test_kuberc_content() -> None:
    deny = yaml.safe_load(kuberc_bytes(()))
    assert deny == {"apiVersion": "kubectl.config.k8s.io/v1beta1", "kind": "Preference",
                    "credentialPluginPolicy": "DenyAll"}
    allow = yaml.safe_load(kuberc_bytes(("aws", "/opt/bin/kubelogin")))
    assert allow["credentialPluginPolicy"] == "Allowlist"
    assert allow["credentialPluginAllowlist"] == [{"name": "aws"}, {"name": "/opt/bin/kubelogin"}]

