"""A watch-fed cache of one collection: client-go's reflector and store, cut down.

The scheduler needs the current Nodes, Pods and Jobs every cycle; re-listing them all
each time costs the API server more than the decisions cost us. An :class:`Informer`
LISTs once, then WATCHes from the list's ``resourceVersion`` and applies each event to
a dict of plain manifests (the JSON the API server sends, as ``Kube.request`` returns).

How the watch is kept honest:

* the server ends each watch after ``timeoutSeconds`` (jittered, so informers do not
  reconnect in step) and we re-watch from the last resourceVersion seen; bookmarks
  advance it even when nothing in our selection changes, so a re-watch rarely starts
  from a version the server has already forgotten;
* an ERROR event or HTTP status 410 (Gone, "too old resource version") means events
  were lost: re-LIST, replace the store, and report the difference as changes (what
  vanished as ``DELETED``), so a consumer that only follows ``on_change`` stays right;
* a dropped connection or any other failure backs off (0.5 s doubling to 10 s, reset
  once a watch opens) and re-watches; the task logs a warning and never dies.

resourceVersions are compared only for equality: the API contract makes them opaque,
so there is no "stale event" ordering check (a watch from version N only delivers
later events anyway).

**Why not** ``kubernetes_asyncio.watch.Watch``: it wants a generated ``list_*``
method, builds a second ApiClient per stream, and turns ERROR events into exceptions
before we can see them. Opening the stream with ``ApiClient.call_api`` the way
``Kube.request`` does keeps one code path for authentication (client certificates
from a kubeconfig, or the in-cluster bearer token), and aiohttp splits the lines.

The event logic (:func:`apply_event`, :func:`replace_store`) is pure; this module's
classes only do the I/O and the timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from aiplane.errors import KubernetesError
from aiplane.runtime.kubernetes.client import Kube, Manifest, _explain

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"
GONE = 410
OnChange = Callable[[str, Manifest], None]
Store = dict[str, Manifest]


class WatchError(KubernetesError):
    """The server ended a watch with an ERROR event; ``expired`` means re-LIST."""

    @property
    def expired(self) -> bool:
        return self.status == GONE


def object_key(obj: Manifest) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects (client-go's key)."""
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def resource_version(obj: Manifest) -> str | None:
    rv = obj.get("metadata", {}).get("resourceVersion")
    return str(rv) if rv else None


def needs_relist(exc: BaseException) -> bool:
    """Whether a failed watch lost events (410 Gone), so only a new LIST can catch up."""
    return isinstance(exc, KubernetesError) and exc.status == GONE


def apply_event(store: Store, event: Mapping[str, Any]) -> bool:
    """Apply one watch event to ``store``; return whether the store changed.

    ADDED and MODIFIED put the object (an unchanged resourceVersion is no change),
    DELETED removes it, BOOKMARK changes nothing. ERROR raises :class:`WatchError`
    carrying the status the server sent, so the caller decides to re-LIST (410) or
    re-watch. An unknown type is ignored, as client-go does, rather than guessed at.
    """
    kind = event.get("type")
    obj = event.get("object") or {}
    if kind == ERROR:
        code = int(obj.get("code") or 0)
        raise WatchError(f"watch error {code} {obj.get('reason', '')}: {obj.get('message', '')}", code)
    if kind in (ADDED, MODIFIED):
        key = object_key(obj)
        old = store.get(key)
        store[key] = obj
        if old is None:
            return True
        rv = resource_version(obj)
        return rv is None or rv != resource_version(old)
    if kind == DELETED:
        return store.pop(object_key(obj), None) is not None
    return False


def replace_store(store: Store, items: Iterable[Manifest]) -> list[tuple[str, Manifest]]:
    """Make ``store`` hold exactly ``items``; return the changes a watch would have sent.

    Used for the first LIST and after a 410: objects that are new are ``ADDED``, those
    with a different resourceVersion ``MODIFIED``, and those gone ``DELETED`` (with the
    last version we had, as a watch's DELETED event carries).
    """
    fresh = {object_key(obj): obj for obj in items}
    changes: list[tuple[str, Manifest]] = [(DELETED, old) for key, old in store.items() if key not in fresh]
    for key, obj in fresh.items():
        had = store.get(key)
        if had is None:
            changes.append((ADDED, obj))
        elif resource_version(obj) is None or resource_version(obj) != resource_version(had):
            changes.append((MODIFIED, obj))
    store.clear()
    store.update(fresh)
    return changes


