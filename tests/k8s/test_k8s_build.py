"""Binary resolution and the errors a user sees when a build cannot happen."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aiplane.cli.dev import app
from aiplane.dev import DevClusterError, k8s_build
from aiplane.dev import cluster as dev_cluster
from aiplane.dev.layout import COMPONENTS, SUPERVISOR, cmdline

pytestmark = pytest.mark.k8s


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No cached binaries and no reuse variables: ensure_binaries would have to build."""
    monkeypatch.setenv("AIPLANE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AIPLANE_K8S_BIN", raising=False)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    return tmp_path / "cache"


def _fake_bins(d: Path, names: tuple[str, ...]) -> None:
    d.mkdir(parents=True)
    for n in names:
        (d / n).write_text("#!/bin/sh\necho fake\n")
        (d / n).chmod(0o755)


def test_missing_go_says_what_to_install(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIPLANE_GO", raising=False)
    monkeypatch.setenv("PATH", str(empty_cache))  # no `go` anywhere
    monkeypatch.setattr(k8s_build, "GO_FALLBACKS", ())
    with pytest.raises(DevClusterError) as e:
        k8s_build.ensure_binaries(log=lambda _: None)
    msg = str(e.value)
    assert "no Go toolchain found" in msg
    assert "https://go.dev/dl/" in msg and "AIPLANE_GO" in msg and "AIPLANE_K8S_BIN" in msg


def test_cli_reports_the_error_without_traceback(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(empty_cache))
    monkeypatch.setenv("AIPLANE_GO", str(empty_cache / "nope"))
    monkeypatch.setattr(k8s_build, "GO_FALLBACKS", ())
    result = CliRunner().invoke(app, ["build-k8s"])
    assert result.exit_code == 1
    assert "no Go toolchain found" in result.output
    assert "Traceback" not in result.output


def test_unreachable_module_proxy_names_goproxy_and_the_escape_hatch(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOPROXY", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("GOSUMDB", "off")
    started = time.monotonic()
    with pytest.raises(DevClusterError) as e:
        k8s_build.ensure_binaries(log=lambda _: None)
    msg = str(e.value)
    assert "cannot reach the Go module proxy (GOPROXY=http://127.0.0.1:9)" in msg
    assert "AIPLANE_K8S_BIN" in msg
    assert time.monotonic() - started < 60


def test_aiplane_k8s_bin_is_used_and_nothing_is_built(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_bins(tmp_path / "bin", k8s_build.BINARIES)
    monkeypatch.setenv("AIPLANE_K8S_BIN", str(tmp_path / "bin"))
    monkeypatch.setattr(k8s_build, "find_go", _no_build)
    bins = k8s_build.ensure_binaries(log=lambda _: None)
    assert {b.source for b in bins.values()} == {"reused"}
    assert bins["kwok"].path == tmp_path / "bin" / "kwok"


def test_incomplete_aiplane_k8s_bin_names_what_is_missing(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_bins(tmp_path / "bin", ("etcd", "kube-apiserver"))
    monkeypatch.setenv("AIPLANE_K8S_BIN", str(tmp_path / "bin"))
    with pytest.raises(DevClusterError, match="lacks kube-controller-manager, kube-scheduler, kwok"):
        k8s_build.ensure_binaries(log=lambda _: None)


def test_cached_binaries_are_found_without_building() -> None:
    """After the session's build, a rerun is only version checks."""
    started = time.monotonic()
    bins = k8s_build.ensure_binaries(build=False, log=lambda _: None)
    assert set(bins) == set(k8s_build.BINARIES)
    assert time.monotonic() - started < 10
    apiserver = k8s_build.binary_version(bins["kube-apiserver"].path)
    assert apiserver == f"Kubernetes {k8s_build.KUBERNETES_VERSION}"


def test_apiserver_patch_changes_one_line_and_refuses_moved_text() -> None:
    """APISERVER_PATCH against the real v1.33 source (in the module cache after the build)."""
    gomodcache = k8s_build.cache_root() / "go" / "pkg" / "mod"
    module = gomodcache / "k8s.io" / f"kubernetes@{k8s_build.KUBERNETES_VERSION}"
    original = (module / k8s_build.VALIDATION_GO).read_text()
    patched = k8s_build.patched_validation(original)
    changed = [(a, b) for a, b in zip(original.splitlines(), patched.splitlines(), strict=True) if a != b]
    assert changed == [("\tif ip.IsLoopback() {", "\tif ip.IsLoopback() && !aiplaneDevPodIP(ip) {")]
    with pytest.raises(DevClusterError, match="update the patch"):
        k8s_build.patched_validation(original.replace("ip.IsLoopback()", "isLoopback(ip)"))


def test_an_unpatched_cached_apiserver_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = k8s_build.bin_dir(k8s_build.Versions()) / "kube-apiserver"
    assert k8s_build.patch_stamp(cached).read_text().strip() == k8s_build.APISERVER_PATCH
    monkeypatch.setattr(k8s_build, "APISERVER_PATCH", "another-patch")
    assert "kube-apiserver" not in k8s_build._cached(k8s_build.Versions(), ["kube-apiserver"])


def test_up_is_fast_and_down_leaves_no_process(tmp_path: Path) -> None:
    root = tmp_path / "c"
    info = dev_cluster.up(
        root, gpu_nodes=["1x8:L4"], cpu_nodes=1, bind_to_pid=os.getpid(), build=False, log=print
    )
    try:
        assert info.seconds < 30, f"cluster up took {info.seconds:.1f}s"
        st = dev_cluster.status(root)
        assert st.ready and (st.nodes_ready, st.nodes_total) == (2, 2)
        assert all(st.pids[n] for n in (SUPERVISOR, *COMPONENTS)), st.pids
        pids = [p for p in st.pids.values() if p]
    finally:
        stopped = dev_cluster.down(root, log=print)
    assert set(pids) <= set(stopped)
    assert not [p for p in pids if str(root) in cmdline(p)], "processes survived down"
    after = dev_cluster.status(root)
    assert not after.running and not any(after.pids.values())


def _no_build() -> Path:
    raise AssertionError("must not look for Go when binaries are reused")
