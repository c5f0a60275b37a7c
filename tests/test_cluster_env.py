"""ClusterEnvs: per-cluster directories materialised from k8sclusters, checked with real helm/kubectl."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.exceptions import ApplicationError

from activities.cluster_env import HASH_FILE, ClusterEnv, ClusterEnvs
from activities.secretbox import ENVELOPE_KEY, SecretBox
from activities.store import Store
from kduflow.config import Settings
from tests.conftest import HelmTools, helm_tools
from tests.support.sandbox import LOOPBACK_NETWORKS

CLUSTER = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"


def kubeconfig(server: str = "https://10.20.30.40:6443", namespace: str = "kdu-ns") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "osm-cluster",
                      "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "osm-admin", "user": {"token": "sekret-token"}}],
        "contexts": [{"name": "osm", "context": {"cluster": "osm-cluster", "user": "osm-admin",
                                                 "namespace": namespace}}],
        "current-context": "osm",
    }


def key_setting(key_id: str = "k1", key: bytes | None = None) -> str:
    return f"{key_id}:{base64.b64encode(key or os.urandom(32)).decode()}"


def make_settings(tmp_path: Path, name: str = "worker1", dialect: str = "helm3") -> Settings:
    tools = helm_tools(dialect)
    # The test kubeconfigs name servers in 10.0.0.0/8; the sandbox runs on loopback.
    return Settings(helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path / name,
                    private_networks=(*LOOPBACK_NETWORKS, "10.0.0.0/8"))


class HookRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[ClusterEnv, dict]] = []
        self.fail_next = False

    async def __call__(self, env: ClusterEnv, doc: dict) -> None:
        await asyncio.sleep(0)  # yield, so concurrent callers would interleave here if unlocked
        self.calls.append((env, doc))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("repositories could not be written")
        env.repositories_file.write_text("apiVersion: v1\nrepositories: []\n")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_fresh_materialisation_layout_modes_and_env(tmp_path: Path, store: Store,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/inherited/home")
    monkeypatch.setenv("KUBECONFIG", "/inherited/.kube/config")
    settings = make_settings(tmp_path)
    hook = HookRecorder()
    envs = ClusterEnvs(settings, store, on_materialise=hook)
    await store.insert_one("k8sclusters", {"_id": CLUSTER, "name": "c", "credentials": kubeconfig()})

    env = await envs.get(CLUSTER)

    root = settings.state_dir / "clusters" / CLUSTER
    assert env.cluster_uuid == CLUSTER and env.root == root
    assert env.kubeconfig == root / ".kube" / "config"
    assert yaml.safe_load(env.kubeconfig.read_text()) == kubeconfig()
    assert mode(env.kubeconfig) == 0o600 and mode(root / HASH_FILE) == 0o600
    for directory in (settings.state_dir / "clusters", root, root / ".kube", root / ".config/helm",
                      root / ".cache/helm", root / ".local/share/helm"):
        assert directory.is_dir() and mode(directory) == 0o700, directory
    tools_dir = str(Path(settings.helm).parent)
    assert env.env == {
        "HOME": str(root),
        "KUBECONFIG": str(root / ".kube" / "config"),
        "HELM_CONFIG_HOME": str(root / ".config" / "helm"),
        "HELM_CACHE_HOME": str(root / ".cache" / "helm"),
        "HELM_DATA_HOME": str(root / ".local" / "share" / "helm"),
        "NO_COLOR": "1",
        "PATH": f"{tools_dir}:/usr/bin:/bin",
        "KUBERC": str(root / ".kube" / "kuberc"),
    }
    assert mode(root / ".kube" / "kuberc") == 0o600
    # No exec plugin is allowlisted: kubectl's own plugin policy denies them all.
    assert yaml.safe_load((root / ".kube" / "kuberc").read_text())["credentialPluginPolicy"] == "DenyAll"
    assert "/inherited" not in json.dumps(env.env)
    assert env.repositories_file == root / ".config" / "helm" / "repositories.yaml"
    # The hook ran once, after the directory existed, with the store document.
    assert len(hook.calls) == 1 and hook.calls[0][1]["name"] == "c"
    assert env.repositories_file.exists()


async def test_modes_do_not_depend_on_the_umask(tmp_path: Path, store: Store) -> None:
    # Files are created with their final mode (os.open(..., 0o600)), not chmod-ed afterwards, and
    # directories are pinned to 0700: a permissive umask must not widen either.
    envs = ClusterEnvs(make_settings(tmp_path), store)
    await envs.store_credentials(CLUSTER, kubeconfig())
    previous = os.umask(0)
    try:
        env = await envs.get(CLUSTER)
    finally:
        os.umask(previous)
    assert mode(env.kubeconfig) == 0o600 and mode(env.root / HASH_FILE) == 0o600
    assert mode(env.root) == 0o700 and mode(env.helm_cache_home) == 0o700


async def test_unchanged_credentials_reuse_the_directory(tmp_path: Path, store: Store) -> None:
    hook = HookRecorder()
    envs = ClusterEnvs(make_settings(tmp_path), store, on_materialise=hook)
    await store.insert_one("k8sclusters", {"_id": CLUSTER, "credentials": kubeconfig()})
    first = await envs.get(CLUSTER)
    inode = first.kubeconfig.stat().st_ino
    marker = first.helm_cache_home / "repository" / "index.yaml"
    marker.parent.mkdir()
    marker.write_text("cached")
    first.env["EXTRA"] = "caller's own"

    second = await envs.get(CLUSTER)
    assert second.env == {k: v for k, v in first.env.items() if k != "EXTRA"}
    assert second.kubeconfig.stat().st_ino == inode
    assert marker.read_text() == "cached"
    assert len(hook.calls) == 1
    # A new ClusterEnvs (a worker restart) trusts a directory whose hash and content match.
    restarted = ClusterEnvs(make_settings(tmp_path), store, on_materialise=hook)
    assert (await restarted.get(CLUSTER)).kubeconfig.stat().st_ino == inode
    assert len(hook.calls) == 1


async def test_changed_credentials_rebuild_from_scratch(tmp_path: Path, store: Store) -> None:
    hook = HookRecorder()
    envs = ClusterEnvs(make_settings(tmp_path), store, on_materialise=hook)
    await envs.store_credentials(CLUSTER, kubeconfig())
    first = await envs.get(CLUSTER)
    old_hash = (first.root / HASH_FILE).read_text()
    (first.helm_cache_home / "stale").write_text("old cluster's cache")

    await envs.store_credentials(CLUSTER, kubeconfig(server="https://10.99.99.99:6443"))
    second = await envs.get(CLUSTER)

    assert second.root == first.root
    assert yaml.safe_load(second.kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == \
        "https://10.99.99.99:6443"
    assert (second.root / HASH_FILE).read_text() != old_hash
    assert second.content_hash != first.content_hash
    assert not (second.helm_cache_home / "stale").exists()
    assert len(hook.calls) == 2
    # No staging or trash directories are left beside it.
    assert sorted(p.name for p in (tmp_path / "worker1" / "clusters").iterdir()) == [CLUSTER]


async def test_yaml_string_and_dict_credentials_are_equivalent(tmp_path: Path, store: Store) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store)
    await store.insert_one("k8sclusters", {"_id": "as-dict", "credentials": kubeconfig()})
    await store.insert_one("k8sclusters", {"_id": "as-yaml", "credentials": yaml.safe_dump(kubeconfig())})
    as_dict, as_yaml = await envs.get("as-dict"), await envs.get("as-yaml")
    assert as_dict.kubeconfig.read_bytes() == as_yaml.kubeconfig.read_bytes()
    assert as_dict.content_hash == as_yaml.content_hash


@pytest.mark.parametrize("leftover",
                         ["wrong-hash", "no-hash", "tampered-kubeconfig", "loose-modes", "symlink"])
async def test_leftovers_are_never_trusted(tmp_path: Path, store: Store, leftover: str) -> None:
    settings = make_settings(tmp_path)
    envs = ClusterEnvs(settings, store)
    await store.insert_one("k8sclusters", {"_id": CLUSTER, "credentials": kubeconfig()})
    good = await envs.get(CLUSTER)
    expected = good.kubeconfig.read_bytes()
    root = good.root
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep").write_text("not ours")
    if leftover == "wrong-hash":
        (root / HASH_FILE).write_text("0" * 64)
        (root / ".kube" / "config").write_text("garbage: [")
    elif leftover == "no-hash":
        (root / HASH_FILE).unlink()
    elif leftover == "tampered-kubeconfig":
        (root / ".kube" / "config").write_text(yaml.safe_dump(kubeconfig(server="https://evil:6443")))
    elif leftover == "loose-modes":
        os.chmod(root, 0o755)
    else:
        shutil.rmtree(root)
        root.symlink_to(outside, target_is_directory=True)
    if not root.is_symlink():
        (root / "junk").write_text("left by someone")

    fresh = ClusterEnvs(settings, store)  # a new process: no in-memory cache
    env = await fresh.get(CLUSTER)
    assert not env.root.is_symlink() and mode(env.root) == 0o700
    assert env.kubeconfig.read_bytes() == expected
    assert not (env.root / "junk").exists()
    assert (outside / "keep").read_text() == "not ours"

    # The in-memory cache re-checks the disk too.
    (root / ".kube" / "config").write_text("garbage")
    assert (await fresh.get(CLUSTER)).kubeconfig.read_bytes() == expected


async def test_two_workers_build_equivalent_environments(tmp_path: Path, store: Store) -> None:
    worker1 = ClusterEnvs(make_settings(tmp_path, "worker1"), store)
    worker2 = ClusterEnvs(make_settings(tmp_path, "worker2"), store)
    await worker1.store_credentials(CLUSTER, kubeconfig())
    env1, env2 = await asyncio.gather(worker1.get(CLUSTER), worker2.get(CLUSTER))
    assert env1.root != env2.root
    assert env1.kubeconfig.read_bytes() == env2.kubeconfig.read_bytes()
    assert env1.content_hash == env2.content_hash
    relative = {key: value.replace(str(env1.root), "<root>") for key, value in env1.env.items()}
    assert relative == {key: value.replace(str(env2.root), "<root>") for key, value in env2.env.items()}


async def test_encrypted_credentials(tmp_path: Path, store: Store) -> None:
    key = os.urandom(32)
    box = SecretBox.from_setting(key_setting("k1", key))
    envs = ClusterEnvs(make_settings(tmp_path), store, box)
    await envs.store_credentials(CLUSTER, kubeconfig())
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc is not None and set(doc["credentials"]) == {ENVELOPE_KEY}
    assert "sekret-token" not in json.dumps(doc) and "10.20.30.40" not in json.dumps(doc)
    env = await envs.get(CLUSTER)
    assert yaml.safe_load(env.kubeconfig.read_text()) == kubeconfig()

    # Rotation: a worker whose first key is new still reads the old envelope.
    rotated = ClusterEnvs(make_settings(tmp_path, "w2"), store,
                          SecretBox.from_setting(f"{key_setting('k2')},{key_setting('k1', key)}"))
    assert (await rotated.get(CLUSTER)).content_hash == env.content_hash

    no_key = ClusterEnvs(make_settings(tmp_path, "w3"), store)
    with pytest.raises(ApplicationError) as err:
        await no_key.get(CLUSTER)
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    assert "KDUFLOW_SECRET_KEY" in str(err.value)

    wrong_key = ClusterEnvs(make_settings(tmp_path, "w4"), store, SecretBox.from_setting(key_setting("k1")))
    with pytest.raises(ApplicationError, match="'k1'") as err:
        await wrong_key.get(CLUSTER)
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable

    # An envelope copied into another cluster's document is bound to the first one.
    await store.insert_one("k8sclusters", {"_id": "other", "credentials": doc["credentials"]})
    with pytest.raises(ApplicationError, match="another document") as err:
        await envs.get("other")
    assert err.value.type == "CredentialsInvalid"


@pytest.mark.parametrize("bad_id", ["../etc", "a/b", ".", "..", "", "x" * 64, ".hidden", "a\x00b", "a b", 42])
async def test_path_like_cluster_ids_are_rejected(tmp_path: Path, store: Store, bad_id: Any) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store)
    for call in (envs.get, envs.forget, lambda cid: envs.store_credentials(cid, kubeconfig())):
        with pytest.raises(ApplicationError) as err:
            await call(bad_id)
        assert err.value.type == "InvalidInput" and err.value.non_retryable
        assert "cluster_uuid" in str(err.value)
    assert not (tmp_path / "worker1" / "clusters").exists()
    assert await store.find("k8sclusters", {}) == []


async def test_missing_cluster_or_credentials(tmp_path: Path, store: Store) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store)
    await store.insert_one("k8sclusters", {"_id": "no-creds", "name": "x"})
    await store.insert_one("k8sclusters", {"_id": "empty-creds", "credentials": {}})
    for cluster in ("absent", "no-creds", "empty-creds"):
        with pytest.raises(ApplicationError) as err:
            await envs.get(cluster)
        assert err.value.type == "ClusterNotFound" and err.value.non_retryable
        assert cluster in str(err.value)


@pytest.mark.parametrize(
    "credentials, message",
    [
        ("clusters: [", "YAML does not parse at line"),
        (["a"], "expected a mapping, got list"),
        ("just a string", "expected a mapping, got str"),
        ({**kubeconfig(), "users": []}, "'users' must be a non-empty list"),
        ({**kubeconfig(), "clusters": [{"cluster": {}}]}, "every entry of 'clusters' needs a 'name'"),
        ({**kubeconfig(), "current-context": "nope"}, "current-context is not among"),
        ({**{k: v for k, v in kubeconfig().items() if k != "current-context"},
          "contexts": [{"name": "a", "context": {}}, {"name": "b", "context": {}}]},
         "no 'current-context' and more than one"),
    ],
)
async def test_malformed_kubeconfigs(tmp_path: Path, store: Store, credentials: Any, message: str) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store)
    await store.insert_one("k8sclusters", {"_id": "bad", "credentials": credentials})
    with pytest.raises(ApplicationError, match=message) as err:
        await envs.get("bad")
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    assert "sekret-token" not in str(err.value)
    with pytest.raises(ApplicationError, match=message):
        await envs.store_credentials("bad", credentials)


async def test_single_context_without_current_context_is_selected(tmp_path: Path, store: Store) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store)
    config = {k: v for k, v in kubeconfig().items() if k != "current-context"}
    await store.insert_one("k8sclusters", {"_id": CLUSTER, "credentials": config})
    env = await envs.get(CLUSTER)
    assert yaml.safe_load(env.kubeconfig.read_text())["current-context"] == "osm"


async def test_concurrent_gets_materialise_once(tmp_path: Path, store: Store) -> None:
    hook = HookRecorder()
    envs = ClusterEnvs(make_settings(tmp_path), store, on_materialise=hook)
    await envs.store_credentials(CLUSTER, kubeconfig())
    results = await asyncio.gather(*(envs.get(CLUSTER) for _ in range(10)))
    assert len(hook.calls) == 1
    assert len({env.content_hash for env in results}) == 1
    assert sorted(p.name for p in (tmp_path / "worker1" / "clusters").iterdir()) == [CLUSTER]


async def test_hook_failure_leaves_the_directory_stale(tmp_path: Path, store: Store) -> None:
    hook = HookRecorder()
    hook.fail_next = True
    envs = ClusterEnvs(make_settings(tmp_path), store, on_materialise=hook)
    await envs.store_credentials(CLUSTER, kubeconfig())
    with pytest.raises(RuntimeError, match="repositories"):
        await envs.get(CLUSTER)
    env = await envs.get(CLUSTER)
    assert len(hook.calls) == 2 and env.repositories_file.exists()


async def test_forget_removes_the_directory(tmp_path: Path, store: Store) -> None:
    hook = HookRecorder()
    envs = ClusterEnvs(make_settings(tmp_path), store, on_materialise=hook)
    await envs.store_credentials(CLUSTER, kubeconfig())
    env = await envs.get(CLUSTER)
    await envs.forget(CLUSTER)
    assert not env.root.exists()
    await envs.forget(CLUSTER)  # idempotent
    assert (await envs.get(CLUSTER)).kubeconfig.exists()
    assert len(hook.calls) == 2


async def test_store_credentials_upserts_without_touching_other_fields(tmp_path: Path, store: Store) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store)
    await store.insert_one("k8sclusters",
                           {"_id": CLUSTER, "name": "c", "_admin": {"operationalState": "ENABLED"}})
    await envs.store_credentials(CLUSTER, yaml.safe_dump(kubeconfig()))
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc is not None and doc["name"] == "c" and doc["_admin"] == {"operationalState": "ENABLED"}
    assert doc["credentials"] == yaml.safe_dump(kubeconfig())  # stored as given when no key is set


async def test_real_helm_and_kubectl_use_the_private_environment(tmp_path: Path, store: Store,
                                                                 tools: HelmTools) -> None:
    settings = make_settings(tmp_path, dialect=tools.dialect)
    envs = ClusterEnvs(settings, store)
    await envs.store_credentials(CLUSTER, kubeconfig())
    env = await envs.get(CLUSTER)

    helm_env = subprocess.run([str(tools.helm), "env"], env=env.env, capture_output=True, text=True,
                              timeout=30, check=True).stdout
    values = dict(line.split("=", 1) for line in helm_env.splitlines() if "=" in line)
    values = {key: value.strip('"') for key, value in values.items()}
    assert values["HELM_CONFIG_HOME"] == str(env.helm_config_home)
    assert values["HELM_CACHE_HOME"] == str(env.helm_cache_home)
    assert values["HELM_DATA_HOME"] == str(env.helm_data_home)
    assert values["HELM_REPOSITORY_CONFIG"] == str(env.repositories_file)
    assert values["HELM_PLUGINS"] == str(env.helm_data_home / "plugins")
    # helm read the materialised kubeconfig: the namespace comes from its current context.
    assert values["HELM_NAMESPACE"] == "kdu-ns"

    # helm reads repositories from the cluster's own config home (where the repos hook writes).
    env.repositories_file.write_text(yaml.safe_dump({"apiVersion": "", "repositories": [
        {"name": "osm-stable", "url": "http://127.0.0.1:1/charts"}]}))
    repos = subprocess.run([str(tools.helm), "repo", "list", "-o", "json"], env=env.env, capture_output=True,
                           text=True, timeout=30, check=True).stdout
    assert json.loads(repos) == [{"name": "osm-stable", "url": "http://127.0.0.1:1/charts"}]

    view = subprocess.run([str(tools.kubectl), "config", "view", "-o", "json"], env=env.env,
                          capture_output=True, text=True, timeout=30, check=True).stdout
    config = json.loads(view)
    assert config["current-context"] == "osm"
    assert config["clusters"][0]["cluster"]["server"] == "https://10.20.30.40:6443"
    assert config["contexts"][0]["context"]["namespace"] == "kdu-ns"
    assert "sekret-token" not in view  # kubectl redacts the token itself


# ---------------------------------------------------------------------------------------------
# The kubeconfig policy on store and on use; registration that never silently replaces.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "credentials, field",
    [
        ({**kubeconfig(), "users": [{"name": "osm-admin", "user": {"tokenFile": "/proc/self/environ"}}]},
         "users[0].user.tokenFile"),
        ({**kubeconfig(), "users": [{"name": "osm-admin", "user": {"exec": {"command": "/bin/sh",
                                                                        "args": ["-c", "id"]}}}]},
         "users[0].user.exec.command"),
        ("[" * 10_000 + "]" * 10_000, ""),
        ({**kubeconfig(), "users": [{"name": "osm-admin", "user": {"token": "sekret-token\r\nX: y"}}]},
         "users[0].user.token"),
    ],
    ids=["tokenFile", "exec-shell", "deep-nesting", "token-crlf"],
)
async def test_hostile_documents_are_refused_on_use(tmp_path: Path, store: Store, credentials: Any,
                                                    field: str) -> None:
    """A document written straight into the store never reaches helm/kubectl: get() refuses it
    non-retryably (no RecursionError or ValueError retried as an unknown error)."""
    envs = ClusterEnvs(make_settings(tmp_path), store)
    await store.insert_one("k8sclusters", {"_id": CLUSTER, "credentials": credentials})
    with pytest.raises(ApplicationError) as err:
        await envs.get(CLUSTER)
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    assert field in str(err.value) and "sekret-token" not in str(err.value)
    assert not (tmp_path / "worker1" / "clusters" / CLUSTER).exists()
    with pytest.raises(ApplicationError) as err:
        await envs.store_credentials("other", credentials)
    assert err.value.type == "CredentialsInvalid"
    assert await store.find_one("k8sclusters", {"_id": "other"}) is None


async def test_store_credentials_outcomes(tmp_path: Path, store: Store) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store)
    assert await envs.store_credentials(CLUSTER, kubeconfig(), replace=False) == "created"
    stored = (await store.find_one("k8sclusters", {"_id": CLUSTER}) or {})["credentials"]
    # The same content, as YAML text this time: a no-op even without replace.
    assert await envs.store_credentials(CLUSTER, yaml.safe_dump(kubeconfig()), replace=False) == "unchanged"
    assert (await store.find_one("k8sclusters", {"_id": CLUSTER}) or {})["credentials"] == stored
    # Different content without replace: ClusterExists, nothing written.
    with pytest.raises(ApplicationError) as err:
        await envs.store_credentials(CLUSTER, kubeconfig(server="https://10.99.99.99:6443"), replace=False)
    assert err.value.type == "ClusterExists" and err.value.non_retryable and CLUSTER in str(err.value)
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc is not None and doc["credentials"] == stored and "_admin" not in doc
    # With replace: written and recorded with fingerprints only.
    outcome = await envs.store_credentials(CLUSTER, kubeconfig(server="https://10.99.99.99:6443"),
                                           replace=True, workflow_id="wf-1")
    assert outcome == "replaced"
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc is not None
    assert doc["credentials"]["clusters"][0]["cluster"]["server"] == "https://10.99.99.99:6443"
    record = doc["_admin"]["kduflow"]["credentials_replaced"]
    assert record["workflow_id"] == "wf-1" and isinstance(record["at"], int)
    assert len(record["previous_fingerprint"]) == 16 and len(record["fingerprint"]) == 16
    assert record["previous_fingerprint"] != record["fingerprint"]
    assert "sekret-token" not in json.dumps(doc["_admin"]) and "10.99" not in json.dumps(doc["_admin"])


async def test_store_credentials_compares_decrypted_content(tmp_path: Path, store: Store) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store, SecretBox.from_setting(key_setting()))
    assert await envs.store_credentials(CLUSTER, kubeconfig(), replace=False) == "created"
    envelope = (await store.find_one("k8sclusters", {"_id": CLUSTER}) or {})["credentials"]
    assert await envs.store_credentials(CLUSTER, kubeconfig(), replace=False) == "unchanged"
    assert (await store.find_one("k8sclusters", {"_id": CLUSTER}) or {})["credentials"] == envelope
    with pytest.raises(ApplicationError) as err:
        await envs.store_credentials(CLUSTER, kubeconfig(namespace="other"), replace=False)
    assert err.value.type == "ClusterExists"


async def test_unusable_stored_credentials_are_replaced_only_on_request(tmp_path: Path, store: Store) -> None:
    envs = ClusterEnvs(make_settings(tmp_path), store)
    hostile = {**kubeconfig(), "users": [{"name": "osm-admin", "user": {"tokenFile": "/etc/shadow"}}]}
    await store.insert_one("k8sclusters", {"_id": CLUSTER, "credentials": hostile})
    with pytest.raises(ApplicationError) as err:
        await envs.store_credentials(CLUSTER, kubeconfig(), replace=False)
    assert err.value.type == "ClusterExists"
    assert await envs.store_credentials(CLUSTER, kubeconfig(), replace=True) == "replaced"
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc is not None and doc["credentials"] == kubeconfig()
    assert doc["_admin"]["kduflow"]["credentials_replaced"]["previous_fingerprint"] == ""


async def test_store_credentials_refuses_a_concurrent_change(tmp_path: Path, store: Store,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The write is a compare-and-set: if another writer changed the credentials between the read
    and the write, nothing is overwritten and a retryable error makes the retry compare again."""
    envs = ClusterEnvs(make_settings(tmp_path), store)
    await envs.store_credentials(CLUSTER, kubeconfig())
    real_find_one = store.find_one

    async def find_then_race(collection: str, filter: dict) -> dict | None:
        doc = await real_find_one(collection, filter)
        await store.update_one("k8sclusters", {"_id": CLUSTER},
                               {"$set": {"credentials": kubeconfig(namespace="raced")}})
        return doc

    monkeypatch.setattr(store, "find_one", find_then_race)
    with pytest.raises(ApplicationError) as err:
        await envs.store_credentials(CLUSTER, kubeconfig(server="https://10.99.99.99:6443"), replace=True)
    assert err.value.type == "OperationInProgress" and not err.value.non_retryable
    monkeypatch.setattr(store, "find_one", real_find_one)
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc is not None and doc["credentials"] == kubeconfig(namespace="raced")


