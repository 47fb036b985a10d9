"""``aiplane sim serve``: trace readers, the replica model's hand-worked cases, the gateway, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aiplane.cli.main import app
from aiplane.policies.autoscaling import AutoscalingConfig
from aiplane.policies.routing import router_for
from aiplane.sim.serve.autoscalers import Aiplane
from aiplane.sim.serve.cache import PrefixCache
from aiplane.sim.serve.metrics import summarize
from aiplane.sim.serve.oracle import Oracle
from aiplane.sim.serve.profiles import H100_LLAMA3_8B, Profile
from aiplane.sim.serve.replica import Replica
from aiplane.sim.serve.request import SimRequest
from aiplane.sim.serve.simulate import Simulation
from aiplane.sim.serve.traces import Trace, TraceError, TraceRequest, read_trace

AZURE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:17:03.9799600,4808,10\n"
    "2023-11-16 18:17:04.0319600,3180,8\n"
    "2023-11-16 18:17:05.0781490,110,27\n"
)
MOONCAKE = (
    '{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]}\n'
    '{"timestamp": 1500, "input_length": 600, "output_length": 3, "hash_ids": [0, 7]}\n'
)

# Round numbers for hand-worked cases: 1000 prompt tokens/s, 10 ms a decode step.
SIMPLE = Profile(
    name="test",
    description="hand-worked",
    engine="vllm",
    gpus=1,
    slots=None,
    max_num_seqs=64,
    kv_tokens=1_000_000,
    max_context=100_000,
    batch_tokens=100_000,
    prefill_tps=1000.0,
    attention=0.0,
    step_s=0.01,
    step_per_seq_s=0.0,
    step_per_kv_token_s=0.0,
    cold_start_s=30.0,
    ttft_slo_s=2.0,
)


def request(seq: int, prompt: int, output: int, blocks: tuple[int, ...] = (), at: float = 0.0) -> SimRequest:
    return SimRequest(
        seq, at, prompt, output, blocks or tuple(range(1000 * seq, 1000 * seq + prompt // 512 + 1))
    )


def drain(replica: Replica) -> list[SimRequest]:
    """Run a lone replica until nothing is left; returns requests in the order they finished."""
    done: list[SimRequest] = []
    while (at := replica.next_event()) is not None:
        done += replica.on_event(at)
    return done


def trace_of(*requests: tuple[float, int, int]) -> Trace:
    return Trace(
        "t",
        "azure",
        tuple(
            TraceRequest(at, p, o, tuple(range(i * 100, i * 100 + p // 512 + 1)))
            for i, (at, p, o) in enumerate(requests)
        ),
    )


def least_load(fleet: object) -> object:
    return router_for("least-load")


# --- traces ------------------------------------------------------------------------
def test_reads_azure_csv_with_relative_times_and_own_blocks(tmp_path: Path) -> None:
    path = tmp_path / "code.csv"
    path.write_text(AZURE)
    trace = read_trace(path)
    assert trace.format == "azure" and not trace.has_prefixes
    assert [r.arrival for r in trace.requests] == pytest.approx([0.0, 0.052, 1.098189])
    assert [(r.prompt_tokens, r.output_tokens) for r in trace.requests] == [(4808, 10), (3180, 8), (110, 27)]
    assert [len(r.blocks) for r in trace.requests] == [10, 7, 1]
    every = [b for r in trace.requests for b in r.blocks]
    assert len(every) == len(set(every))  # no prefix info: nobody shares a block
    assert len(read_trace(path, limit=2).requests) == 2


def test_reads_mooncake_jsonl_by_content_whatever_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text(MOONCAKE)
    trace = read_trace(path)
    assert trace.format == "mooncake" and trace.has_prefixes
    assert [(r.arrival, r.prompt_tokens, r.output_tokens, r.blocks) for r in trace.requests] == [
        (0.0, 1100, 5, (0, 1, 2)),
        (1.5, 600, 3, (0, 7)),
    ]
    assert trace.compressed(3).requests[1].arrival == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "a.csv",
            AZURE + "2023-11-16 18:17:06.1,x,3\n",
            "a.csv:5: ContextTokens: expected an integer >= 1 (got 'x')",
        ),
        (
            "a.csv",
            AZURE + "2023-11-16 18:17:06.1,12,0\n",
            "a.csv:5: GeneratedTokens: expected an integer >= 1 (got '0')",
        ),
        ("a.csv", AZURE + "yesterday,12,3\n", "a.csv:5: TIMESTAMP: expected a date and time"),
        ("a.csv", AZURE + "2023-11-16 18:17:06.1,12\n", "a.csv:5: row: expected 3 columns"),
        ("m.jsonl", MOONCAKE + "{nope\n", "m.jsonl:3: line: expected a JSON object (got invalid JSON"),
        (
            "m.jsonl",
            MOONCAKE + '{"timestamp": 1, "input_length": 3, "output_length": 1}\n',
            "m.jsonl:3: hash_ids",
        ),
        (
            "m.jsonl",
            MOONCAKE + '{"timestamp": -1, "input_length": 3, "output_length": 1, "hash_ids": [1]}\n',
            "m.jsonl:3: timestamp: expected milliseconds >= 0 (got -1)",
        ),
        (
            "m.jsonl",
            MOONCAKE + '{"timestamp": 9, "input_length": 3, "output_length": 1, "hash_ids": ["a"]}\n',
            "m.jsonl:3: hash_ids: expected a list of integer block ids (got ['a'])",
        ),
        (
            "b.csv",
            "when,what\n1,2\n",
            "b.csv:1: header: expected columns TIMESTAMP,ContextTokens,GeneratedTokens",
        ),
    ],
)
def test_a_bad_line_names_file_line_and_field(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert message in str(exc.value)
    assert str(exc.value).startswith(str(path))


def test_an_unknown_format_and_a_missing_file_are_one_clear_error(tmp_path: Path) -> None:
    odd = tmp_path / "odd.dat"
    odd.write_text("hello\n")
    with pytest.raises(TraceError, match=r"odd\.dat:1: expected a CSV header"):
        read_trace(odd)
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "absent.csv")


# --- the replica model: hand-worked --------------------------------------------------
def test_one_request_alone_ttft_is_its_prefill_and_it_ends_a_decode_later() -> None:
    replica = Replica("r0", SIMPLE, 0.0)
    r = request(0, prompt=500, output=11)
    replica.submit(r, 0.0)
    assert drain(replica) == [r]
    assert r.ttft == pytest.approx(0.5)  # 500 tokens at 1000 tokens/s
    assert r.finished_at == pytest.approx(0.5 + 10 * 0.01)  # 10 more tokens at 10 ms a step


def test_a_prefix_hit_skips_the_prefill_of_the_hit_blocks() -> None:
    replica = Replica("r0", SIMPLE, 0.0)
    first = request(0, prompt=1536, output=2, blocks=(1, 2, 3))
    replica.submit(first, 0.0)
    drain(replica)
    second = request(1, prompt=2048, output=2, blocks=(1, 2, 3, 4), at=5.0)
    replica.submit(second, 5.0)
    drain(replica)
    assert second.hit_tokens == 3 * 512
    assert second.ttft == pytest.approx((2048 - 1536) / 1000)


def test_the_cache_evicts_least_recently_used_free_blocks_tail_first() -> None:
    cache = PrefixCache()
    cache.pin((1, 2))
    cache.release((1, 2))
    cache.pin((3, 4))
    cache.release((3, 4))
    assert list(cache.free) == [2, 1, 4, 3]  # a sequence's head is its most recent block
    cache.evict_to(3)
    assert 2 not in cache and 1 in cache
    cache.pin((1,))  # a hit pins it: pinned blocks are never evicted
    cache.evict_to(0)
    assert list(cache.pinned) == [1] and not cache.free
    assert cache.peek((1, 4)) == 1 and cache.peek((4, 1)) == 0


def test_lru_eviction_through_a_replica_with_room_for_two_prompts() -> None:
    small = replace(SIMPLE, kv_tokens=4 * 512 + 64)  # two 2-block prompts plus their outputs
    replica = Replica("r0", small, 0.0)
    for seq, blocks in enumerate(((10, 11), (20, 21), (30, 31))):
        replica.submit(request(seq, prompt=1024, output=2, blocks=blocks, at=float(seq)), float(seq))
        drain(replica)
    assert 10 not in replica.cache and 20 in replica.cache and 30 in replica.cache
    again = request(9, prompt=1024, output=2, blocks=(10, 11), at=9.0)
    replica.submit(again, 9.0)
    drain(replica)
    assert again.hit_tokens == 0


def test_a_full_kv_cache_queues_requests_in_the_engine() -> None:
    tight = replace(SIMPLE, kv_tokens=1000)
    replica = Replica("r0", tight, 0.0)
    a, b = request(0, prompt=400, output=200), request(1, prompt=400, output=200)
    replica.submit(a, 0.0)
    replica.submit(b, 0.0)
    assert replica.running == 1 and len(replica.waiting) == 1  # 600 + 600 > 1000 tokens
    drain(replica)
    assert a.finished_at is not None and b.admitted_at == pytest.approx(a.finished_at)
    assert b.ttft == pytest.approx(a.finished_at + 0.4)


def test_decode_steps_slow_down_with_the_batch() -> None:
    batched = replace(SIMPLE, step_per_seq_s=0.01)
    replica = Replica("r0", batched, 0.0)
    a, b = request(0, prompt=100, output=101), request(1, prompt=100, output=101)
    replica.submit(a, 0.0)
    replica.submit(b, 0.0)
    drain(replica)
    assert a.ttft == pytest.approx(0.1)
    assert b.ttft == pytest.approx(0.1 + 0.01 + 0.1)  # FCFS prefill, sharing an iteration with a's decode
    assert a.finished_at == pytest.approx(0.21 + 99 * 0.02)  # two in the batch: 20 ms a step
    assert b.finished_at == pytest.approx(0.21 + 99 * 0.02 + 0.01)  # its last token alone


# --- the gateway and the fleet -----------------------------------------------------
def test_every_request_is_served_or_dropped_and_none_twice() -> None:
    trace = trace_of(*((0.05 * i, 300 + 37 * (i % 9), 1 + i % 17) for i in range(400)))
    config = AutoscalingConfig(target=4, min_replicas=1, max_replicas=6, cold_start=5.0)
    profile = replace(SIMPLE, cold_start_s=5.0, prefill_tps=3000.0)
    sim = Simulation(trace, profile, least_load, Aiplane(config), replicas=1, timeout=8.0)  # type: ignore[arg-type]
    replay = sim.run()
    served = [r for r in replay.requests if r.finished_at is not None]
    dropped = [r for r in replay.requests if r.dropped_at is not None]
    assert len(served) + len(dropped) == len(trace.requests)
    assert not any(r.finished_at is not None and r.dropped_at is not None for r in replay.requests)
    assert all(r.first_token_at is not None and r.first_token_at <= r.finished_at for r in served)  # type: ignore[operator]
    assert (sim.load.in_flight["model"], sim.load.held["model"], sim.load.queued["model"]) == (0, 0, 0)
    assert replay.fleet.cold_starts > 0  # the burst made it scale


def test_scale_from_zero_holds_a_request_and_serves_it_after_the_cold_start() -> None:
    config = AutoscalingConfig(target=1, min_replicas=0, max_replicas=1, cold_start=30.0)
    sim = Simulation(trace_of((10.0, 500, 3)), SIMPLE, least_load, Aiplane(config), replicas=0)  # type: ignore[arg-type]
    replay = sim.run()
    (r,) = replay.requests
    assert r.dropped_at is None and r.sent_at == pytest.approx(40.0)  # held through the 30 s start
    assert r.ttft == pytest.approx(30.0 + 0.5)
    assert replay.fleet.cold_starts == 1


def test_a_request_held_past_the_cold_start_timeout_is_dropped() -> None:
    slow = replace(SIMPLE, cold_start_s=200.0)
    config = AutoscalingConfig(target=1, min_replicas=0, max_replicas=1, cold_start=200.0)
    sim = Simulation(trace_of((0.0, 500, 3), (250.0, 500, 3)), slow, least_load, Aiplane(config), replicas=0)  # type: ignore[arg-type]
    replay = sim.run()
    first, second = replay.requests
    assert first.dropped_at == pytest.approx(120.0) and first.finished_at is None
    assert second.finished_at is not None  # the replica it started serves the next one
    result = summarize("aiplane", replay, slow.ttft_slo_s, target=None, seconds=0.0)
    assert result.dropped == 1 and result.slo_attainment == pytest.approx(0.5)


def test_engines_with_slots_queue_in_the_gateway() -> None:
    one_slot = replace(SIMPLE, slots=1, max_num_seqs=1)
    sim = Simulation(trace_of((0.0, 1000, 2), (0.1, 1000, 2)), one_slot, least_load, None, replicas=1)  # type: ignore[arg-type]
    replay = sim.run()
    a, b = replay.requests
    assert a.finished_at is not None and b.sent_at == pytest.approx(a.finished_at)


def test_gpu_hours_count_starting_and_draining_replicas() -> None:
    config = AutoscalingConfig(
        target=1, min_replicas=0, max_replicas=1, cold_start=30.0, scale_to_zero_after=60.0
    )
    sim = Simulation(trace_of((0.0, 500, 3)), SIMPLE, least_load, Aiplane(config), replicas=0)  # type: ignore[arg-type]
    replay = sim.run()
    assert replay.fleet.gpu_seconds(replay.end) == pytest.approx(30.0 + 0.5 + 0.02)  # start to the end


def test_the_oracle_sends_a_request_to_the_replica_truly_caching_its_prefix() -> None:
    trace = Trace(
        "t",
        "mooncake",
        (
            TraceRequest(0.0, 2048, 2, (1, 2, 3, 4)),
            TraceRequest(0.0, 2048, 2, (5, 6, 7, 8)),
            TraceRequest(10.0, 2560, 2, (5, 6, 7, 8, 9)),
        ),
    )
    replay = Simulation(trace, SIMPLE, lambda fleet: Oracle(fleet.replicas), None, replicas=2).run()
    first, second, third = replay.requests
    assert first.replica != second.replica and third.replica == second.replica
    assert third.hit_tokens == 4 * 512


# --- the CLI -------------------------------------------------------------------------
def tiny_trace(tmp_path: Path) -> Path:
    lines = [
        json.dumps(
            {
                "timestamp": 400 * i,
                "input_length": 700 + 50 * (i % 5),
                "output_length": 4,
                "hash_ids": [0, i % 3],
            }
        )
        for i in range(40)
    ]
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_json_has_the_documented_shape(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sim", "serve", "--trace", str(tiny_trace(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert list(out) == ["scenarios"]
    kinds = [s["name"].split(":")[0] for s in out["scenarios"]]
    assert kinds == ["autoscaling"] * 3 + ["routing"]
    fields = [
        "policy",
        "slo_attainment",
        "p50_ttft_s",
        "p99_ttft_s",
        "gpu_hours",
        "cold_starts",
        "dropped",
        "prefix_hit_rate",
    ]
    for scenario in out["scenarios"]:
        assert list(scenario) == ["name", "results"]
        assert all(list(row) == fields for row in scenario["results"])
    policies = [[r["policy"] for r in s["results"]] for s in out["scenarios"]]
    assert policies[0] == ["aiplane", "hpa-cpu", "hpa-concurrency", "kubeai", "knative", "keda"]
    assert policies[3] == [
        "aiplane",
        "least-load",
        "power-of-two",
        "round-robin",
        "random",
        "chwbl",
        "oracle",
    ]


def test_cli_same_seed_same_json_and_a_table_without_json(tmp_path: Path) -> None:
    trace = str(tiny_trace(tmp_path))
    args = ["sim", "serve", "--trace", trace, "--json", "--seed", "7", "--policies", "aiplane,random,kubeai"]
    first = CliRunner().invoke(app, args)
    second = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output == second.output
    table = CliRunner().invoke(
        app, ["sim", "serve", "--trace", trace, "--policies", "keda", "--scenario", "autoscaling"]
    )
    assert table.exit_code == 0, table.output
    assert "POLICY" in table.output and "keda" in table.output


def test_cli_a_missing_trace_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sim", "serve", "--trace", str(tmp_path / "nope.csv")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope.csv: cannot read" in lines[0]


def test_cli_rejects_an_unknown_policy(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["sim", "serve", "--trace", str(tiny_trace(tmp_path)), "--policies", "nope"]
    )
    assert result.exit_code == 2 and "unknown policy 'nope'" in result.output


def test_the_h100_profile_is_self_consistent() -> None:
    p = H100_LLAMA3_8B
    assert p.step(1, 0) == pytest.approx(0.007)
    assert 5_000 < 256 / p.step(256, 256 * 2048) < 12_000  # decode tokens/s at a full batch
    assert p.prefill_work(8192, 0) / p.prefill_tps < 0.5
