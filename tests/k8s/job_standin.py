"""A stand-in for the kubelet's container runtime, for Job pods: their command, run here.

:class:`JobStandIn` is :class:`~tests.k8s.kubelet_standin.KubeletStandIn` (the claim
annotation, the termination sequence, the teardown) for pods that run to completion,
such as a TrainingJob's workers and a BatchJob's shards. For the pods matching a
namespace and a label selector, once KWOK has them ``Running`` with an IP:

* **Start.** The container's ``command`` + ``args`` run as a local process, in the
  repository root (so ``examples/train_tiny.py`` resolves), ``$(VAR)`` references
  expanded as the kubelet expands them (``$$`` is a literal ``$``). The image's
  programs map to this machine (:data:`PROGRAMS`: ``python`` is this interpreter,
  ``aiplane`` the venv's script); an argv naming anything else cannot run.
* **Environment.** The container's ``env``, in order, each value expanded over those
  before it; downward-API ``fieldRef``s resolved from the pod (``metadata.name``,
  ``metadata.namespace``, ``metadata.uid``, ``metadata.labels['k']``,
  ``metadata.annotations['k']``); nothing else of the host but ``PATH``, ``HOME``,
  ``LANG`` and ``TMPDIR``.
* **Volumes.** Each ``volumeMount`` of a ``persistentVolumeClaim`` volume is the local
  directory ``<volumes_dir>/<claim>`` (one per claim, shared by every pod that mounts
  it, as a ReadWriteMany volume is), an ``emptyDir`` a fresh directory of the pod's; a
  mount path that starts an env value or an argument (or follows its ``=``) is
  rewritten to that directory (``/checkpoints/x`` -> ``<volumes_dir>/<claim>/x``). No
  other volume type is supported.
* **Named substitutions** (:attr:`JobRun.substituted` records each one made), what a pod
  network and a container's filesystem would otherwise provide:

  - ``MASTER_ADDR``/``PET_MASTER_ADDR`` of the form ``<host>.<service>.<ns>.svc`` (a
    pod's DNS name under a headless Service) become ``127.0.0.1``: every "pod" runs
    on this host's loopback;
  - ``MASTER_PORT``/``PET_MASTER_PORT`` become one free loopback port per Job (by its
    uid), the same for every rank that starts while another of that Job runs, a new
    one once none runs (a gang started again after a preemption or restart): on a
    node each pod has its own network namespace and 29500 is free in each;
  - ``AIPLANE_TERMINATION_LOG`` is set to a local file of the pod's, for the container's
    ``terminationMessagePath`` (``/dev/termination-log``), which the shard runner
    honours;
  - ``env`` given to the stand-in, last: a value replaces the pod's, ``None`` unsets it
    (a BatchJob's ``AIPLANE_MODEL_URL`` names a Service that resolves nowhere here).

* **Logs.** The process's stdout and stderr go to ``<log_dir>/<pod>.log`` (as written)
  and to ``<pod>.cri.log`` in the CRI log format a kubelet's ``/var/log/pods`` files
  have. A KWOK ``Logs`` object named after the pod (owned by it, so it goes with it)
  points KWOK's server at the latter, and KWOK's server is every node's kubelet
  endpoint (``aiplane.dev.kwok_nodes.kwok_config``): ``kubectl logs POD``, the API
  server's ``pods/log``, returns what the process printed.
* **Exit.** When the process exits the pod's status is written as a kubelet writes it
  for ``restartPolicy: Never``: phase ``Succeeded`` (exit 0) or ``Failed``, the
  container ``terminated`` with its ``exitCode``, ``reason`` (``Completed``/``Error``),
  ``message`` (the termination log file, at most 4096 bytes; with
  ``terminationMessagePolicy: FallbackToLogsOnError`` and a failure with no message,
  the log's last 80 lines, at most 2048 bytes) and ``finishedAt``. The Job controller
  counts completions and failures from that.
* **Termination** is the engine stand-in's (the ``aiplane.dev/kwok-termination``
  annotation, SIGTERM to the process group when the pod gets a ``deletionTimestamp``,
  SIGKILL when its grace period is over, then the removal with grace 0 and a UID
  precondition); the terminal status is written just before the removal.

Not a kubelet: KWOK alone decides ``Running`` (and Ready: these pods have no probes);
one container per pod; read-only mounts are writable; no resource limits.
Processes die with the test process (``PR_SET_PDEATHSIG``), and every API call and wait
is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from aiplane.errors import KubernetesError
from aiplane.runtime.kubernetes.client import Kube, resource_path
from tests.k8s.kubelet_standin import (
    API_TIMEOUT_S,
    Engine,
    KubeletStandIn,
    Manifest,
    Probe,
    StandInError,
    _die_with_parent,
    terminating,
    wants_engine,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PROGRAMS: dict[str, Callable[[], str]] = {
    "python": lambda: sys.executable,
    "python3": lambda: sys.executable,
    "aiplane": lambda: str(Path(sys.executable).with_name("aiplane")),
}
"""A program an image would have on its PATH -> the local one."""

HOST_ENV = ("PATH", "HOME", "LANG", "TMPDIR")
LOOPBACK = "127.0.0.1"
POD_DNS = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?){2}\.svc(\.cluster\.local)?$"
)
ADDR_VARS = ("MASTER_ADDR", "PET_MASTER_ADDR")
PORT_VARS = ("MASTER_PORT", "PET_MASTER_PORT")
TERMINATION_LOG_VAR = "AIPLANE_TERMINATION_LOG"
MESSAGE_MAX = 4096  # the kubelet's cap on a termination message
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # FallbackToLogsOnError: the log's tail
READER_WAIT_S = 5.0
KWOK_LOGS = "/apis/kwok.x-k8s.io/v1alpha1/namespaces/{ns}/logs"
REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][-._A-Za-z0-9]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: a defined VAR's value, ``$$`` -> ``$``, else as is."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return REFERENCE.sub(one, text)


def field_ref(pod: Manifest, path: str) -> str:
    """A downward-API ``fieldRef.fieldPath`` of the pod's metadata."""
    meta = pod["metadata"]
    if path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(meta[path.removeprefix("metadata.")])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m is None:
        raise StandInError(f"fieldRef {path!r}: the stand-in resolves metadata.* fields only")
    return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))