class Informer:
    """One collection (``/api/v1/pods``, ``/apis/batch/v1/namespaces/x/jobs``, ...) kept
    current by a LIST and then a WATCH.

    Objects are shared with the store, not copied: callers must not mutate them.
    """

    def __init__(
        self,
        kube: Kube,
        path: str,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        on_change: OnChange | None = None,
        watch_timeout: float = 240.0,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.kube = kube
        self.path = path
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.synced = asyncio.Event()
        self._selectors = [
            (name, value)
            for name, value in (("fieldSelector", field_selector), ("labelSelector", label_selector))
            if value
        ]
        self._store: Store = {}
        self._rv: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._response: Any = None  # the open watch stream (an aiohttp ClientResponse)

    def __repr__(self) -> str:
        return f"Informer({self.path!r}, {len(self._store)} objects, rv={self._rv})"

    @property
    def resource_version(self) -> str | None:
        """The version the store is current to: the next watch starts here."""
        return self._rv

    def items(self) -> list[Manifest]:
        return list(self._store.values())

    def keys(self) -> list[str]:
        return list(self._store)

    def get(self, key: str) -> Manifest | None:
        """By ``namespace/name``, or ``name`` for cluster-scoped objects."""
        return self._store.get(key)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: object) -> bool:
        return key in self._store

    async def start(self) -> None:
        """LIST (raising :class:`KubernetesError` if that fails), then watch in the background."""
        if self._task is not None:
            raise RuntimeError(f"{self!r} is already running")
        await self._relist()
        self.synced.set()
        self._task = asyncio.create_task(self._run(), name=f"informer {self.path}")

    async def stop(self) -> None:
        """Cancel the watch and close its connection; the store keeps its last contents."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """Whether the first LIST landed within ``timeout`` seconds."""
        if self.synced.is_set():
            return True
        try:
            await asyncio.wait_for(self.synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _relist(self) -> None:
        result = await self.kube.request("GET", self.path, query=list(self._selectors))
        api_version = result.get("apiVersion", "")
        kind = str(result.get("kind", "")).removesuffix("List")
        items: list[Manifest] = result.get("items") or []
        for item in items:  # list items lack apiVersion/kind; watch events carry them
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        changes = replace_store(self._store, items)
        self._rv = resource_version(result)
        for change, obj in changes:
            self._emit(change, obj)

    async def _run(self) -> None:
        """Watch until cancelled; after each end, wait the backoff and re-watch (or re-LIST)."""
        first, most = self.backoff
        delay = first
        relist = False
        while True:
            try:
                if relist:
                    await self._relist()
                    relist = False
                    log.info("%s: re-listed at resourceVersion %s", self.path, self._rv)
                response = await self._open()
                delay = first  # the server answered: whatever ends this watch is news
                await self._consume(response)
            except Exception as exc:  # the task must outlive every failure
                if needs_relist(exc):
                    log.warning("%s: %s; re-listing", self.path, exc)
                    relist = True
                else:
                    log.warning("%s: watch failed (%s); again in %gs", self.path, _describe(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)

    async def _consume(self, response: Any) -> None:
        """Apply the stream's events one by one until the server ends it."""
        self._response = response
        try:
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError(f"not a watch event: {line[:200]!r}")
                    self._apply(event)
        finally:
            self._response = None
            response.close()

    async def _open(self) -> Any:
        """Open a watch from the last resourceVersion, calling the API as ``Kube.request`` does."""
        timeout = int(self.watch_timeout * random.uniform(1.0, 1.5))
        query = [
            *self._selectors,
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
        ]
        if self._rv:
            query.append(("resourceVersion", self._rv))
        try:
            response = await self.kube.api.call_api(
                self.path,
                "GET",
                {},
                query,
                {"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                # The server ends the watch at `timeout`: a silence much longer than
                # that is a dead connection, not a quiet collection.
                _request_timeout=aiohttp.ClientTimeout(connect=10, sock_read=timeout + 30),
            )
        except ApiException as exc:
            raise KubernetesError(_explain(exc, "WATCH", self.path), status=exc.status) from exc
        response = response[0] if isinstance(response, tuple) else response
        status = int(response.status)
        if status >= 400:
            raw = await response.read()
            response.close()
            raise KubernetesError(
                _explain(ApiException(status=status, reason=response.reason), "WATCH", self.path, raw),
                status=status,
            )
        return response

    def _apply(self, event: Mapping[str, Any]) -> None:
        changed = apply_event(self._store, event)
        obj = event.get("object") or {}
        if rv := resource_version(obj):
            self._rv = rv
        if changed:
            self._emit(str(event["type"]), obj)

    def _emit(self, change: str, obj: Manifest) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(change, obj)
        except Exception:  # a consumer's bug must not stop the cache
            log.exception("%s: on_change(%s, %s) failed", self.path, change, object_key(obj))


class Informers(Mapping[str, Informer]):
    """Several informers started, synced and stopped together, looked up by name."""

    def __init__(self, informers: Mapping[str, Informer]) -> None:
        self._informers = dict(informers)

    def __getitem__(self, name: str) -> Informer:
        return self._informers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._informers)

    def __len__(self) -> int:
        return len(self._informers)

    async def start(self) -> None:
        """Start all (their LISTs run concurrently); if one fails, stop the rest and raise."""
        results = await asyncio.gather(*(inf.start() for inf in self.values()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    async def stop(self) -> None:
        await asyncio.gather(*(inf.stop() for inf in self.values()))

    async def wait_synced(self, timeout: float | None = None) -> bool:
        results = await asyncio.gather(*(inf.wait_synced(timeout) for inf in self.values()))
        return all(results)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Informers]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
