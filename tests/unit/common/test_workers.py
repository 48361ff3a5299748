"""common.workers: recycled greenlets with a bound, like a gevent Pool."""
from __future__ import annotations

import gc
import weakref

import gevent
import pytest
from gevent.event import Event

from common.workers import Workers


def test_tasks_run_with_their_arguments_and_join_waits_for_them():
    pool = Workers(4)
    got = []
    for i in range(10):
        pool.spawn(lambda a, b: (gevent.sleep(0.001), got.append(a + b)), i, 100)
    assert pool.join(timeout=5)
    assert sorted(got) == [100 + i for i in range(10)]
    assert pool.busy == 0
    pool.close()


def test_a_finished_worker_runs_the_next_task_instead_of_a_new_greenlet():
    pool = Workers(8)
    seen = []
    for _ in range(5):
        pool.spawn(lambda: seen.append(gevent.getcurrent()))
        pool.join(timeout=5)
    assert len(set(map(id, seen))) == 1
    pool.close()


def test_spawn_blocks_while_the_limit_runs_and_resumes_when_one_ends():
    pool = Workers(2)
    release = Event()
    running = []

    def task(i):
        running.append(i)
        release.wait()

    pool.spawn(task, 0)
    pool.spawn(task, 1)
    third = gevent.spawn(pool.spawn, task, 2)
    gevent.sleep(0.01)
    assert not third.ready()            # the reader would be held here: back-pressure
    assert sorted(running) == [0, 1] and pool.busy == 2
    release.set()
    third.join(timeout=5)
    assert third.successful()
    assert pool.join(timeout=5)
    assert sorted(running) == [0, 1, 2]
    pool.close()


def test_join_times_out_while_a_task_still_runs():
    pool = Workers(1)
    release = Event()
    pool.spawn(release.wait)
    assert pool.join(timeout=0.01) is False
    release.set()
    assert pool.join(timeout=5)
    pool.close()


def test_a_failing_task_is_reported_and_its_worker_goes_on(monkeypatch):
    pool = Workers(1)
    reported = []
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "handle_error", lambda ctx, t, v, tb: reported.append(t))
    pool.spawn(lambda: 1 / 0)
    assert pool.join(timeout=5)
    done = []
    pool.spawn(done.append, 1)
    assert pool.join(timeout=5)
    assert reported == [ZeroDivisionError] and done == [1] and pool.busy == 0
    pool.close()


def test_close_ends_the_parked_greenlets():
    pool = Workers(3)
    workers = []
    for _ in range(3):
        pool.spawn(lambda: workers.append(gevent.getcurrent()))
    pool.join(timeout=5)
    pool.close()
    gevent.sleep(0)
    gevent.sleep(0)
    assert all(w.dead for w in workers)


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        Workers(0)


def test_a_parked_worker_does_not_keep_its_last_tasks_arguments_alive():
    class Payload:
        pass
    pool = Workers(4)
    payload = Payload()
    gone = weakref.ref(payload)
    pool.spawn(lambda p: None, payload)
    assert pool.join(timeout=5)
    del payload
    gc.collect()
    assert gone() is None       # a parked greenlet held a megabyte write payload per connection
    pool.close()