def rewrite_mounts(text: str, mounts: Mapping[str, Path]) -> str:
    """``text`` with a leading mount path (or one after ``=``) replaced by its local directory."""
    head, eq, tail = text.partition("=") if not text.startswith("/") else ("", "", text)
    target = tail if eq or text.startswith("/") else text
    for mount in sorted(mounts, key=len, reverse=True):
        if target == mount or target.startswith(mount.rstrip("/") + "/"):
            return f"{head}{eq}{mounts[mount]}{target[len(mount.rstrip('/')) :]}"
    return text


def controller_uid(pod: Manifest) -> str:
    """The uid of the pod's controller (its Job), else its own."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["uid"])
    return str(pod["metadata"]["uid"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _cri_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _copy_output(source: IO[bytes], plain: Path, cri: Path) -> None:  # a thread per process
    """Each line to the plain log as is and to the CRI log as ``<time> stdout F <line>``."""
    with plain.open("ab") as out, cri.open("ab") as cri_out:
        for line in iter(source.readline, b""):
            out.write(line)
            out.flush()
            cri_out.write(f"{_cri_time()} stdout F ".encode() + line.rstrip(b"\n") + b"\n")
            cri_out.flush()
    source.close()


@dataclass
class JobRun:
    """One pod's process, with what the stand-in gave it and what it reported."""

    engine: Engine  # the process and its termination timeline (see KubeletStandIn)
    job_uid: str
    container: str
    image: str
    env: dict[str, str]
    substituted: dict[str, str | None]  # each named substitution made: variable -> value (None: unset)
    termination_log: Path
    cri_log: Path
    fallback_to_logs: bool
    reader: threading.Thread
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    reported: bool = False  # the terminal status is written
    message: str = ""

    @property
    def pod(self) -> str:
        return self.engine.pod

    @property
    def exit_code(self) -> int | None:
        return self.engine.exit_code

    def log_text(self, tail: int = 20000) -> str:
        return self.engine.log_text(tail)


