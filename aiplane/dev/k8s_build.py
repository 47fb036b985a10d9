"""Build etcd, the Kubernetes control plane and KWOK from Go modules into a versioned cache.

Why from modules: this machine (and CI) may reach the Go module proxy but not dl.k8s.io or
GitHub releases, and has no Docker. `k8s.io/kubernetes` cannot be `go install`ed (its go.mod
replaces every `k8s.io/*` staging module with a local path, kubernetes/kubernetes#79384), so
a small wrapper module requires it and points each staging module at its `v0.Y.Z` release.
etcd's root module has replace directives too, so it gets a one-file wrapper around
`etcdmain.Main`. KWOK installs as is.

One source change, to kube-apiserver only (``APISERVER_PATCH``): Endpoints and
EndpointSlices may list addresses in the dev cluster's loopback pod range
(``network.POD_CIDR``), which upstream validation rejects for all of 127.0.0.0/8. It is
applied with ``go build -overlay`` (the module cache stays pristine) and recorded in
``bin/kube-apiserver.patch``, so an unpatched cached binary is rebuilt.

Binaries land in ``<cache>/k8s/<kubernetes version>/bin``; one already there with the right
``--version`` is kept, so a rerun is a few version checks. A directory named by
``AIPLANE_K8S_BIN`` (all binaries) or ``KUBEBUILDER_ASSETS`` (any of them) is used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiplane.dev import DevClusterError
from aiplane.dev.network import POD_CIDR

KUBERNETES_VERSION = "v1.33.13"
ETCD_VERSION = "v3.5.35"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.17.3"  # only for validating and applying the Helm chart in tests
MIN_GO = (1, 24)  # what k8s.io/kubernetes v1.33 declares in its go.mod

K8S_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = ("etcd", *K8S_COMPONENTS, "kwok")

GO_FALLBACKS = ("/usr/local/go/bin/go",)  # the official tarball's location
GO_STEP_TIMEOUT_S = 3600.0  # one `go build` of kube-apiserver on 2 busy cores is ~15 min
VERSION_TIMEOUT_S = 20.0

Log = Callable[[str], None]
Source = Literal["built", "cached", "reused"]

# -- the one patch: loopback pod IPs in Endpoints and EndpointSlices --------------------------
#
# Upstream `ValidateEndpointIP` (pkg/apis/core/validation) rejects every loopback address in
# Endpoints, EndpointSlices and Service externalIPs, with no flag or feature gate to relax
# it. The dev cluster's pods live on loopback so tests can serve real traffic on their IPs;
# without this, the EndpointSlice controller's writes fail (422) and no Service has endpoints.

VALIDATION_GO = "pkg/apis/core/validation/validation.go"
DEV_POD_IP_GO = "pkg/apis/core/validation/aiplane_dev_pod_ip.go"
_LOOPBACK_CHECK = (
    "\tif ip.IsLoopback() {\n"
    "\t\tallErrs = append(allErrs, field.Invalid(fldPath, ipAddress, "
    '"may not be in the loopback range (127.0.0.0/8, ::1/128)"))\n'
    "\t}\n"
)
_LOOPBACK_CHECK_PATCHED = _LOOPBACK_CHECK.replace(
    "if ip.IsLoopback() {", "if ip.IsLoopback() && !aiplaneDevPodIP(ip) {"
)
_DEV_POD_IP_SOURCE = f"""\
// Added by aiplane's dev-cluster build (aiplane/dev/k8s_build.py); not part of Kubernetes.

package validation

import "net"

// aiplaneDevPodCIDR is where the dev cluster's KWOK pods get their IPs: loopback, so tests
// can run a real server on a pod's IP. ValidateEndpointIP lets Endpoints and EndpointSlices
// list these addresses; the rest of the loopback range is still rejected.
var aiplaneDevPodCIDR = func() *net.IPNet {{
	_, cidr, err := net.ParseCIDR("{POD_CIDR}")
	if err != nil {{
		panic(err)
	}}
	return cidr
}}()

