"""``aiplane sim schedule``: the trace format, the replay protocol, the CLI, and the FGD paper's table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aiplane.cli.main import app
from aiplane.policies.scheduling.fleet import NodeShape, PodShape
from aiplane.sim import report, schedule, traces

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces" / "alibaba-gpu-2023"
NODES_CSV = "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,65536,4,T4\nn1,64000,131072,8,V100M32\n"
PODS_CSV = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
    "p0,4000,8192,1,1000,\np1,2000,4096,1,500,T4\np2,8000,16384,2,1000,V100M16|V100M32\np3,1000,1024,0,0,\n"
)


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    nodes, pods = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    nodes.write_text(NODES_CSV)
    pods.write_text(PODS_CSV)
    return nodes, pods


def test_reads_any_list_in_the_format_with_optional_columns_missing(small: tuple[Path, Path]) -> None:
    nodes, pods = small
    assert [n.gpus for n in traces.read_nodes(nodes)] == [4, 8]
    shapes = [p.shape for p in traces.read_pods(pods)]
    assert [(s.gpus, s.gpu_milli, s.gpu_spec) for s in shapes] == [
        (1, 1000, ""),
        (1, 500, "T4"),
        (2, 1000, "V100M16|V100M32"),
        (0, 0, ""),
    ]
    assert traces.read_pods(pods)[0].created is None


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("p9,x,1,1,1000", "pods.csv:6: column cpu_milli: expected an integer, got 'x'"),
        ("p9,1,1,1,1500", "pods.csv:6: column gpu_milli: expected 0-1000 (per GPU), got 1500"),
        ("p9,1,1,2,500", "pods.csv:6: column gpu_milli: a pod of 2 GPUs takes them whole (1000)"),
        ("p9,1,-4,1,500", "pods.csv:6: column memory_mib: expected >= 0, got -4"),
    ],
)
def test_a_bad_row_names_file_line_and_column(small: tuple[Path, Path], row: str, message: str) -> None:
    _, pods = small
    pods.write_text(PODS_CSV + row + "\n")
    with pytest.raises(traces.TraceError) as exc:
        traces.read_pods(pods)
    assert str(exc.value).endswith(message)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text("sn,cpu\nn0,1\n")
    with pytest.raises(traces.TraceError, match="missing column\\(s\\) cpu_milli, memory_mib, gpu, model"):
        traces.read_nodes(path)


def test_tune_scales_gpu_demand_to_the_ratio() -> None:
    pods = [PodShape(gpus=1, gpu_milli=1000), PodShape(gpus=1, gpu_milli=500), PodShape(cpu_milli=1)]
    tuned = schedule.tune(pods, 100_000, 1.3, np.random.default_rng(1))
    demand = sum(p.total_milli for p in tuned)
    assert 130_000 - 1000 < demand <= 130_000
    assert tuned[:3] == pods  # the list itself, topped up
    fewer = schedule.tune([PodShape(gpus=1, gpu_milli=1000)] * 10, 4000, 1.3, np.random.default_rng(1))
    assert sum(p.total_milli for p in fewer) == 5000


def test_replay_records_allocation_after_each_percent_of_arrival() -> None:
    nodes = [NodeShape(f"n{i}", 64_000, 262_144, 8, "G2") for i in range(4)]
    pods = [PodShape(f"p{i}", 4000, 1024, 1, 1000) for i in range(8)]  # whole GPUs: all fit until full
    curve = schedule.replay(nodes, pods, "best-fit", 42)
    assert len(curve.allocated) == 131
    assert curve.allocated[50] == pytest.approx(0.5, abs=1 / 32)
    assert curve.allocated[100] == 1.0 and curve.allocated[130] == 1.0
    assert curve.failed == curve.pods - 32
    assert np.all(np.diff(curve.allocated) >= 0)


def test_cli_prints_json_rows_per_policy_and_arrival(small: tuple[Path, Path], tmp_path: Path) -> None:
    nodes, pods = small
    png = tmp_path / "curves.png"
    result = CliRunner().invoke(
        app,
        [
            "sim",
            "schedule",
            "--nodes",
            str(nodes),
            "--pods",
            str(pods),
            "--policies",
            "aiplane,fgd,random",
            "--seeds",
            "2",
            "--json",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["results"]
    assert {r["policy"] for r in rows} == {"aiplane", "fgd", "random"}
    for policy in ("aiplane", "fgd", "random"):
        arrivals = {r["arrival"]: r for r in rows if r["policy"] == policy}
        assert {0.8, 0.9, 1.0, 1.3} <= arrivals.keys()
        assert all(0 < r["allocated_gpu_share"] <= 1 and r["seed_count"] == 2 for r in arrivals.values())
        assert all(0 <= r["fragmentation_rate"] <= 1 for r in arrivals.values())
    assert png.stat().st_size > 10_000


def test_cli_errors_are_one_line(small: tuple[Path, Path]) -> None:
    nodes, pods = small
    result = CliRunner().invoke(
        app, ["sim", "schedule", "--nodes", str(nodes), "--pods", str(pods), "--policies", "nope"]
    )
    assert result.exit_code == 2 and "unknown policy 'nope'" in result.output


@pytest.mark.skipif(not TRACES.is_dir(), reason="the Alibaba trace is not at ../shared/traces")
def test_baselines_reproduce_the_papers_table_and_aiplane_beats_fgd() -> None:
    """One seed of the default list (the docs hold ten seeds and all four lists)."""
    nodes = traces.read_nodes(TRACES / "openb_node_list_gpu_node.csv")
    pods = [p.shape for p in traces.read_pods(TRACES / "openb_pod_list_default.csv")]
    paper = report.paper_means(TRACES / "fgd_paper_alloc.csv", "openb_pod_list_default")
    ours = {}
    for policy in ("fgd", "best-fit", "gpu-packing", "random", "aiplane"):
        curve = schedule.replay(nodes, pods, policy, 42)
        ours[policy] = curve.allocated[100], curve.allocated[130]
        if policy in paper:
            assert ours[policy][0] == pytest.approx(paper[policy][1.0], abs=0.015), policy
    assert ours["aiplane"][0] > ours["fgd"][0] and ours["aiplane"][1] > ours["fgd"][1]


def test_departures_queue_then_preempt_for_high_priority(tmp_path: Path) -> None:
    """Two 4-GPU nodes. BE pods borrow the LS queue's idle quota to fill them; the LS pod
    arrives, reclaims its quota by evicting one, which is requeued and runs later."""
    from aiplane.sim import departures

    nodes = [NodeShape("n0", 64_000, 262_144, 4, "T4"), NodeShape("n1", 64_000, 262_144, 4, "T4")]
    rows = [
        ("be0", 4, "BE", 0, 1000),
        ("be1", 4, "BE", 0, 1000),
        ("ls0", 4, "LS", 10, 3010),
        ("be2", 4, "BE", 30, 40),
    ]
    pods = [
        traces.TracePod(PodShape(name, 1000, 1024, g, 1000), qos, float(c), float(d))
        for name, g, qos, c, d in rows
    ]
    stats = departures.replay_departures(nodes, pods, "aiplane", 42, load=16 / 8)
    assert stats.preemptions == 1
    assert stats.never_started == 0  # the evicted BE pod and be2 run once the LS pod is gone
    assert stats.p95_wait_s > 0
    assert 0 < stats.gpu_utilisation <= 1


def test_departures_need_times(small: tuple[Path, Path]) -> None:
    from aiplane.sim import departures

    nodes, pods = small
    with pytest.raises(traces.TraceError, match="need creation_time and deletion_time"):
        departures.replay_departures(traces.read_nodes(nodes), traces.read_pods(pods), "fgd", 42)
