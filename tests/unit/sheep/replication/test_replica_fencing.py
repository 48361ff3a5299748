"""Replica.check_writable: writes wait while the session is in doubt, and never outlive it."""
from __future__ import annotations

import pytest

from common.errors import Fenced, NoSpace
from sheep.replication.epoch import EpochState
from sheep.replication.replica import Replica
from sheep.store.objects import ObjectStore
from sheep.volumes.writer import VdiWriter


class Session:
    """A coordinator's fencing state, driven by the test."""

    def __init__(self):
        self.fenced = False
        self.generation = 7
        self.waited = []
        self.comes_back = True      # what a wait ends with: session confirmed or not
        self.lost_while_waiting = False

    def wait_unfenced(self, timeout_s):
        self.waited.append(timeout_s)
        if self.comes_back:
            self.fenced = False
            if self.lost_while_waiting:     # came back, but with a new session
                self.generation += 1
        return self.comes_back


@pytest.fixture
def session_and_replica(tmp_path):
    s = Session()
    r = Replica(ObjectStore(tmp_path, 1 << 20), EpochState(), is_fenced=lambda: s.fenced,
                wait_unfenced=s.wait_unfenced, session_generation=lambda: s.generation)
    return s, r


def test_not_fenced_passes_without_waiting(session_and_replica):
    s, r = session_and_replica
    r.check_writable(generation=7, wait_s=5)
    assert s.waited == []


def test_fenced_without_a_wait_is_refused_at_once(session_and_replica):
    s, r = session_and_replica
    s.fenced = True
    with pytest.raises(Fenced):
        r.check_writable()
    assert s.waited == []


def test_a_session_kept_lets_the_held_write_go_on(session_and_replica):
    s, r = session_and_replica
    s.fenced = True
    r.check_writable(generation=7, wait_s=5)
    assert s.waited == [5]


def test_a_session_that_never_comes_back_refuses(session_and_replica):
    s, r = session_and_replica
    s.fenced, s.comes_back = True, False
    with pytest.raises(Fenced):
        r.check_writable(generation=7, wait_s=5)


def test_a_new_session_refuses_writes_bound_to_the_old_one(session_and_replica):
    s, r = session_and_replica
    s.fenced, s.lost_while_waiting = True, True
    with pytest.raises(Fenced, match="lock is gone"):
        r.check_writable(generation=7, wait_s=5)
    r.check_writable(wait_s=5)              # unbound writes (admin, recovery) may go on


class RecordingGateway:
    """Records the mutations a writer sends; ``fail`` makes the next one raise."""

    def __init__(self):
        self.calls = []
        self.fail = None
        self._seq = 100

    def next_seq(self):
        self._seq += 1
        return self._seq

    def write(self, *args, **kw):
        self.calls.append(("write", args, kw))
        if self.fail:
            exc, self.fail = self.fail, None
            raise exc
        return 4

    def remove(self, *args, **kw):
        self.calls.append(("remove", args, kw))
        return 4

    def read(self, *args):
        return b"r"

    def flush(self, settle=()):
        self.calls.append(("flush", (), {"settle": settle}))


def test_vdi_writer_stamps_every_mutation_with_its_lock_generation_and_session():
    gw = RecordingGateway()
    writer = VdiWriter(gw, vid=0x42, generation=3, session=7)
    assert writer.write(1, 0, b"x", 2, create=True) == 4
    writer.remove(1, 2)
    assert writer.read(1, 0, 1, 2) == b"r"
    assert gw.calls[0] == ("write", (1, 0, b"x", 2, True),
                           {"generation": 3, "seq": 101, "session": 7})
    assert gw.calls[1] == ("remove", (1, 2), {"generation": 3, "seq": 102, "session": 7})
    writer.flush()
    assert gw.calls[2] == ("flush", (), {"settle": [(0x42, 3, 102)]})   # both completed
    assert writer.clean


def test_a_failed_mutation_is_never_settled_and_makes_the_writer_unclean():
    gw = RecordingGateway()
    writer = VdiWriter(gw, vid=0x42, generation=3, session=7)
    writer.write(1, 0, b"a", 2)                      # seq 101: done everywhere
    gw.fail = NoSpace("full")
    with pytest.raises(NoSpace):
        writer.write(1, 0, b"b", 2)                  # seq 102: may have reached some replicas
    writer.write(1, 0, b"c", 2)                      # seq 103
    assert writer.settled_mark() == 101 and not writer.clean
    writer.flush()
    assert gw.calls[-1] == ("flush", (), {"settle": [(0x42, 3, 101)]})

