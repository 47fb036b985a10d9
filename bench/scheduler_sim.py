"""Placement policies on the FGD paper's four Alibaba pod lists, beside the paper's own table.

Reads ../shared/traces/alibaba-gpu-2023/ (or --traces DIR): the node list, the pod lists
and fgd_paper_alloc.csv. For each list it runs every policy on seeds 42.. (the paper's
protocol, see aiplane/sim/schedule.py), prints allocated GPU share at 100% and 130%
arrival next to the paper's means, and writes one PNG of the curves per list and a JSON
of all rows to --out (bench/out by default).

    .venv/bin/python bench/scheduler_sim.py --seeds 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aiplane.sim import report, schedule, traces

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACES = ROOT.parent / "shared" / "traces" / "alibaba-gpu-2023"
LISTS = ("default", "multigpu20", "gpushare40", "gpuspec10")
POLICIES = ("aiplane", "fgd", "best-fit", "gpu-packing", "gpu-clustering", "dot-product", "spread", "random")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--lists", default=",".join(LISTS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    nodes_csv = args.traces / "openb_node_list_gpu_node.csv"
    if not nodes_csv.exists():
        print(f"skipped: {nodes_csv} is absent (the Alibaba 2023 trace, see ../shared/traces/README.md)")
        return 0
    nodes = traces.read_nodes(nodes_csv)
    policies = args.policies.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for name in args.lists.split(","):
        pods_csv = args.traces / f"openb_pod_list_{name}.csv"
        pods = [p.shape for p in traces.read_pods(pods_csv)]
        paper = report.paper_means(args.traces / "fgd_paper_alloc.csv", pods_csv.stem)
        started = time.perf_counter()
        curves = schedule.run(nodes, pods, policies, args.seeds)
        summary = {(r.policy, r.arrival): r for r in schedule.summarize(curves, (1.0, 1.3))}
        print(f"\n{name}: {args.seeds} seeds, {time.perf_counter() - started:.0f}s")
        print(
            f"{'policy':16s} {'ours@100':>9s} {'paper@100':>9s} {'ours@130':>9s} "
            f"{'paper@130':>9s} {'s/run':>6s}"
        )
        for policy in policies:
            runs = [c for c in curves if c.policy == policy]
            ours100, ours130 = summary[policy, 1.0], summary[policy, 1.3]
            published = paper.get(policy, {})
            p100 = f"{published[1.0]:.2%}" if published else "-"
            p130 = f"{published[1.3]:.2%}" if published else "-"
            seconds = sum(c.seconds for c in runs) / len(runs)
            print(
                f"{policy:16s} {ours100.allocated_gpu_share:9.2%} {p100:>9s} "
                f"{ours130.allocated_gpu_share:9.2%} {p130:>9s} {seconds:6.1f}"
            )
            rows.append(
                {
                    "list": name,
                    "policy": policy,
                    "seeds": args.seeds,
                    "alloc_100": ours100.allocated_gpu_share,
                    "alloc_130": ours130.allocated_gpu_share,
                    "paper_100": published.get(1.0),
                    "paper_130": published.get(1.3),
                    "frag_rate_100": ours100.fragmentation_rate,
                    "seconds_per_run": seconds,
                }
            )
        png = args.out / f"scheduler_sim_{name}.png"
        report.plot(curves, png, f"openb_pod_list_{name}: {args.seeds} seeds, mean")
        print(f"plot: {png}")
    (args.out / "scheduler_sim.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
