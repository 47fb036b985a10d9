"""The dev cluster's addresses: all on loopback, so tests can serve real traffic on pod IPs.

Linux routes all of 127.0.0.0/8 to ``lo``: a process can bind ``127.16.0.5`` with no setup,
and nothing sent there leaves the machine.
"""

from __future__ import annotations

POD_CIDR = "127.16.0.0/16"
"""Where KWOK's pod IPs come from (``KwokConfiguration.options.cidr``; the nodes have no
``spec.podCIDR``, which KWOK would prefer). Upstream kube-apiserver rejects every loopback
address in Endpoints and EndpointSlices; the dev build accepts this range, and only it
(``k8s_build.APISERVER_PATCH``)."""

FIRST_POD_IP = "127.16.0.1"
"""KWOK hands out pod IPs counting up from this one (and reuses freed ones)."""

NODE_IP = "127.0.0.1"
"""Every fake node's InternalIP and every pod's hostIP: loopback too, so nothing that
dials a "kubelet" (logs, exec) can reach outside the machine."""