class JobStandIn(KubeletStandIn):
    """Runs the containers of the Job pods matching ``selector`` in ``namespace``; see the
    module doc. ``volumes_dir`` holds one directory per claim; ``env`` is applied last
    (``None`` unsets a variable).

    Use ``async with JobStandIn(kube, ns, selector, log_dir, volumes_dir).running() as jobs:``.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        selector: str,
        log_dir: Path,
        volumes_dir: Path,
        *,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        super().__init__(kube, namespace, selector, log_dir)
        self.volumes_dir = volumes_dir
        self.env_overrides = dict(env or {})
        self.runs: dict[str, JobRun] = {}  # pod uid -> its run
        self._ports: dict[str, int] = {}  # Job uid -> the port its running gang shares

    async def sync(self) -> None:
        """One level-triggered pass: start, report exits, terminate, stop the vanished."""
        pods = await asyncio.wait_for(
            self.kube.list("v1", "Pod", self.namespace, self.selector), API_TIMEOUT_S
        )
        listed = {p["metadata"]["uid"]: p for p in pods}
        for uid, pod in listed.items():
            if terminating(pod) and uid in self._claimed and uid not in self._terminations:
                self._terminations[uid] = asyncio.create_task(self._terminate(pod, self.engines.get(uid)))
        for uid, engine in self.engines.items():
            if uid not in listed and engine.stopped_at is None and uid not in self._terminations:
                engine.stopped_at = time.monotonic()  # removed by someone else: stop it
                self._stops.append(asyncio.create_task(self._stop(engine)))
        for uid, pod in listed.items():
            new = wants_engine(pod) and uid not in self.engines and uid not in self._unrunnable
            if new and await self._claim(pod):
                await self._launch(pod)
            run = self.runs.get(uid)
            if run and not run.engine.running and not run.reported and uid not in self._terminations:
                await self._report_exit(pod, run)

    # -- start --------------------------------------------------------------------------

    def _mounts(self, pod: Manifest, container: Manifest) -> dict[str, Path]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        out: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            if "persistentVolumeClaim" in volume:
                local = self.volumes_dir / volume["persistentVolumeClaim"]["claimName"]
            elif "emptyDir" in volume:
                local = self.log_dir / f"{pod['metadata']['name']}.volumes" / mount["name"]
            else:
                raise StandInError(
                    f"volume {mount['name']}: only persistentVolumeClaim and emptyDir run here"
                )
            if mount.get("subPath"):
                local = local / mount["subPath"]
            local.mkdir(parents=True, exist_ok=True)
            out[mount["mountPath"]] = local
        return out

    def _port(self, job_uid: str) -> int:
        """The Job's port while any of its processes runs, else a new one."""
        if job_uid not in self._ports or not any(
            r.job_uid == job_uid and r.engine.running for r in self.runs.values()
        ):
            self._ports[job_uid] = _free_port()
        return self._ports[job_uid]

    def _environment(
        self, pod: Manifest, container: Manifest, mounts: Mapping[str, Path], termination_log: Path
    ) -> tuple[dict[str, str], dict[str, str | None]]:
        """(the process's env, the named substitutions made in it)."""
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            if "valueFrom" in item:
                ref = (item["valueFrom"] or {}).get("fieldRef")
                if ref is None:
                    raise StandInError(f"env {item['name']}: only fieldRef sources are resolved here")
                env[item["name"]] = field_ref(pod, ref["fieldPath"])
            else:
                env[item["name"]] = expand(str(item.get("value", "")), env)
        env = {k: rewrite_mounts(v, mounts) for k, v in env.items()}
        made: dict[str, str | None] = {}
        for name in ADDR_VARS:
            if POD_DNS.match(env.get(name, "")):
                made[name] = LOOPBACK
        if any(name in env for name in PORT_VARS):
            port = str(self._port(controller_uid(pod)))
            made |= {name: port for name in PORT_VARS if name in env}
        made[TERMINATION_LOG_VAR] = str(termination_log)
        made |= self.env_overrides
        for name, value in made.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        host = {k: v for k, v in os.environ.items() if k in HOST_ENV}
        return host | env, made

    def _argv(self, container: Manifest, env: Mapping[str, str], mounts: Mapping[str, Path]) -> list[str]:
        words = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if not container.get("command"):
            raise StandInError(
                f"container {container['name']}: no command (the image's entrypoint is unknown)"
            )
        argv = [rewrite_mounts(expand(w, env), mounts) for w in words]
        program = PROGRAMS.get(argv[0])
        if program is None:
            raise StandInError(f"program {argv[0]!r}: the stand-in runs only {sorted(PROGRAMS)}")
        return [program(), *argv[1:]]

    async def _launch(self, pod: Manifest) -> JobRun | None:
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        try:
            (container,) = pod["spec"]["containers"]
            mounts = self._mounts(pod, container)
            termination_log = self.log_dir / f"{name}.termination-log"
            env, made = self._environment(pod, container, mounts, termination_log)
            argv = self._argv(container, env, mounts)
        except (StandInError, ValueError) as exc:
            self._unrunnable.add(uid)
            self.errors.append(f"pod {name}: {exc}")
            return None
        plain, cri = self.log_dir / f"{name}.log", self.log_dir / f"{name}.cri.log"
        termination_log.write_bytes(b"")
        cri.touch()
        await self._publish_log(pod, container["name"], cri)
        with plain.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,  # its own group: SIGTERM reaches anything it forked
            preexec_fn=_die_with_parent,
        )
        assert proc.stdout is not None
        reader = threading.Thread(target=_copy_output, args=(proc.stdout, plain, cri), daemon=True)
        reader.start()
        engine = Engine(name, uid, pod["status"]["podIP"], 0, argv, plain, proc, Probe())
        self.engines[uid] = engine
        policy = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        run = JobRun(
            engine, controller_uid(pod), container["name"], container.get("image", ""), env, made,
            termination_log, cri, policy, reader,
        )  # fmt: skip
        self.runs[uid] = run
        log.info("job stand-in: started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return run

    async def _publish_log(self, pod: Manifest, container: str, cri: Path) -> None:
        """A KWOK ``Logs`` object for the pod, owned by it: ``kubectl logs`` serves ``cri``."""
        meta = pod["metadata"]
        body = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {
                "name": meta["name"],
                "namespace": self.namespace,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
                ],
            },
            "spec": {"logs": [{"containers": [container], "logsFile": str(cri), "follow": True}]},
        }
        try:
            call = self.kube.request("POST", KWOK_LOGS.format(ns=self.namespace), body)
            await asyncio.wait_for(call, API_TIMEOUT_S)
        except KubernetesError as exc:
            if exc.status != 409:  # 409: already there (a pass that was cut short)
                raise

    # -- exit ---------------------------------------------------------------------------

    def _message(self, run: JobRun) -> str:
        """What the kubelet puts in ``terminated.message`` (see the module doc)."""
        raw = run.termination_log.read_bytes()[-MESSAGE_MAX:] if run.termination_log.exists() else b""
        message = raw.decode(errors="replace")
        if not message.strip() and run.fallback_to_logs and run.exit_code:
            lines = run.log_text(1 << 20).splitlines()[-FALLBACK_LINES:]
            message = "\n".join(lines)[-FALLBACK_BYTES:]
        return message

    async def _report_exit(self, pod: Manifest, run: JobRun) -> None:
        """Phase Succeeded/Failed and the container terminated, as the kubelet writes them."""
        run.engine.exited_at = run.engine.exited_at or time.monotonic()  # seen within a pass
        await asyncio.to_thread(run.reader.join, READER_WAIT_S)  # the log is complete
        code = int(run.engine.proc.returncode)
        run.message = self._message(run)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        terminated = {
            "exitCode": code,
            "reason": "Error" if code else "Completed",
            "message": run.message,
            "startedAt": run.started,
            "finishedAt": now,
        }
        statuses = [dict(cs) for cs in (pod.get("status") or {}).get("containerStatuses") or []]
        ours = next((cs for cs in statuses if cs.get("name") == run.container), None)
        if ours is None:
            ours = {"name": run.container, "image": run.image, "imageID": "", "restartCount": 0}
            statuses.append(ours)
        ours |= {"ready": False, "started": False, "state": {"terminated": terminated}}
        not_ready = {"status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
        patch = {
            "status": {
                "phase": "Failed" if code else "Succeeded",
                "conditions": [{"type": t, **not_ready} for t in ("Ready", "ContainersReady")],
                "containerStatuses": statuses,  # atomic list: sent whole
            }
        }
        path = resource_path("v1", "Pod", run.pod, self.namespace, "status")
        strategic = "application/strategic-merge-patch+json"
        try:
            await asyncio.wait_for(
                self.kube.request("PATCH", path, patch, content_type=strategic), API_TIMEOUT_S
            )
        except KubernetesError as exc:
            if exc.status != 404:
                raise
        run.reported = True
        log.info("job stand-in: %s exited %d", run.pod, code)

    async def _exited(self, pod: Manifest, engine: Engine) -> None:
        run = self.runs.get(pod["metadata"]["uid"])
        if run is None or run.reported:
            return
        try:
            await self._report_exit(pod, run)
        except (KubernetesError, TimeoutError) as exc:  # the removal goes ahead regardless
            self.errors.append(f"report {run.pod}: {type(exc).__name__}: {exc}")

    # -- what tests wait on -------------------------------------------------------------

    def runs_of(self, job: str) -> list[JobRun]:
        """The runs of Job ``job``'s pods, oldest first (pod names are ``<job>-<index>-<suffix>``)."""
        return [r for r in self.runs.values() if r.pod.rsplit("-", 2)[0] == job]

    async def wait_runs(self, timeout: float, what: str, test: Callable[[list[JobRun]], Any]) -> list[JobRun]:
        """Wait until ``test(all runs)`` is truthy; fail with the runs' state and log tails."""
        deadline = time.monotonic() + timeout
        while not test(list(self.runs.values())):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.describe()}")
            await asyncio.sleep(0.2)
        return list(self.runs.values())

    def describe(self) -> str:
        rows = [f"errors: {self.errors}"]
        for r in self.runs.values():
            rows.append(f"--- {r.pod} exit {r.exit_code} reported {r.reported} ---\n{r.log_text(1500)}")
        return "\n".join(rows)


def rank_log(runs: list[JobRun], rank: int) -> JobRun:
    """The single run of ``rank`` (its ``RANK`` env) among ``runs``."""
    (run,) = [r for r in runs if r.env.get("RANK") == str(rank)]
    return run
