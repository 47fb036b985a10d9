"""The pure node-spec -> Node manifest and KWOK stage functions."""

from __future__ import annotations

import pytest
import yaml

from aiplane.dev import DevClusterError
from aiplane.dev import kwok_nodes as kn
from aiplane.dev.k8s_build import (
    kubernetes_ldflags,
    kubernetes_wrapper_go_mod,
    parse_go_version,
    staging_modules,
)


def test_parse_gpu_pool() -> None:
    pool = kn.parse_gpu_pool("16x8:H100")
    assert (pool.count, pool.gpus_per_node, pool.model.product) == (16, 8, "NVIDIA-H100-80GB-HBM3")
    assert kn.parse_gpu_pool(" 2 x 4 : a100 ").model.alias == "A100"


@pytest.mark.parametrize("spec", ["8:H100", "2x8", "0x8:H100", "2x0:H100", "2x17:H100", "x8:H100"])
def test_parse_gpu_pool_rejects_malformed(spec: str) -> None:
    with pytest.raises(DevClusterError, match="bad GPU pool"):
        kn.parse_gpu_pool(spec)


def test_parse_gpu_pool_rejects_unknown_model_naming_known_ones() -> None:
    with pytest.raises(DevClusterError, match=r"unknown GPU model 'V100'.*H100"):
        kn.parse_gpu_pool("1x8:V100")


def test_gpu_node_looks_like_a_gfd_labelled_tainted_node() -> None:
    (node,) = kn.gpu_nodes(kn.parse_gpu_pool("1x8:H100"))
    meta, status = node["metadata"], node["status"]
    assert meta["name"] == "gpu-h100-0"
    labels = meta["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["aiplane.dev/gpu-model"] == "H100"
    assert labels["aiplane.dev/node-pool"] == "gpu-h100"
    assert labels["type"] == "kwok"
    assert labels["kubernetes.io/hostname"] == "gpu-h100-0"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert status["capacity"]["nvidia.com/gpu"] == "8"
    assert status["allocatable"] == status["capacity"]
    assert status["capacity"]["cpu"] == "192"
    assert meta["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_smaller_gpu_hosts_scale_cpu_and_memory() -> None:
    (node,) = kn.gpu_nodes(kn.parse_gpu_pool("1x2:A100"))
    cap = node["status"]["capacity"]
    assert (cap["nvidia.com/gpu"], cap["cpu"], cap["memory"]) == ("2", "24", "288Gi")
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "a100-x2"


def test_system_nodes_have_no_gpu_and_no_taint() -> None:
    nodes = kn.system_nodes(2)
    assert [n["metadata"]["name"] for n in nodes] == ["cpu-0", "cpu-1"]
    for n in nodes:
        assert "nvidia.com/gpu" not in n["status"]["capacity"]
        assert n["spec"] == {}
        assert n["metadata"]["labels"]["aiplane.dev/node-pool"] == "system"
        assert "node-role.kubernetes.io/system" in n["metadata"]["labels"]


def test_fleet_numbers_pools_of_one_model_on_and_mixes_models() -> None:
    nodes = kn.fleet(["2x8:H100", "1x8:A100", "1x4:h100"], cpu_nodes=1)
    names = [n["metadata"]["name"] for n in nodes]
    assert names == ["cpu-0", "gpu-h100-0", "gpu-h100-1", "gpu-a100-0", "gpu-h100-2"]
    assert nodes[-1]["status"]["capacity"]["nvidia.com/gpu"] == "4"


def test_manifests_do_not_share_mutable_state() -> None:
    a, b = kn.gpu_nodes(kn.parse_gpu_pool("2x8:H100"))
    a["spec"]["taints"].clear()
    a["status"]["capacity"]["cpu"] = "1"
    assert b["spec"]["taints"] and b["status"]["capacity"]["cpu"] == "192"


def test_kwok_config_has_options_and_our_stages() -> None:
    docs = list(yaml.safe_load_all(kn.kwok_config(12345)))
    options = docs[0]
    assert options["kind"] == "KwokConfiguration"
    assert options["options"]["serverAddress"] == "127.0.0.1:12345"
    assert options["options"]["manageNodesWithLabelSelector"] == "type=kwok"
    stages = {d["metadata"]["name"]: d for d in docs[1:]}
    assert set(stages) == {
        "node-initialize",
        "node-heartbeat-with-lease",
        "pod-ready",
        "pod-complete",
        "pod-delete",
    }
    complete = stages["pod-complete"]["spec"]
    annotation = '.metadata.annotations["aiplane.dev/kwok-complete-after"]'
    assert {"key": annotation, "operator": "Exists"} in complete["selector"]["matchExpressions"]
    assert complete["delay"]["durationFrom"] == {"expressionFrom": annotation}
    assert "phase: Succeeded" in complete["next"]["statusTemplate"]
    ready = stages["pod-ready"]["spec"]["next"]["statusTemplate"]
    assert "podIP: {{ PodIPWith .spec.nodeName" in ready  # one line, not split


def test_staging_modules_and_wrapper_go_mod() -> None:
    gomod = (
        "module k8s.io/kubernetes\n\nreplace (\n"
        "\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n"
        "\tgithub.com/x/y => github.com/x/y v1.0.0\n)\n"
    )
    staging = staging_modules(gomod)
    assert staging == ["k8s.io/api", "k8s.io/client-go"]
    out = kubernetes_wrapper_go_mod("v1.33.13", staging)
    assert "require k8s.io/kubernetes v1.33.13" in out
    assert "\tk8s.io/api => k8s.io/api v0.33.13" in out
    assert "\tk8s.io/client-go => k8s.io/client-go v0.33.13" in out


def test_ldflags_stamp_the_version() -> None:
    flags = kubernetes_ldflags("v1.33.13")
    assert "-X k8s.io/component-base/version.gitVersion=v1.33.13" in flags
    assert "-X k8s.io/component-base/version.gitMajor=1" in flags
    assert "-X k8s.io/component-base/version.gitMinor=33" in flags


def test_parse_go_version() -> None:
    assert parse_go_version("go1.26.8") == (1, 26)
    assert parse_go_version("go version go1.24rc1 linux/amd64") == (1, 24)
    with pytest.raises(DevClusterError):
        parse_go_version("devel")
