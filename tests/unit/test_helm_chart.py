"""The committed Helm chart is exactly what `aiplane install --helm-chart` generates."""

from __future__ import annotations

from pathlib import Path

import yaml

from aiplane.runtime.kubernetes.helm import chart_files

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "aiplane"


def test_committed_chart_matches_the_generator() -> None:
    files = chart_files()
    on_disk = {str(p.relative_to(CHART)): p.read_text() for p in CHART.rglob("*") if p.is_file()}
    assert on_disk == files, "regenerate with: aiplane install --helm-chart deploy/helm/aiplane"


def test_chart_templates_parameterise_namespace_and_image() -> None:
    templates = chart_files()["templates/aiplane.yaml"]
    assert "{{ .Release.Namespace }}" in templates and "{{ .Values.image }}" in templates
    assert "aiplane-helm-namespace-mark" not in templates and "aiplane-helm-image-mark" not in templates
    crds = list(yaml.safe_load_all(chart_files()["crds/aiplane-crds.yaml"]))
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "batchjobs.aiplane.dev",
        "models.aiplane.dev",
        "queues.aiplane.dev",
        "trainingjobs.aiplane.dev",
    ]
