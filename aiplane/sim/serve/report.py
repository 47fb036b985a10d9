"""What ``aiplane sim serve`` prints and draws: JSON, a table per scenario, a PNG per scenario."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from aiplane.sim.serve.metrics import Result
from aiplane.sim.serve.scenarios import Scenario
from aiplane.sim.traces import TraceError

Outcome = tuple[Scenario, list[Result]]
COLUMNS = ("POLICY", "SLO", "P50", "P99", "GPU-H", "COLD", "DROP", "HIT", "PEAK", "S/RUN")
LEGEND = (
    "SLO: requests with TTFT within the profile's SLO (dropped ones miss); P50/P99: TTFT of served "
    "requests; GPU-H: GPU-hours of every replica that existed; COLD: replicas started; DROP: held past "
    "the cold-start timeout; HIT: prompt tokens served from the prefix cache; PEAK: most replicas at once; "
    "S/RUN: wall seconds of the replay"
)


def as_json(outcomes: Sequence[Outcome]) -> str:
    return json.dumps(
        {"scenarios": [{"name": s.name, "results": [r.row() for r in results]} for s, results in outcomes]},
        indent=2,
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    return [
        [
            r.policy,
            f"{r.slo_attainment:.1%}",
            _seconds(r.p50_ttft_s),
            _seconds(r.p99_ttft_s),
            f"{r.gpu_hours:.2f}",
            str(r.cold_starts),
            str(r.dropped),
            f"{r.prefix_hit_rate:.1%}",
            str(r.peak_replicas),
            f"{r.seconds:.1f}",
        ]
        for r in results
    ]


def _family(policy: str) -> str:
    return policy.split("@", 1)[0]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def plot(outcomes: Sequence[Outcome], directory: Path, profile: str) -> list[Path]:
    """One PNG per scenario: SLO attainment against GPU-hours (the Pareto picture), p50/p99
    TTFT, cold starts, prefix hit rate and drops per policy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TraceError("--plot needs matplotlib: pip install 'aiplane[sim]'") from None
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (scenario, results) in enumerate(outcomes):
        fig, axes = plt.subplots(2, 3, figsize=(15, 8))
        pareto, ttft, colds, hits, drops, notes = axes.flat
        families = list(dict.fromkeys(_family(r.policy) for r in results))
        colors = {f: plt.cm.tab10(k % 10) for k, f in enumerate(families)}
        for family in families:
            mine = sorted((r for r in results if _family(r.policy) == family), key=lambda r: r.gpu_hours)
            bold = family == "aiplane"
            pareto.plot(
                [r.gpu_hours for r in mine],
                [r.slo_attainment * 100 for r in mine],
                marker="o",
                color=colors[family],
                linewidth=2 if bold else 1,
                label=family,
            )
            for r in mine:
                if r.target is not None and len(mine) > 1:
                    pareto.annotate(f"{r.target:g}", (r.gpu_hours, r.slo_attainment * 100), fontsize=7)
        pareto.set_xlabel("GPU-hours")
        pareto.set_ylabel("requests within the TTFT SLO (%)")
        pareto.set_title("SLO attainment vs cost (up-left is better)")
        pareto.legend(fontsize=8, loc="best", framealpha=0.6)
        labels = [r.policy for r in results]
        x = range(len(results))
        bar_colors = [colors[_family(r.policy)] for r in results]
        ttft.bar(
            [k - 0.2 for k in x], [r.p50_ttft_s or 0 for r in results], 0.4, label="p50", color=bar_colors
        )
        ttft.bar(
            [k + 0.2 for k in x],
            [r.p99_ttft_s or 0 for r in results],
            0.4,
            label="p99",
            color=bar_colors,
            alpha=0.5,
        )
        ttft.set_yscale("log")
        ttft.set_ylabel("TTFT (s), p50 solid, p99 light")
        ttft.set_title("time to first token")
        for ax, values, title in (
            (colds, [r.cold_starts for r in results], "cold starts"),
            (hits, [r.prefix_hit_rate * 100 for r in results], "prefix hit rate (% of prompt tokens)"),
            (drops, [r.dropped for r in results], "dropped (held past the cold-start timeout)"),
        ):
            ax.bar(list(x), values, color=bar_colors)
            ax.set_title(title)
            ax.set_ylim(bottom=0, top=max(1.0, max(values, default=0) * 1.1))
        for ax in (ttft, colds, hits, drops):
            ax.set_xticks(list(x))
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        for ax in (pareto, ttft, colds, hits, drops):
            ax.grid(alpha=0.3)
        notes.axis("off")
        notes.text(
            0, 0.9, f"{scenario.name}\n{scenario.note}\nprofile {profile}", fontsize=9, va="top", wrap=True
        )
        fig.suptitle(f"aiplane sim serve: {scenario.name}")
        fig.tight_layout()
        path = directory / f"{i + 1:02d}-{_slug(scenario.name)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
