"""``aiplane sim``: replay real traces against aiplane's policies and the baselines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aiplane.cli.output import console, err_console, table

if TYPE_CHECKING:  # the simulator (numpy) loads only when a sim command runs
    from aiplane.policies.scheduling.fleet import NodeShape
    from aiplane.sim.traces import TracePod

app = typer.Typer(
    help="Simulators: replay traces against aiplane's policies and baselines.", no_args_is_help=True
)

DEFAULT_POLICIES = "aiplane,fgd,best-fit,gpu-packing,gpu-clustering,dot-product,spread,random"


@app.command("schedule")
def schedule_cmd(
    nodes: Annotated[Path, typer.Option(help="node list CSV: sn,cpu_milli,memory_mib,gpu,model")],
    pods: Annotated[
        Path, typer.Option(help="pod list CSV: name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]")
    ],
    policies: Annotated[str, typer.Option(help="comma-separated placement policies")] = DEFAULT_POLICIES,
    seeds: Annotated[int, typer.Option(min=1, help="runs per policy (seeds 42, 43, ...), averaged")] = 1,
    ratio: Annotated[
        float, typer.Option(min=0.1, max=10.0, help="GPU demand to replay, x cluster capacity")
    ] = 1.3,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON rows instead of a table")] = False,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of the allocation curves")] = None,
    paper: Annotated[
        Path | None,
        typer.Option(help="the FGD artifact's result table (fgd_paper_alloc.csv), shown beside ours"),
    ] = None,
    departures: Annotated[
        bool,
        typer.Option("--departures", help="replay in time: arrivals, departures, queues, quotas, preemption"),
    ] = False,
    load: Annotated[
        float,
        typer.Option(
            min=0.1, max=10.0, help="with --departures: peak GPU demand x the replayed slice's GPUs"
        ),
    ] = 1.25,
) -> None:
    """Place a GPU pod list one pod at a time, as the FGD paper's artifact does, per policy.

    Reports the share of GPU capacity allocated after 80%, 90%, 100% and 130% of it has
    been requested, averaged over seeds, and the fragmentation rate of the idle GPUs.
    """
    from aiplane.sim import report, schedule, traces

    names = [p.strip() for p in policies.split(",") if p.strip()]
    node_list = traces.read_nodes(nodes)
    if departures:
        _departures(node_list, traces.read_pods(pods), names, seeds, load, json_out)
        return
    pod_list = [p.shape for p in traces.read_pods(pods)]
    published = report.paper_means(paper, pods.stem) if paper else {}
    try:
        with err_console.status("simulating") as status:

            def progress(c: schedule.Curve) -> None:
                status.update(f"simulating: {c.policy} seed {c.seed} done in {c.seconds:.1f}s")

            curves = schedule.run(node_list, pod_list, names, seeds, ratio=ratio, progress=progress)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if plot:
        report.plot(curves, plot, f"{pods.name} on {nodes.name}: {seeds} seed(s), {ratio:g}x demand")
    if json_out:
        console.print_json(report.as_json(schedule.summarize(curves, report.JSON_ARRIVALS)))
        return
    arrivals = [a for a in report.TABLE_ARRIVALS if a <= ratio + 1e-9]
    t = table(
        "POLICY",
        *(f"{a:.0%}" for a in arrivals),
        "FRAG@100%",
        "FAILED",
        "S/RUN",
        *(["PAPER@100%"] if published else []),
    )
    rows = schedule.summarize(curves, [*arrivals, 1.0])
    for policy in dict.fromkeys(c.policy for c in curves):
        mine = {r.arrival: r for r in rows if r.policy == policy}
        runs = [c for c in curves if c.policy == policy]
        cells = [f"{mine[a].allocated_gpu_share:.2%}" for a in arrivals]
        failed = sum(c.failed for c in runs) / len(runs)
        seconds = sum(c.seconds for c in runs) / len(runs)
        extra = [f"{published[policy][1.0]:.2%}" if policy in published else "-"] if published else []
        t.add_row(
            policy, *cells, f"{mine[1.0].fragmentation_rate:.1%}", f"{failed:.0f}", f"{seconds:.1f}", *extra
        )
    console.print(t)
    if plot:
        console.print(f"plot: {plot}")


def _departures(
    nodes: list[NodeShape], pods: list[TracePod], names: list[str], seeds: int, load: float, json_out: bool
) -> None:
    from aiplane.policies.scheduling import scorers
    from aiplane.policies.scheduling.fragmentation import TargetWorkload
    from aiplane.sim import departures

    try:
        scorers.make(names, TargetWorkload.from_pods([p.shape for p in pods]))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    stats = []
    with err_console.status("simulating") as status:
        for name in names:
            for seed in range(42, 42 + seeds):
                stats.append(departures.replay_departures(nodes, pods, name, seed, load=load))
                status.update(f"simulating: {name} seed {seed} done in {stats[-1].seconds:.1f}s")
    if json_out:
        console.print_json(json.dumps({"results": [dataclasses.asdict(s) for s in stats]}))
        return
    t = table("POLICY", "GPU UTIL", "WAIT MEAN", "WAIT P95", "PREEMPTIONS", "NEVER STARTED", "S/RUN")
    for name in names:
        mine = [s for s in stats if s.policy == name]
        n = len(mine)
        t.add_row(
            name,
            f"{sum(s.gpu_utilisation for s in mine) / n:.1%}",
            f"{sum(s.mean_wait_s for s in mine) / n:.0f}s",
            f"{sum(s.p95_wait_s for s in mine) / n:.0f}s",
            f"{sum(s.preemptions for s in mine) / n:.0f}",
            f"{sum(s.never_started for s in mine) / n:.0f}",
            f"{sum(s.seconds for s in mine) / n:.1f}",
        )
    console.print(t)


@app.command("serve")
def serve_cmd(
    trace: Annotated[
        Path,
        typer.Option(
            help="request trace: Azure LLM CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or Mooncake JSONL"
        ),
    ],
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    plot: Annotated[Path | None, typer.Option(help="write a PNG per scenario into this directory")] = None,
    profile: Annotated[str, typer.Option(help="replica calibration: h100-llama3-8b, smollm2-llamacpp")] = (
        "h100-llama3-8b"
    ),
    policies: Annotated[
        str | None,
        typer.Option(
            help="comma-separated policies (default all). Autoscaling: aiplane, hpa-cpu, "
            "hpa-concurrency, kubeai, knative, keda. Routing: aiplane, least-load, power-of-two, "
            "round-robin, random, chwbl, oracle"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="replay only the trace's first N requests")] = None,
    scenario: Annotated[
        str,
        typer.Option(help="auto (autoscaling, and routing for traces with prefixes), autoscaling, routing"),
    ] = "auto",
    multipliers: Annotated[
        str | None, typer.Option(help="autoscaling rate multipliers, e.g. 1,4,16 (default: chosen per trace)")
    ] = None,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="run each autoscaler at several targets (Pareto)")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed of the random router")] = 0,
    cold_start_timeout: Annotated[
        float, typer.Option(min=0.0, help="seconds a request waits for a replica before it is dropped")
    ] = 120.0,
) -> None:
    """Replay an LLM request trace against simulated replicas: aiplane's autoscaler and router
    against the baselines, on the same signals the gateway gives them.

    Reports per policy the share of requests within the profile's TTFT SLO (dropped ones
    miss), p50/p99 TTFT, GPU-hours, cold starts, drops and the prefix-cache hit rate.
    """
    from aiplane.sim.serve import profiles, report, scenarios, traces

    if scenario not in ("auto", "autoscaling", "routing"):
        raise typer.BadParameter(f"unknown scenario {scenario!r} (auto, autoscaling, routing)")
    try:
        spec = profiles.profile_for(profile)
        rates = [float(m) for m in multipliers.split(",") if m.strip()] if multipliers else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if rates is not None and any(m <= 0 for m in rates):
        raise typer.BadParameter("multipliers must be > 0")
    wanted = [p.strip() for p in policies.split(",") if p.strip()] if policies else None
    known = set(scenarios.AUTOSCALERS) | set(scenarios.ROUTERS)
    if wanted and (unknown := [p for p in wanted if p not in known]):
        raise typer.BadParameter(f"unknown policy {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        replay = traces.read_trace(trace, limit=limit)
    except traces.TraceError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None

    plan: list[tuple[scenarios.Scenario, list[str]]] = []
    if scenario in ("auto", "autoscaling"):
        names = [p for p in (wanted or scenarios.AUTOSCALERS) if p in scenarios.AUTOSCALERS]
        if names:
            plan += [(s, names) for s in scenarios.autoscaling_scenarios(replay, spec, rates)]
    if scenario == "routing" or (scenario == "auto" and replay.has_prefixes):
        names = [p for p in (wanted or scenarios.ROUTERS) if p in scenarios.ROUTERS]
        if names:
            plan.append((scenarios.routing_scenario(replay, spec, None), names))
    if not plan:
        raise typer.BadParameter("no scenario runs any of the policies given")

    outcomes = []
    try:
        with err_console.status("simulating") as status:
            for sc, names in plan:

                def progress(r: object, sc: scenarios.Scenario = sc) -> None:
                    status.update(f"simulating {sc.name}: {getattr(r, 'policy', '')} done")

                outcomes.append(
                    (
                        sc,
                        scenarios.run(
                            sc,
                            spec,
                            names,
                            sweep=sweep,
                            seed=seed,
                            timeout=cold_start_timeout,
                            progress=progress,
                        ),
                    )
                )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    written = report.plot(outcomes, plot, spec.name) if plot else []
    if json_out:
        console.print_json(report.as_json(outcomes))
        return
    for sc, results in outcomes:
        console.print(f"[bold]{sc.name}[/]  {sc.note}; profile {spec.name}, SLO TTFT <= {spec.ttft_slo_s:g}s")
        t = table(*report.COLUMNS)
        t.columns[0].no_wrap = True
        for row in report.table_rows(results):
            t.add_row(*row)
        console.print(t)
        console.print()
    console.print(report.LEGEND, style="dim")
    for path in written:
        console.print(f"plot: {path}", soft_wrap=True)
