"""``aiplane sim serve``: a discrete-event replay of LLM request traces on simulated replicas.

It drives aiplane's own autoscaler (``decide(autoscaler_for(metric), ctx, state)``) and
routers (``router_for(name)``) through the same ``Signals`` the gateway gives them, and
the baselines (``baselines``: Kubernetes HPA on CPU and on concurrency, KubeAI, Knative
KPA, KEDA; ``oracle``: a router that knows the true caches) through the same interface.

::

    traces     Azure CSV / Mooncake JSONL -> TraceRequest
    profiles   a replica's speeds (H100 + vLLM from published figures; SmolLM2 on
               llama.cpp measured here by bench/serve_calibrate.py)
    cache      a replica's prefix cache (vLLM's block pool: pinned + LRU free blocks)
    replica    continuous batching, advanced analytically between events
    fleet      replicas starting, ready, draining, gone; GPU-seconds
    signals    Signals: the gateway's LoadTracker on virtual time + engine metrics
    simulate   the event loop and the gateway (hold, slot queue, route, drain)
    autoscalers / baselines / oracle   the policies under test
    metrics    SLO attainment, TTFT percentiles, GPU-hours, cold starts, drops, hits
    scenarios  rate multipliers, fleet sizes, targets; running them
    report     JSON, tables, PNGs
"""
