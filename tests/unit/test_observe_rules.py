"""The alert and recording rules: the committed file is the generator's output, Prometheus's
own promtool accepts it and passes its unit tests (deploy/prometheus/tests, written by
hand against the rules' meaning), and every rule names only series that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from aiplane.dev.prometheus import PrometheusMissing, binary
from aiplane.observe import catalogue as c
from aiplane.observe import queries as q
from aiplane.observe import rules

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "deploy" / "prometheus" / "aiplane-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "aiplane-rules-test.yaml"
# PromQL's own words an identifier regex also finds
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "by", "on", "and", "or", "unless", "group_left", "rate",
    "increase", "histogram_quantile", "le", "without", "ignoring",
}  # fmt: skip


def promtool() -> Path:
    try:
        return binary("promtool")
    except PrometheusMissing as exc:
        pytest.skip(str(exc))


def test_the_committed_rules_are_the_generated_ones() -> None:
    assert COMMITTED.read_text() == rules.rules_yaml(), (
        "deploy/prometheus/aiplane-rules.yaml is stale: python -m aiplane.observe.rules "
        "deploy/prometheus/aiplane-rules.yaml"
    )


def test_promtool_checks_the_rules_and_passes_their_unit_tests() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", COMMITTED], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", check.stdout)
    assert found and int(found.group(1)) == len(rules.recording_rules()) + len(rules.alerts())
    tested = subprocess.run(
        [tool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, cwd=RULE_TESTS.parent
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert fired == {a.name for a in rules.alerts()}


def test_rules_name_only_catalogue_series_recordings_and_prometheus_own() -> None:
    known = {m.name for m in c.CATALOGUE.values()}
    known |= {
        f"{m.name}_{s}"
        for m in c.CATALOGUE.values()
        if m.kind == "histogram"
        for s in ("bucket", "count", "sum")
    }
    known |= rules.recording_names() | {q.UP, q.ALERTS}
    for expr in rules.rule_exprs():
        # drop label matchers and label lists, then what is left that looks like a name
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
        bare = re.sub(r"(by|on|without|ignoring|group_left)\s*\([^)]*\)", " ", bare)
        names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare)) - PROMQL_WORDS
        assert names <= known, (expr, names - known)


def test_slo_thresholds_follow_the_workbook() -> None:
    """14.4x over 1 h spends 2 % of a 30-day budget; 6x over 6 h spends 5 %."""
    fast, slow = rules.BURNS
    assert fast.factor * 1 / (30 * 24) == pytest.approx(0.02)
    assert slow.factor * 6 / (30 * 24) == pytest.approx(0.05)
    by_name = {a.name: a for a in rules.alerts()}
    assert "> (14.4 * (1 - 0.999))" in by_name["AiplaneErrorBudgetBurnFast"].expr
    assert f'le="{rules.TTFT_SLO_SECONDS}"' in by_name["AiplaneTtftBudgetBurnFast"].signal or any(
        f'le="{rules.TTFT_SLO_SECONDS}"' in r["expr"] for r in rules.recording_rules()
    )
    assert float(rules.TTFT_SLO_SECONDS) in c.LATENCY_BUCKETS  # the SLO bound is a bucket bound
