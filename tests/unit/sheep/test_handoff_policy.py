"""When a writer may hand the write right over: quiescent, every write flushed, idle."""
from __future__ import annotations

from sheep.volumes.handoff import HandoffPolicy, WriteState


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


POLICY = HandoffPolicy(idle_s=0.5, timeout_s=30)


def test_a_writer_that_never_wrote_may_hand_over_after_the_idle_time():
    clock = Clock()
    state = WriteState(clock)
    assert state.clean and not state.may_hand_over(POLICY)
    clock.now += 0.5
    assert state.may_hand_over(POLICY)


def test_an_acknowledged_write_is_dirty_until_a_flush_that_began_after_it_completes():
    clock = Clock()
    state = WriteState(clock)
    state.started()
    assert not state.clean                          # in flight
    state.finished()
    clock.now += 10
    assert not state.clean and not state.may_hand_over(POLICY)
    mark = state.flush_started()
    state.started()                                 # a write races the flush
    state.finished()
    state.flush_finished(mark)
    assert not state.clean                          # the flush did not cover the racer
    state.flush_finished(state.flush_started())
    assert state.clean
    assert not state.may_hand_over(POLICY)          # the racer finished just now
    clock.now += 0.5
    assert state.may_hand_over(POLICY)


def test_an_older_flush_finishing_late_does_not_undo_a_newer_one():
    state = WriteState(Clock())
    state.started()
    state.finished()
    old = state.flush_started()
    state.started()
    state.finished()
    state.flush_finished(state.flush_started())
    state.flush_finished(old)
    assert state.clean


def test_a_holder_with_a_request_looks_again_when_the_idle_time_is_over():
    clock = Clock()
    state = WriteState(clock)
    clock.now += 0.2
    assert abs(state.wait_before_asking_again(POLICY) - 0.3) < 1e-9
    state.started()
    assert state.wait_before_asking_again(POLICY) == 0.05      # dirty: poll
    state.finished()
    state.flush_finished(state.flush_started())
    clock.now += 5
    assert state.wait_before_asking_again(POLICY) == 0.05      # due now: poll at once