func aiplaneDevPodIP(ip net.IP) bool {{ return aiplaneDevPodCIDR.Contains(ip) }}
"""
APISERVER_PATCH = hashlib.sha256(
    (VALIDATION_GO + _LOOPBACK_CHECK_PATCHED + DEV_POD_IP_GO + _DEV_POD_IP_SOURCE).encode()
).hexdigest()[:16]
"""Identifies the patch; kept beside the binary so a change to it rebuilds kube-apiserver."""


def patched_validation(original: str) -> str:
    """validation.go with `ValidateEndpointIP`'s loopback check narrowed to allow POD_CIDR.

    Fails loudly when the upstream text moved (a Kubernetes bump): the patch must be
    looked at again, never silently dropped.
    """
    start = original.find("\nfunc ValidateEndpointIP(")
    end = original.find("\n}\n", start)
    body = original[start:end] if start >= 0 and end >= 0 else ""
    if body.count(_LOOPBACK_CHECK) != 1 or original.count(_LOOPBACK_CHECK) != 1:
        raise DevClusterError(
            f"cannot patch {VALIDATION_GO}: ValidateEndpointIP's loopback check is not where "
            "aiplane/dev/k8s_build.py expects it (a new Kubernetes version?); update the patch"
        )
    return original.replace(_LOOPBACK_CHECK, _LOOPBACK_CHECK_PATCHED)


def patch_stamp(binary: Path) -> Path:
    return binary.with_name(binary.name + ".patch")


@dataclass(frozen=True)
class Versions:
    """The pinned set; one cache directory per Kubernetes version."""

    kubernetes: str = KUBERNETES_VERSION
    etcd: str = ETCD_VERSION
    kwok: str = KWOK_VERSION

    def marker(self, name: str) -> str:
        """The text `<name> --version` prints when the binary is the pinned one."""
        if name == "etcd":
            return f"etcd Version: {self.etcd.removeprefix('v')}"
        if name == "kwok":
            return self.kwok.removeprefix("v")
        return f"Kubernetes {self.kubernetes}"


@dataclass(frozen=True)
class Binary:
    name: str
    path: Path
    source: Source
    seconds: float = 0.0  # build time, 0 unless built now


def cache_root() -> Path:
    """``$AIPLANE_CACHE``, else ``$XDG_CACHE_HOME/aiplane``, else ``~/.cache/aiplane``."""
    if env := os.environ.get("AIPLANE_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "aiplane"


def version_dir(versions: Versions) -> Path:
    return cache_root() / "k8s" / versions.kubernetes


def bin_dir(versions: Versions) -> Path:
    return version_dir(versions) / "bin"


def binary_version(path: Path) -> str:
    """Everything `<path> --version` prints; empty if it does not run."""
    try:
        out = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout + out.stderr).strip()


def _is_exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _reused(log: Log) -> dict[str, Binary]:
    """Binaries from AIPLANE_K8S_BIN (must hold all) or KUBEBUILDER_ASSETS (any subset)."""
    found: dict[str, Binary] = {}
    if env := os.environ.get("AIPLANE_K8S_BIN"):
        d = Path(env).expanduser()
        missing = [n for n in BINARIES if not _is_exe(d / n)]
        if missing:
            raise DevClusterError(
                f"AIPLANE_K8S_BIN={d} lacks {', '.join(missing)}; it must hold "
                f"{', '.join(BINARIES)} (or unset it to build them from Go modules)"
            )
        return {n: Binary(n, d / n, "reused") for n in BINARIES}
    if env := os.environ.get("KUBEBUILDER_ASSETS"):
        d = Path(env).expanduser()
        found = {n: Binary(n, d / n, "reused") for n in BINARIES if _is_exe(d / n)}
        if found:
            log(f"KUBEBUILDER_ASSETS={d}: using {', '.join(found)}")
    return found


def _cached(versions: Versions, names: list[str]) -> dict[str, Binary]:
    out: dict[str, Binary] = {}
    for name in names:
        path = bin_dir(versions) / name
        if name == "kube-apiserver" and not _stamped(path):
            continue  # unpatched (built before the patch, or another patch): rebuild
        if _is_exe(path) and versions.marker(name) in binary_version(path):
            out[name] = Binary(name, path, "cached")
    return out


def _stamped(path: Path) -> bool:
    try:
        return patch_stamp(path).read_text().strip() == APISERVER_PATCH
    except OSError:
        return False


def ensure_binaries(
    versions: Versions = Versions(), *, build: bool = True, log: Log = print
) -> dict[str, Binary]:
    """Return every control-plane binary, building what is missing when `build` is set."""
    have = _reused(log)
    have |= _cached(versions, [n for n in BINARIES if n not in have])
    missing = [n for n in BINARIES if n not in have]
    if not missing:
        return have
    if not build:
        raise DevClusterError(
            f"missing {', '.join(missing)} for Kubernetes {versions.kubernetes}: run "
            "`aiplane dev build-k8s` (a cold build takes 20-40 min), or set AIPLANE_K8S_BIN "
            "to a directory that holds them"
        )
    builder = _Builder(versions, log)
    for name in missing:
        have[name] = builder.build(name)
    builder.record(have)
    return have


def helm_version(path: Path) -> str:
    try:
        out = subprocess.run(
            [str(path), "version", "--short"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def ensure_helm(versions: Versions = Versions(), *, build: bool = True, log: Log = print) -> Path:
    """helm from $AIPLANE_HELM, the cache, or built once from the Go module proxy."""
    if env := os.environ.get("AIPLANE_HELM"):
        if not _is_exe(Path(env)):
            raise DevClusterError(f"AIPLANE_HELM={env} is not an executable")
        return Path(env)
    cached = bin_dir(versions) / "helm"
    if _is_exe(cached) and helm_version(cached).startswith(HELM_VERSION):
        return cached
    if not build:
        raise DevClusterError(f"helm {HELM_VERSION} is not cached: run `aiplane dev build-k8s --helm`")
    return _Builder(versions, log).build_helm(HELM_VERSION)


def find_go() -> Path:
    """The Go toolchain: $AIPLANE_GO, `go` on PATH, or /usr/local/go/bin/go."""
    candidates = [os.environ.get("AIPLANE_GO"), shutil.which("go"), *GO_FALLBACKS]
    for c in candidates:
        if c and _is_exe(Path(c)):
            return Path(c)
    raise DevClusterError(
        "no Go toolchain found (looked at $AIPLANE_GO, `go` on PATH, /usr/local/go/bin/go). "
        f"Install Go >= {MIN_GO[0]}.{MIN_GO[1]} from https://go.dev/dl/ (or your distribution's "
        "golang package) and put it on PATH or set AIPLANE_GO; or set AIPLANE_K8S_BIN to a "
        f"directory holding prebuilt {', '.join(BINARIES)}"
    )


def parse_go_version(text: str) -> tuple[int, int]:
    """(major, minor) from `go1.26.8`, `go1.24rc1` or `go version go1.24.0 linux/amd64`."""
    m = re.search(r"go(\d+)\.(\d+)", text)
    if not m:
        raise DevClusterError(f"cannot read the Go version from {text!r}")
    return int(m.group(1)), int(m.group(2))


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The `k8s.io/*` modules k8s.io/kubernetes replaces with ./staging paths."""
    pat = re.compile(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+=>\s+\./staging/", re.MULTILINE)
    return sorted(set(pat.findall(kubernetes_go_mod)))


def kubernetes_wrapper_go_mod(version: str, staging: list[str]) -> str:
    """A go.mod that builds k8s.io/kubernetes commands with staging modules from the proxy."""
    staging_version = "v0." + version.removeprefix("v").split(".", 1)[1]
    lines = [
        "module aiplane.dev/k8s-build",
        "",
        "go 1.24.0",
        "",
        "godebug default=go1.24",
        "",
        f"require k8s.io/kubernetes {version}",
        "",
        "replace (",
        *(f"\t{m} => {m} {staging_version}" for m in staging),
        ")",
        "",
    ]
    return "\n".join(lines)


def kubernetes_ldflags(version: str) -> str:
    """Stamp component-base's version so `--version` and the /version endpoint are right."""
    major, minor = version.removeprefix("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    stamps = {
        f"{pkg}.gitVersion": version,
        f"{pkg}.gitMajor": major,
        f"{pkg}.gitMinor": minor,
        f"{pkg}.gitTreeState": "clean",
        "k8s.io/client-go/pkg/version.gitVersion": version,
    }
    return " ".join(["-s", "-w", *(f"-X {k}={v}" for k, v in stamps.items())])


_TOOLS_GO = """//go:build tools

// Package tools pins the Kubernetes commands aiplane builds, so `go mod tidy` keeps them.
package tools

import (
{imports})
"""

_ETCD_MAIN = """// Command etcd is etcd's server, built from its Go module.
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


class _Builder:
    """Runs the Go toolchain with a cache of its own; one instance per ensure_binaries call."""

    def __init__(self, versions: Versions, log: Log) -> None:
        self.versions = versions
        self.log = log
        self.go = find_go()
        self.root = version_dir(versions)
        self.bin = bin_dir(versions)
        self.logs = self.root / "logs"
        for d in (self.bin, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        gocache = cache_root() / "go"
        self.env = {
            **os.environ,
            "GOPATH": str(gocache),
            "GOMODCACHE": str(gocache / "pkg" / "mod"),
            "GOCACHE": str(gocache / "cache"),
            "GOFLAGS": "-buildvcs=false",
            "GOTOOLCHAIN": "local",  # never fetch another toolchain behind the user's back
            "CGO_ENABLED": "0",
        }
        out = self._run([str(self.go), "env", "GOVERSION"], self.root, "go-version", 60)
        if parse_go_version(out) < MIN_GO:
            raise DevClusterError(
                f"{self.go} is {out.strip()}; Kubernetes {versions.kubernetes} needs Go >= "
                f"{MIN_GO[0]}.{MIN_GO[1]}: install a newer Go (https://go.dev/dl/) or set AIPLANE_GO"
            )
        self._k8s_ready = False

    def build(self, name: str) -> Binary:
        self.log(f"building {name} ...")
        start = time.monotonic()
        if name == "etcd":
            self._build_etcd()
        elif name == "kwok":
            self._build_kwok()
        else:
            self._build_kubernetes(name)
        seconds = time.monotonic() - start
        path = self.bin / name
        got = binary_version(path)
        if self.versions.marker(name) not in got:
            raise DevClusterError(f"built {path} but `--version` says {got!r}")
        self.log(f"built {name} in {seconds:.0f}s: {got.splitlines()[0] if got else '?'}")
        return Binary(name, path, "built", seconds)

    def record(self, binaries: Mapping[str, Binary]) -> None:
        """Keep the build times next to the binaries (docs quote them)."""
        path = self.root / "build.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        for b in binaries.values():
            if b.source == "built":
                old[b.name] = {"seconds": round(b.seconds, 1), "at": time.time()}
        path.write_text(json.dumps(old, indent=2) + "\n")

    # -- steps ---------------------------------------------------------------------------

    def _run(self, cmd: list[str], cwd: Path, step: str, timeout: float, env: Mapping[str, str] = {}) -> str:
        """Run one Go command, logging to logs/<step>.log; raise with its tail on failure."""
        log_path = self.logs / f"{step}.log"
        try:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env={**self.env, **env},
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise DevClusterError(f"`{' '.join(cmd)}` took over {timeout:.0f}s; gave up") from e
        log_path.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            raise DevClusterError(_explain_go_failure(cmd, proc.stderr or proc.stdout, log_path))
        return proc.stdout

    def _download(self, module: str, step: str) -> dict[str, str]:
        out = self._run([str(self.go), "mod", "download", "-json", module], self.root, step, 900)
        info: dict[str, str] = json.loads(out)
        if info.get("Error"):
            raise DevClusterError(f"cannot fetch {module}: {info['Error']}")
        return info

    def _go_build(self, src: Path, pkg: str, name: str, ldflags: str, extra: list[str] | None = None) -> None:
        tmp = self.bin / f".{name}.tmp"
        cmd = [str(self.go), "build", "-trimpath", *(extra or []), "-ldflags", ldflags, "-o", str(tmp), pkg]
        self._run(cmd, src, f"{name}-build", GO_STEP_TIMEOUT_S)
        tmp.replace(self.bin / name)  # atomic: an interrupted build never leaves a half binary

    def _apiserver_flags(self) -> list[str]:
        """`go build` flags that apply APISERVER_PATCH with an overlay.

        Go refuses overlays of files in the module cache, so the apiserver builds from a
        second module file (``go.apiserver.mod``, the tidied go.mod plus one replace) that
        points k8s.io/kubernetes at a symlink to the same pristine module directory;
        the overlay then swaps one file and adds one under that link. Nothing is copied
        and the module cache is never written.
        """
        src = self._k8s_src
        link = src / "k8s-module"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(self._k8s_dir, target_is_directory=True)
        gomod = (src / "go.mod").read_text().rstrip("\n")
        (src / "go.apiserver.mod").write_text(f"{gomod}\n\nreplace k8s.io/kubernetes => ./{link.name}\n")
        shutil.copyfile(src / "go.sum", src / "go.apiserver.sum")
        d = src / "overlay"
        d.mkdir(exist_ok=True)
        (d / "validation.go").write_text(
            patched_validation((Path(self._k8s_dir) / VALIDATION_GO).read_text())
        )
        (d / "aiplane_dev_pod_ip.go").write_text(_DEV_POD_IP_SOURCE)
        replace = {
            str(link / VALIDATION_GO): str(d / "validation.go"),
            str(link / DEV_POD_IP_GO): str(d / "aiplane_dev_pod_ip.go"),
        }
        (d / "overlay.json").write_text(json.dumps({"Replace": replace}, indent=2) + "\n")
        return ["-modfile", str(src / "go.apiserver.mod"), "-overlay", str(d / "overlay.json")]

    def _build_kubernetes(self, name: str) -> None:
        v = self.versions.kubernetes
        if not self._k8s_ready:
            info = self._download(f"k8s.io/kubernetes@{v}", "kubernetes-download")
            self._k8s_dir = info["Dir"]
            staging = staging_modules(Path(info["GoMod"]).read_text())
            if not staging:
                raise DevClusterError(f"k8s.io/kubernetes@{v} go.mod lists no staging modules")
            imports = "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in K8S_COMPONENTS)
            gomod = kubernetes_wrapper_go_mod(v, staging)
            self._k8s_src = self._tidy_once(
                "kubernetes", gomod, {"tools.go": _TOOLS_GO.format(imports=imports)}
            )
            self._k8s_ready = True
        self.log(f"  go build k8s.io/kubernetes/cmd/{name}")
        pkg, flags = f"k8s.io/kubernetes/cmd/{name}", kubernetes_ldflags(v)
        if name != "kube-apiserver":
            self._go_build(self._k8s_src, pkg, name, flags)
            return
        patch_stamp(self.bin / name).unlink(missing_ok=True)
        self._go_build(self._k8s_src, pkg, name, flags, self._apiserver_flags())
        patch_stamp(self.bin / name).write_text(APISERVER_PATCH + "\n")

    def _build_etcd(self) -> None:
        v = self.versions.etcd
        self._download(f"go.etcd.io/etcd/server/v3@{v}", "etcd-download")
        gomod = f"module aiplane.dev/etcd-build\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 {v}\n"
        src = self._tidy_once("etcd", gomod, {"main.go": _ETCD_MAIN})
        self._go_build(src, ".", "etcd", "-s -w")

    def build_helm(self, version: str) -> Path:
        """`go install` helm into the cache's bin directory (helm is not a control-plane binary)."""
        self.log(f"building helm {version} ...")
        start = time.monotonic()
        gobin = self.root / "src" / "helm-bin"
        gobin.mkdir(parents=True, exist_ok=True)
        flags = f"-s -w -X helm.sh/helm/v3/internal/version.version={version}"
        cmd = [str(self.go), "install", "-trimpath", "-ldflags", flags, f"helm.sh/helm/v3/cmd/helm@{version}"]
        self._run(cmd, self.root, "helm-build", GO_STEP_TIMEOUT_S, {"GOBIN": str(gobin)})
        (gobin / "helm").replace(self.bin / "helm")
        self.log(f"built helm in {time.monotonic() - start:.0f}s")
        return self.bin / "helm"

    def _build_kwok(self) -> None:
        gobin = self.root / "src" / "kwok-bin"
        gobin.mkdir(parents=True, exist_ok=True)
        pkg = f"sigs.k8s.io/kwok/cmd/kwok@{self.versions.kwok}"
        cmd = [str(self.go), "install", "-trimpath", "-ldflags", "-s -w", pkg]
        self._run(cmd, self.root, "kwok-build", GO_STEP_TIMEOUT_S, {"GOBIN": str(gobin)})
        (gobin / "kwok").replace(self.bin / "kwok")

    def _tidy_once(self, name: str, gomod: str, files: Mapping[str, str]) -> Path:
        """Wrapper module in src/<name>; `go mod tidy` reruns only if what we generate changed.

        tidy rewrites go.mod (adds requirements), so the generated text is kept in go.mod.in
        and compared against that, not against the tidied go.mod.
        """
        src = self.root / "src" / name
        src.mkdir(parents=True, exist_ok=True)
        wanted = {"go.mod.in": gomod, **files}
        fresh = all((src / f).exists() and (src / f).read_text() == t for f, t in wanted.items())
        if fresh and (src / "go.sum").exists() and (src / "go.mod").exists():
            return src
        for f, t in wanted.items():
            (src / f).write_text(t)
        (src / "go.mod").write_text(gomod)
        (src / "go.mod.in").unlink()  # written last, after tidy succeeds
        self.log(f"  resolving {name} dependencies (go mod tidy)")
        self._run([str(self.go), "mod", "tidy"], src, f"{name}-tidy", 1800)
        (src / "go.mod.in").write_text(gomod)
        return src


_NETWORK_HINTS = (
    "dial tcp",
    "i/o timeout",
    "no such host",
    "connection refused",
    "proxyconnect",
    "TLS handshake timeout",
    "network is unreachable",
    "server misbehaving",
)


def _explain_go_failure(cmd: list[str], output: str, log_path: Path) -> str:
    tail = "\n".join(output.strip().splitlines()[-8:])
    if any(h in output for h in _NETWORK_HINTS):
        proxy = os.environ.get("GOPROXY", "https://proxy.golang.org,direct (default)")
        return (
            f"cannot reach the Go module proxy (GOPROXY={proxy}) while running "
            f"`{' '.join(cmd[1:4])}`:\n{tail}\nAllow access to the proxy, set GOPROXY to a "
            "reachable mirror, or set AIPLANE_K8S_BIN to a directory holding prebuilt "
            f"{', '.join(BINARIES)}. Full log: {log_path}"
        )
    if "GOTOOLCHAIN=local" in output or "requires go >=" in output:
        return (
            f"your Go is too old for a pinned module:\n{tail}\nInstall a newer Go from "
            f"https://go.dev/dl/ or set AIPLANE_GO. Full log: {log_path}"
        )
    return f"`{' '.join(cmd)}` failed:\n{tail}\nFull log: {log_path}"
