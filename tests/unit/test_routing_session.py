"""Session affinity: a session sticks to its replica until it is gone or over the load bound."""

from __future__ import annotations

from aiplane.policies.routing import LeastLoad, PrefixAware, ReplicaLoad, Route, RouteRequest, SessionAffinity
from aiplane.policies.routing.session import SessionState


def loads(**in_flight: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(rid, n) for rid, n in in_flight.items()]


def test_a_session_sticks_to_its_replica_while_others_rotate() -> None:
    router = SessionAffinity(LeastLoad())
    state = router.new_state()
    idle = loads(a=0, b=0, c=0)
    first = router.choose(idle, RouteRequest(1, session="s"), state)
    assert first == Route("b", "least load: 0")  # seq 1 of three tied
    for seq in range(2, 30):
        assert router.choose(idle, RouteRequest(seq, session="s"), state) == Route("b", "session affinity")
    # Without a session, the inner router decides as before.
    assert router.choose(idle, RouteRequest(0), state) == Route("a", "least load: 0")
    assert router.name == "least-load+sessions"


def test_a_session_moves_when_its_replica_is_gone_or_over_the_bound() -> None:
    router = SessionAffinity(LeastLoad())
    state = router.new_state()
    assert router.choose(loads(a=0, b=1), RouteRequest(0, session="s"), state) == Route("a", "least load: 0")
    # a at 2, total 3 over 2: bound ceil(1.25 * 4 / 2) + 1 = 4, and 2 + 1 <= 4: stays.
    assert router.choose(loads(a=2, b=1), RouteRequest(1, session="s"), state) == Route(
        "a", "session affinity"
    )
    # a at 4, total 4: bound ceil(1.25 * 5 / 2) + 1 = 5, and 4 + 1 <= 5: stays.
    assert router.choose(loads(a=4, b=0), RouteRequest(2, session="s"), state) == Route(
        "a", "session affinity"
    )
    # a at 5, total 5: bound ceil(1.25 * 6 / 2) + 1 = 5, and 5 + 1 > 5: moves.
    moved = router.choose(loads(a=5, b=0), RouteRequest(3, session="s"), state)
    assert moved == Route("b", "session moved (over load bound): least load: 0")
    # It now sticks to b.
    assert router.choose(loads(a=0, b=3), RouteRequest(4, session="s"), state) == Route(
        "b", "session affinity"
    )
    # b gone: to the inner router's pick, and the session follows it.
    gone = router.choose(loads(a=1, c=0), RouteRequest(5, session="s"), state)
    assert gone == Route("c", "session moved (gone): least load: 0")
    assert state.sessions == {"s": "c"}


def test_the_session_table_is_a_bounded_lru() -> None:
    router = SessionAffinity(LeastLoad(), max_sessions=2)
    state = router.new_state()
    idle = loads(a=0, b=0)
    router.choose(idle, RouteRequest(0, session="x"), state)
    router.choose(idle, RouteRequest(1, session="y"), state)
    router.choose(idle, RouteRequest(2, session="x"), state)  # x used again: y is now the oldest
    router.choose(idle, RouteRequest(3, session="z"), state)
    assert list(state.sessions) == ["x", "z"]


def test_forget_drops_the_replicas_sessions_and_tells_the_inner_router() -> None:
    router = SessionAffinity(PrefixAware())
    state = router.new_state()
    assert isinstance(state, SessionState)
    idle = loads(a=0, b=0)
    router.choose(idle, RouteRequest(0, blocks=(1, 2), session="s0"), state)  # to a
    router.choose(idle, RouteRequest(1, blocks=(3, 4), session="s1"), state)  # to b
    router.forget("a", state)
    assert state.sessions == {"s1": "b"}
    assert set(state.inner.caches) == {"b"}


def test_a_kept_session_still_teaches_the_prefix_router() -> None:
    router = SessionAffinity(PrefixAware())
    state = router.new_state()
    idle = loads(a=0, b=0)
    router.choose(idle, RouteRequest(0, blocks=(1,), session="s"), state)
    assert router.choose(idle, RouteRequest(1, blocks=(1, 2, 3), session="s"), state) == Route(
        "a", "session affinity"
    )
    # The blocks of the kept request are in a's estimate: another client with that prefix goes there too.
    assert state.inner.caches["a"].matched((1, 2, 3)) == 3
    assert router.choose(idle, RouteRequest(2, blocks=(1, 2, 3, 4)), state) == Route(
        "a", "cached prefix: 3/4 blocks"
    )
