"""The engines' own load metrics, read from their Prometheus ``/metrics`` by each adapter's
``MetricNames`` (vLLM ``vllm:num_requests_waiting``, TGI ``tgi_queue_size``, llama.cpp's
``llamacpp:requests_processing``, ...). Both runtimes read them the same way."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from aiplane.engines import MetricNames


@dataclass(frozen=True)
class EngineSample:
    """One replica's report; None for what the engine does not export."""

    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None


def parse_engine_metrics(text: str, names: MetricNames) -> EngineSample:
    """Sum each named gauge over its series (an engine may label per model or per slot);
    the KV-cache use is averaged, as a ratio. Unparseable text reads as nothing exported."""
    wanted = {n for n in (names.running, names.waiting, names.kv_cache_usage) if n}
    values: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    values.setdefault(sample.name, []).append(float(sample.value))
    except ValueError:
        return EngineSample()

    def total(name: str | None) -> float | None:
        return sum(values[name]) if name in values else None

    kv = values.get(names.kv_cache_usage or "")
    return EngineSample(total(names.running), total(names.waiting), sum(kv) / len(kv) if kv else None)


async def scrape(
    session: aiohttp.ClientSession, url: str, names: MetricNames, timeout: float = 1.0
) -> EngineSample:
    """One replica's sample; an engine that does not answer in time reports nothing."""
    try:
        async with asyncio.timeout(timeout), session.get(url) as response:
            if response.status != 200:
                return EngineSample()
            return parse_engine_metrics(await response.text(), names)
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return EngineSample()


def combine(samples: list[EngineSample]) -> EngineSample:
    """A model's engines together: counts summed, KV use averaged over those that report it."""

    def summed(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    kv = [s.kv_cache for s in samples if s.kv_cache is not None]
    return EngineSample(
        summed([s.running for s in samples]),
        summed([s.waiting for s in samples]),
        sum(kv) / len(kv) if kv else None,
    )
