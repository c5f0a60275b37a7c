"""activities/release_storage.py: decoding helm's release records read through the API."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from activities import errors
from activities.kubeapi import KubeApi
from activities.release_storage import (
    ReleaseCache,
    ReleaseStorage,
    StoredRelease,
    decode_release_data,
    mark_record_failed,
    parse_release,
)
from tests.support.status import FakeKube, Rev, release_json, release_secret

PASSWORD = "hunter2-very-secret"
MANIFEST = "---\n# Source: demo/templates/svc.yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: demo\n"


@pytest.fixture
def fake() -> Any:
    with FakeKube() as server:
        yield server


@pytest.mark.parametrize(
    ("gzipped", "driver", "helm4"),
    [
        pytest.param(True, "secret", False, id="secret-gzip-helm3"),
        pytest.param(True, "secret", True, id="secret-gzip-helm4"),
        pytest.param(False, "secret", False, id="secret-plain"),
        pytest.param(True, "configmap", False, id="configmap-gzip"),
    ],
)
def test_decode_and_parse(gzipped: bool, driver: str, helm4: bool) -> None:
    rev = Rev(3, "deployed", "Upgrade complete", MANIFEST, {"db": {"password": PASSWORD}}, "Visit http://x")
    record = release_secret("demo", "ns1", rev, gzipped=gzipped, helm4=helm4, driver=driver)
    doc = decode_release_data(record["data"]["release"], driver)
    assert doc["config"]["db"]["password"] == PASSWORD  # the raw record has it...
    rel = parse_release(doc)
    assert rel == StoredRelease(
        name="demo",
        namespace="ns1",
        version=3,
        status="deployed",
        description="Upgrade complete",
        chart_name="demo",
        chart_version="0.1.0",
        app_version="1.16.0",
        first_deployed="2026-11-25T20:00:03+00:00",
        last_deployed="2026-11-25T20:00:03+00:00",
        notes="Visit http://x",
        manifest=MANIFEST,
        apply_method="ssa" if helm4 else "",
    )
    assert rel.chart == "demo-0.1.0"
    assert PASSWORD not in repr(rel)  # ...the parsed one does not


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("!!!not base64", id="not-base64"),
        pytest.param(base64.b64encode(base64.b64encode(b"\x1f\x8bgarbage")).decode(), id="bad-gzip"),
        pytest.param(base64.b64encode(base64.b64encode(b"[1, 2]")).decode(), id="not-an-object"),
        pytest.param(base64.b64encode(base64.b64encode(b"{nope")).decode(), id="bad-json"),
    ],
)
def test_corrupt_records_are_invalid_resource(data: str) -> None:
    with pytest.raises(errors.InvalidResource):
        decode_release_data(data)


async def test_history_and_latest(fake: FakeKube) -> None:
    fake.add(
        release_secret("demo", "ns1", Rev(1, "superseded")),
        release_secret("demo", "ns1", Rev(3, "deployed", "Rollback to 1")),
        release_secret("demo", "ns1", Rev(2, "failed", "Upgrade failed")),
        release_secret("other", "ns1", Rev(7)),  # a different release: not selected
        release_secret("demo", "ns2", Rev(9)),  # same name, other namespace
    )
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    storage = ReleaseStorage(api)
    try:
        history = await storage.history("demo", "ns1")
        assert [(r.version, r.status) for r in history] == [(1, "superseded"), (2, "failed"), (3, "deployed")]
        latest = await storage.latest("demo", "ns1")
        assert latest is not None and (latest.version, latest.description) == (3, "Rollback to 1")
        assert await storage.latest("nope", "ns1") is None
        assert await storage.history("nope", "ns1") == []
    finally:
        await api.close()
    # One LIST per call, with helm's own selector.
    assert fake.paths[0] == "/api/v1/namespaces/ns1/secrets?labelSelector=name%3Ddemo%2Cowner%3Dhelm"
    assert api.requests == 4


async def test_latest_decodes_only_newest_and_caches(fake: FakeKube) -> None:
    fake.add(
        *(release_secret("demo", "ns1", Rev(v, "superseded" if v < 5 else "deployed")) for v in range(1, 6))
    )
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    cache = ReleaseCache()
    storage = ReleaseStorage(api, cache=cache)
    try:
        first = await storage.latest("demo", "ns1")
        assert first is not None and first.version == 5
        assert len(cache._entries) == 1  # only the newest record was decoded
        again = await storage.latest("demo", "ns1")
        assert again is first and cache.hits == 1
        # A new revision appears: decoded, not served from the cache.
        fake.add(release_secret("demo", "ns1", Rev(6, "pending-upgrade", "Preparing upgrade")))
        newest = await storage.latest("demo", "ns1")
        assert newest is not None and (newest.version, newest.status) == (6, "pending-upgrade")
    finally:
        await api.close()


async def test_latest_when_labels_lie(fake: FakeKube) -> None:
    """Hand-edited storage whose version label disagrees with the payload: payloads win."""
    bad = release_secret("demo", "ns1", Rev(1, "superseded"))
    bad["metadata"]["labels"]["version"] = "9"
    fake.add(bad, release_secret("demo", "ns1", Rev(2)))
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    try:
        latest = await ReleaseStorage(api).latest("demo", "ns1")
    finally:
        await api.close()
    assert latest is not None and latest.version == 2


async def test_configmap_driver(fake: FakeKube) -> None:
    fake.add(release_secret("demo", "ns1", Rev(1), driver="configmap"))
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    try:
        latest = await ReleaseStorage(api, driver="configmap").latest("demo", "ns1")
        assert latest is not None and latest.version == 1
        assert await ReleaseStorage(api).latest("demo", "ns1") is None  # no Secret records
    finally:
        await api.close()
    assert "/api/v1/namespaces/ns1/configmaps?" in fake.paths[0]
    with pytest.raises(errors.InvalidInput):
        ReleaseStorage(api, driver="sql")


async def test_records_without_data_are_skipped(fake: FakeKube) -> None:
    empty = release_secret("demo", "ns1", Rev(2))
    empty["data"] = {}
    fake.add(release_secret("demo", "ns1", Rev(1)), empty)
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    try:
        latest = await ReleaseStorage(api).latest("demo", "ns1")
    finally:
        await api.close()
    assert latest is not None and latest.version == 1


def test_release_json_fixture_matches_reference_shape() -> None:
    """Guard the fixture itself: keys helm 3 and helm 4 write (reference §1.2)."""
    h3 = release_json("demo", "ns1", Rev(1))
    h4 = release_json("demo", "ns1", Rev(1), helm4=True)
    assert {"name", "info", "chart", "manifest", "hooks", "version", "namespace", "config"} <= set(h3)
    assert "deleted" in h3["info"] and "deleted" not in h4["info"] and h4["apply_method"] == "ssa"
    json.dumps(h4)


@pytest.mark.parametrize("driver", ["secret", "configmap"])
def test_mark_record_failed_keeps_everything_but_the_status(driver: str) -> None:
    record = release_secret("demo", "ns", Rev(3, "pending-upgrade"), driver=driver)
    record["metadata"]["resourceVersion"] = "4711"
    record["metadata"]["labels"]["modifiedAt"] = "1700000000"
    record["metadata"]["managedFields"] = [{"manager": "helm"}]
    before = decode_release_data(record["data"]["release"], driver)

    updated = mark_record_failed(record, driver, "kduflow: marked failed", now=1800000000.5)

    after = decode_release_data(updated["data"]["release"], driver)
    assert after["info"]["status"] == "failed"
    assert after["info"]["description"] == "kduflow: marked failed"
    for doc in (before, after):
        doc["info"].pop("status"), doc["info"].pop("description")
    assert after == before  # values, chart, manifest, hooks: unchanged
    labels = updated["metadata"]["labels"]
    assert (labels["status"], labels["modifiedAt"], labels["version"]) == ("failed", "1800000000", "3")
    assert updated["metadata"]["resourceVersion"] == "4711"  # a concurrent change makes the replace fail
    assert "managedFields" not in updated["metadata"]
    assert record["metadata"]["labels"]["status"] == "pending-upgrade"  # the input is not modified


def test_mark_record_failed_refuses_a_record_without_release_data() -> None:
    with pytest.raises(errors.KduflowError):
        mark_record_failed({"metadata": {}, "data": {}}, "secret", "x", now=0)
