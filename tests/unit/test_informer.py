"""The informer: pure event application, and its watch loop against a scripted API server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest

from aiplane.errors import KubernetesError
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.informer import (
    Informer,
    Informers,
    WatchError,
    apply_event,
    needs_relist,
    object_key,
    replace_store,
)


def cm(name: str, rv: str, namespace: str | None = "ns", **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(rv: str) -> dict[str, Any]:
    return event("BOOKMARK", {"kind": "ConfigMap", "metadata": {"resourceVersion": rv}})


def gone() -> dict[str, Any]:
    status = {"kind": "Status", "status": "Failure", "reason": "Expired", "code": 410}
    return event("ERROR", {**status, "message": "too old resource version: 5 (90)"})


# -- apply_event and replace_store (pure) -----------------------------------------------
def test_keys_are_namespace_slash_name_or_just_name_for_cluster_scoped_objects() -> None:
    assert object_key(cm("a", "1")) == "ns/a"
    assert object_key(cm("node-1", "1", namespace=None)) == "node-1"


def test_added_then_modified_replace_the_value() -> None:
    store: dict[str, Any] = {}
    assert apply_event(store, event("ADDED", cm("a", "1", k="v1")))
    assert store["ns/a"]["data"] == {"k": "v1"}
    assert apply_event(store, event("MODIFIED", cm("a", "2", k="v2")))
    assert store["ns/a"]["data"] == {"k": "v2"}
    assert list(store) == ["ns/a"]


def test_an_event_with_the_version_already_held_is_no_change() -> None:
    store = {"ns/a": cm("a", "2", k="v2")}
    assert not apply_event(store, event("MODIFIED", cm("a", "2", k="v2")))


def test_deleted_removes_and_deleting_an_unknown_object_changes_nothing() -> None:
    store = {"ns/a": cm("a", "1"), "ns/b": cm("b", "1")}
    assert apply_event(store, event("DELETED", cm("a", "3")))
    assert list(store) == ["ns/b"]
    assert not apply_event(store, event("DELETED", cm("zz", "4")))
    assert list(store) == ["ns/b"]


def test_bookmarks_and_unknown_types_change_nothing() -> None:
    store = {"ns/a": cm("a", "1")}
    assert not apply_event(store, bookmark("99"))
    assert not apply_event(store, event("SOMETHING_NEW", cm("b", "5")))
    assert store == {"ns/a": cm("a", "1")}


def test_an_expired_watch_raises_and_asks_for_a_relist() -> None:
    store = {"ns/a": cm("a", "1")}
    with pytest.raises(WatchError) as info:
        apply_event(store, gone())
    assert info.value.status == 410 and info.value.expired
    assert needs_relist(info.value)
    assert "too old resource version" in str(info.value)
    assert store == {"ns/a": cm("a", "1")}


def test_other_errors_rewatch_instead_of_relisting() -> None:
    with pytest.raises(WatchError) as info:
        apply_event({}, event("ERROR", {"kind": "Status", "code": 500, "message": "etcd hiccup"}))
    assert not info.value.expired and not needs_relist(info.value)
    assert needs_relist(KubernetesError("WATCH /api/v1/pods: 410 Gone", status=410))  # as an HTTP status
    assert not needs_relist(KubernetesError("WATCH /api/v1/pods: 403 Forbidden", status=403))
    assert not needs_relist(aiohttp.ClientConnectionError("reset"))


def test_replace_store_reports_what_a_watch_would_have_sent() -> None:
    store = {"ns/same": cm("same", "1"), "ns/changed": cm("changed", "1"), "ns/gone": cm("gone", "1")}
    fresh = [cm("same", "1"), cm("changed", "7", k="new"), cm("new", "8")]
    changes = replace_store(store, fresh)
    assert sorted((kind, object_key(obj), obj["metadata"]["resourceVersion"]) for kind, obj in changes) == [
        ("ADDED", "ns/new", "8"),
        ("DELETED", "ns/gone", "1"),  # the last version we had
        ("MODIFIED", "ns/changed", "7"),
    ]
    assert store == {object_key(o): o for o in fresh}


# -- the watch loop, against a scripted server ------------------------------------------
HANG = object()  # the stream stays open and silent


class FakeContent:
    def __init__(self, script: list[Any]) -> None:
        self.script = script

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for item in self.script:
            if item is HANG:
                await asyncio.Event().wait()
            if isinstance(item, BaseException):
                raise item
            yield (json.dumps(item) + "\n").encode()


class FakeResponse:
    def __init__(self, script: list[Any], status: int = 200) -> None:
        self.status, self.reason, self.content = (
            status,
            "Gone" if status == 410 else "OK",
            FakeContent(script),
        )
        self.closed = False

    async def read(self) -> bytes:
        return b'{"message": "too old resource version"}'

    def close(self) -> None:
        self.closed = True


class FakeApi:
    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube

    async def call_api(self, path: str, method: str, *args: Any, **kwargs: Any) -> Any:
        query = dict(args[1])
        assert (path, method, kwargs["auth_settings"]) == (
            "/api/v1/namespaces/ns/configmaps",
            "GET",
            ["BearerToken"],
        )
        assert kwargs["_preload_content"] is False
        self.kube.watches.append(query)
        if not self.kube.streams:
            return FakeResponse([HANG])
        item = self.kube.streams.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


class FakeKube:
    """LISTs return ``lists`` in turn; watches return ``streams`` in turn, then hang."""

    def __init__(self, lists: list[tuple[str, list[dict[str, Any]]]], streams: list[Any]) -> None:
        self.lists, self.streams = lists, streams
        self.list_queries: list[list[tuple[str, str]]] = []
        self.watches: list[dict[str, str]] = []
        self.api = FakeApi(self)

    async def request(self, method: str, path: str, query: list[tuple[str, str]] | None = None) -> Any:
        self.list_queries.append(query or [])
        rv, items = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
        return {
            "apiVersion": "v1",
            "kind": "ConfigMapList",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }


def listed(name: str, rv: str, **data: str) -> dict[str, Any]:
    item = cm(name, rv, **data)
    del item["apiVersion"], item["kind"]  # as a LIST sends them
    return item


async def until(condition: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def informer(kube: FakeKube, changes: list[tuple[str, str]], **kwargs: Any) -> Informer:
    return Informer(
        cast(Kube, kube),
        "/api/v1/namespaces/ns/configmaps",
        on_change=lambda kind, obj: changes.append((kind, object_key(obj))),
        backoff=(0.01, 0.04),
        **kwargs,
    )


async def test_start_lists_then_watches_from_the_listed_version() -> None:
    kube = FakeKube(
        [("10", [listed("a", "9", k="v1")])],
        [FakeResponse([event("MODIFIED", cm("a", "11", k="v2")), event("ADDED", cm("b", "12"))])],
    )
    changes: list[tuple[str, str]] = []
    inf = informer(kube, changes, label_selector="app=x", field_selector="metadata.name!=z")
    await inf.start()
    try:
        assert inf.synced.is_set() and await inf.wait_synced(0)
        assert kube.list_queries == [[("fieldSelector", "metadata.name!=z"), ("labelSelector", "app=x")]]
        assert inf.get("ns/a") == {**cm("a", "9", k="v1")}  # apiVersion/kind filled in
        await until(lambda: len(kube.watches) == 2)  # the first stream ended; watching again
        first, second = kube.watches
        assert first["resourceVersion"] == "10" and first["watch"] == "true"
        assert first["allowWatchBookmarks"] == "true" and first["labelSelector"] == "app=x"
        assert 240 <= int(first["timeoutSeconds"]) <= 360
        assert second["resourceVersion"] == "12"
        assert inf.get("ns/a") == cm("a", "11", k="v2")
        assert sorted(o["metadata"]["name"] for o in inf.items()) == ["a", "b"]
        assert "ns/b" in inf and "ns/zz" not in inf and len(inf) == 2
        assert changes == [("ADDED", "ns/a"), ("MODIFIED", "ns/a"), ("ADDED", "ns/b")]
    finally:
        await inf.stop()


async def test_bookmarks_advance_the_version_without_a_change() -> None:
    kube = FakeKube([("10", [])], [FakeResponse([bookmark("50")])])
    changes: list[tuple[str, str]] = []
    inf = informer(kube, changes)
    await inf.start()
    try:
        await until(lambda: len(kube.watches) == 2)
        assert kube.watches[1]["resourceVersion"] == "50" and inf.resource_version == "50"
        assert changes == []
    finally:
        await inf.stop()


async def test_a_gone_watch_relists_and_reports_what_vanished_as_deleted() -> None:
    kube = FakeKube(
        [("10", [listed("a", "1"), listed("b", "2")]), ("90", [listed("b", "80"), listed("c", "85")])],
        [FakeResponse([gone()])],
    )
    changes: list[tuple[str, str]] = []
    inf = informer(kube, changes)
    await inf.start()
    try:
        await until(lambda: len(kube.watches) == 2)
        assert len(kube.list_queries) == 2
        assert kube.watches[1]["resourceVersion"] == "90"
        assert sorted(inf.keys()) == ["ns/b", "ns/c"] and inf.get("ns/b") == cm("b", "80")
        assert sorted(changes[2:]) == [("ADDED", "ns/c"), ("DELETED", "ns/a"), ("MODIFIED", "ns/b")]
    finally:
        await inf.stop()


async def test_an_http_410_on_opening_also_relists() -> None:
    kube = FakeKube([("10", []), ("20", [listed("a", "15")])], [FakeResponse([], status=410)])
    inf = informer(kube, [])
    await inf.start()
    try:
        await until(lambda: len(kube.watches) == 2)
        assert kube.watches[1]["resourceVersion"] == "20" and inf.keys() == ["ns/a"]
    finally:
        await inf.stop()


async def test_failures_back_off_doubling_and_rewatch_from_the_last_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drop = aiohttp.ClientPayloadError("connection reset")
    kube = FakeKube(
        [("10", [])],
        [
            aiohttp.ClientConnectionError("refused"),
            aiohttp.ClientConnectionError("refused"),
            aiohttp.ClientConnectionError("refused"),
            aiohttp.ClientConnectionError("refused"),
            FakeResponse([event("ADDED", cm("a", "11")), drop]),  # opens: the backoff resets
            aiohttp.ClientConnectionError("refused"),
            FakeResponse(["not an event"]),
            FakeResponse([event("ERROR", {"kind": "Status", "code": 500, "message": "etcd"})]),
        ],
    )
    inf = informer(kube, [])
    await inf.start()
    try:
        await until(lambda: len(kube.watches) == 9)
        assert [w.get("resourceVersion") for w in kube.watches] == ["10"] * 5 + ["11"] * 4
        assert len(kube.list_queries) == 1  # none of these needs a relist
        delays = [r.getMessage().rsplit(" ", 1)[1] for r in caplog.records if "again in" in r.getMessage()]
        assert delays == ["0.01s", "0.02s", "0.04s", "0.04s", "0.01s", "0.02s", "0.01s", "0.01s"]
        assert "not a watch event" in caplog.text and "watch error 500" in caplog.text
        assert inf.keys() == ["ns/a"]
        assert all(r.levelname == "WARNING" for r in caplog.records if "again in" in r.getMessage())
    finally:
        await inf.stop()


async def test_a_raising_on_change_does_not_stop_the_cache() -> None:
    kube = FakeKube(
        [("10", [])], [FakeResponse([event("ADDED", cm("a", "11")), event("ADDED", cm("b", "12"))])]
    )

    def broken(kind: str, obj: dict[str, Any]) -> None:
        raise RuntimeError("consumer bug")

    inf = Informer(cast(Kube, kube), "/api/v1/namespaces/ns/configmaps", on_change=broken)
    await inf.start()
    try:
        await until(lambda: len(inf) == 2)
    finally:
        await inf.stop()


async def test_stop_closes_the_open_stream_and_start_twice_is_an_error() -> None:
    stream = FakeResponse([HANG])
    kube = FakeKube([("10", [])], [stream])
    inf = informer(kube, [])
    await inf.start()
    with pytest.raises(RuntimeError):
        await inf.start()
    await until(lambda: len(kube.watches) == 1)
    await inf.stop()
    assert stream.closed
    await inf.stop()  # idempotent


async def test_informers_start_and_stop_together_and_a_failed_list_raises() -> None:
    ok = FakeKube([("10", [listed("a", "1")])], [])
    group = Informers({"cms": informer(ok, [])})
    async with group.running() as cache:
        assert await cache.wait_synced(1) and cache["cms"].keys() == ["ns/a"]
        assert list(cache) == ["cms"] and len(cache) == 1
    assert cache["cms"]._task is None

    class Refusing(FakeKube):
        async def request(self, method: str, path: str, query: Any = None) -> Any:
            raise KubernetesError("GET: 403 Forbidden", status=403)

    good = informer(FakeKube([("10", [])], []), [])
    group = Informers({"good": good, "bad": informer(Refusing([], []), [])})
    with pytest.raises(KubernetesError):
        await group.start()
    assert good._task is None  # the one that started was stopped again
    assert not await group["bad"].wait_synced(0.01)
