"""The device pool on real local agents: leases, and the one policy for members that keep failing."""

from __future__ import annotations

import threading

import pytest

from edgecompress.config import resolve_device
from edgecompress.device import DevicePool, PoolDown, open_session
from edgecompress.errors import DeviceError


@pytest.fixture()
def sessions(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    profile = resolve_device("local")
    opened = {"a": open_session(profile), "b": open_session(profile)}
    yield opened
    for session in opened.values():
        session.close()


def test_a_lease_hands_out_an_idle_member_and_takes_it_back(sessions):
    pool = DevicePool(sessions)
    with pool.lease() as first:
        assert first.session.hello()["agent_version"]
        with pool.lease() as second:
            assert {first.member, second.member} == {"a", "b"}
    assert [m.leases for m in pool.members] == [1, 1]


def test_a_member_failing_too_often_in_a_row_is_dropped_and_a_pool_without_members_is_down(sessions):
    pool = DevicePool({"a": sessions["a"]}, max_failures=2)
    for _ in range(1):
        with pytest.raises(DeviceError), pool.lease():
            raise DeviceError("link down")
    with pool.lease():  # a success in between resets the count
        pass
    assert pool.members[0].consecutive_failures == 0 and not pool.is_down
    for _ in range(2):
        with pytest.raises(DeviceError), pool.lease():
            raise DeviceError("link down")
    assert pool.is_down and pool.dropped[0].name == "a" and pool.dropped[0].last_error == "link down"
    with pytest.raises(PoolDown), pool.lease():
        pass


def test_other_errors_do_not_count_against_the_member(sessions):
    pool = DevicePool({"a": sessions["a"]}, max_failures=1)
    with pytest.raises(ValueError), pool.lease():
        raise ValueError("a broken candidate")
    assert not pool.is_down and pool.members[0].failures == 0


def test_a_lease_waits_while_every_member_is_leased(sessions):
    pool = DevicePool({"a": sessions["a"]})
    order: list[str] = []
    taken = threading.Event()

    def second() -> None:
        taken.wait()
        with pool.lease():
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with pool.lease():
        taken.set()
        thread.join(timeout=0.5)  # the second lease cannot be had while this one is held
        order.append("first")
    thread.join(timeout=30)
    assert order == ["first", "second"]