async def test_a_new_exec_allowlist_rebuilds_the_directory(tmp_path: Path, store: Store) -> None:
    settings = make_settings(tmp_path)
    await ClusterEnvs(settings, store).store_credentials(CLUSTER, kubeconfig())
    first = await ClusterEnvs(settings, store).get(CLUSTER)
    kuberc = Path(first.env["KUBERC"])
    assert yaml.safe_load(kuberc.read_text())["credentialPluginPolicy"] == "DenyAll"
    restarted = ClusterEnvs(dataclasses.replace(settings, exec_plugins=("aws",)), store)
    second = await restarted.get(CLUSTER)
    assert second.content_hash != first.content_hash
    assert yaml.safe_load(kuberc.read_text())["credentialPluginAllowlist"] == [{"name": "aws"}]
    # A tampered kuberc is never trusted either.
    kuberc.write_text("apiVersion: kubectl.config.k8s.io/v1beta1\nkind: Preference\n"
                      "credentialPluginPolicy: AllowAll\n")
    os.chmod(kuberc, 0o600)
    third = await ClusterEnvs(dataclasses.replace(settings, exec_plugins=("aws",)), store).get(CLUSTER)
    assert yaml.safe_load(Path(third.env["KUBERC"]).read_text())["credentialPluginPolicy"] == "Allowlist"
