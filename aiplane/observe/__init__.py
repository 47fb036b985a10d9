"""Observability: the one metrics catalogue, the GPU exporter under DCGM's names, the
dashboards and alert rules generated from the catalogue, ``aiplane top`` and
``aiplane report``."""
