"""collie.render_watch and the --watch screen/loop of collie.progress: rates, ETAs, the
text of a refresh, TTY and log output, with made-up clocks (no network, no sleeping)."""
import io
import json

import pytest

from collie import render_watch as rw
from collie.progress import LiveScreen, watch, watch_recovery

M = 1 << 20


def node(node_id="n1", state="recovering", epoch=2, done=0, total=0, pulled=None, nbytes=None,
         started=100.0, **extra):
    pulled = done if pulled is None else pulled
    return {"node_id": node_id, "state": state, "epoch": epoch, "done": done, "total": total,
            "pulled": pulled, "bytes": pulled * M if nbytes is None else nbytes,
            "started": started, **extra}


def answer(*nodes, state="running", epoch=2, **extra):
    return {"state": state, "epoch": epoch, "enabled": True, "nodes": list(nodes), **extra}


# ---- pure figures ---------------------------------------------------------------------------------

def test_observed_rate_needs_two_samples_and_time_between_them():
    assert rw.observed_rate([]) == (None, None)
    assert rw.observed_rate([(1.0, 5, 50)]) == (None, None)
    assert rw.observed_rate([(1.0, 5, 50), (1.0, 9, 90)]) == (None, None)
    assert rw.observed_rate([(1.0, 5, 50), (2.0, 6, 60), (3.0, 9, 90)]) == (2.0, 20.0)


def test_eta_is_zero_when_done_and_unknown_without_a_rate():
    assert rw.eta_seconds(0, None) == 0.0
    assert rw.eta_seconds(30, 3.0) == 10.0
    assert rw.eta_seconds(30, None) is None
    assert rw.eta_seconds(30, 0.0) is None      # stalled: no promise


@pytest.mark.parametrize("seconds, text", [(None, "-"), (0, "0:00"), (7.4, "0:07"), (750, "12:30"),
                                           (3723, "1:02:03")])
def test_format_duration(seconds, text):
    assert rw.format_duration(seconds) == text


def test_recovery_done_requires_every_node_complete_for_the_current_epoch():
    complete = node(state="complete", done=3, total=3)
    assert rw.recovery_done(answer(complete, node("n2", state="complete"), state="complete"))
    assert not rw.recovery_done(answer(complete, node("n2", state="complete", epoch=1), state="complete"))
    assert not rw.recovery_done(answer(complete, node("n2", state="recovering"), state="running"))
    assert not rw.recovery_done(answer(state="complete"))          # no member: nothing proven
    assert not rw.recovery_done(answer(complete, state="disabled"))


def test_tracker_rates_eta_and_estimated_bytes_left():
    t = rw.RateTracker(window_s=10)
    t.observe(0.0, answer(node(done=10, total=40)))
    first = t.estimates(answer(node(done=10, total=40)))[0]
    assert (first.objects_per_s, first.eta_s, first.remaining) == (None, None, 30)
    assert first.bytes_remaining == 30 * M          # 30 objects x the 1 MiB average so far
    later = answer(node(done=20, total=40))
    t.observe(2.0, later)
    e = t.estimates(later)[0]
    assert (e.objects_per_s, e.bytes_per_s) == (5.0, 5.0 * M)
    assert e.eta_s == 4.0 and e.remaining == 20 and e.bytes_done == 20 * M


def test_tracker_forgets_samples_older_than_its_window():
    t = rw.RateTracker(window_s=5)
    for ts, done in ((0, 0), (1, 100), (2, 101), (7, 106), (8, 107)):
        t.observe(float(ts), answer(node(done=done, total=1000)))
    e = t.estimates(answer(node(done=107, total=1000)))[0]
    assert e.objects_per_s == pytest.approx(1.0)    # the burst at t=0..1 has left the window


def test_tracker_starts_afresh_on_a_new_pass_or_a_count_going_back():
    t = rw.RateTracker()
    t.observe(0.0, answer(node(done=50, total=100)))
    t.observe(1.0, answer(node(done=60, total=100, started=200.0)))   # another pass
    assert t.estimates(answer(node(done=60, total=100)))[0].objects_per_s is None
    t.observe(2.0, answer(node(done=70, total=100, started=200.0)))
    t.observe(3.0, answer(node(done=5, total=100, started=200.0)))    # restarted counters
    assert t.estimates(answer(node(done=5, total=100)))[0].objects_per_s is None


def test_unknowns_stay_unknown():
    t = rw.RateTracker()
    listing = answer(node(state="listing"))
    nothing_pulled = answer(node(done=0, total=8, pulled=0, nbytes=0))
    t.observe(0.0, listing)
    e = t.estimates(listing)[0]
    assert e.eta_s is None and e.remaining == 0      # no total yet: no ETA
    e = t.estimates(nothing_pulled)[0]
    assert e.bytes_remaining is None                 # no average object size yet
    exact = answer(node(done=1, total=8, bytes_total=10 * M))
    assert t.estimates(exact)[0].bytes_remaining == 9 * M


def test_cluster_eta_is_the_slowest_node_and_unknown_if_any_is():
    est = [rw.Estimate("a", "recovering", 0, 0, 0, 0, 0, 1.0, 1.0, 3.0, False),
           rw.Estimate("b", "complete", 0, 0, 0, 0, 0, 1.0, 1.0, 0.0, True)]
    assert rw.cluster_eta(est) == 3.0
    est[1].eta_s = None
    assert rw.cluster_eta(est) is None


def test_render_watch_running_then_complete():
    t = rw.RateTracker()
    first = answer(node("127.0.0.1:7001", done=10, total=33),
                   node("127.0.0.1:7002", state="complete", epoch=1))
    second = answer(node("127.0.0.1:7001", done=20, total=33),
                    node("127.0.0.1:7002", state="complete", epoch=2))
    t.observe(0.0, first)
    t.observe(2.0, second)
    assert rw.render_watch(second, t.estimates(second)) == (
        "Recovery: running (epoch 2): objects 20/33 (13 left), 20 MB done (~13 MB left), ETA 0:03\n"
        "Id  Node            State       Done/Total  Left   Bytes  Bytes left  Rate                 ETA\n"
        " 0  127.0.0.1:7001  recovering       20/33    13   20 MB      ~13 MB  5.0 MB/s 5.0 obj/s  0:03\n"
        " 1  127.0.0.1:7002  complete           0/0     0  0.0 MB           0  -                   done")
    assert "complete (epoch 1)" in rw.render_watch(first, t.estimates(first))
    final = answer(node("127.0.0.1:7001", state="complete", done=33, total=33),
                   node("127.0.0.1:7002", state="complete"), state="complete")
    t.observe(4.0, final)
    text = rw.render_watch(final, t.estimates(final))
    assert text.splitlines()[0] == "Recovery: complete (epoch 2): objects 33/33, 33 MB moved, complete"


def test_render_watch_shows_throttle_disabled_and_errors():
    a = answer(node(state="stopped", error="RECOVERY STOPPED: no space"), state="disabled",
               enabled=False, throttle={"objects_per_s": 5.0, "bytes_per_s": 0})
    lines = rw.render_watch(a, rw.RateTracker().estimates(a)).splitlines()
    assert lines[-3:] == ["Recovery throttle: 5 objects/s",
                          "recovery is disabled ('collie cluster recover enable')",
                          "n1: RECOVERY STOPPED: no space"]


def test_watch_document_is_the_answer_plus_the_figures():
    a = answer(node(done=2, total=4))
    doc = rw.watch_document(1.5, a, rw.RateTracker().estimates(a))
    assert doc["nodes"] == a["nodes"] and doc["state"] == "running"
    assert doc["watch"]["elapsed_s"] == 1.5 and doc["watch"]["done"] is False
    assert doc["watch"]["objects_remaining"] == 2 and doc["watch"]["nodes"][0]["remaining"] == 2


# ---- screen and loop ------------------------------------------------------------------------------

class Tty(io.StringIO):
    def isatty(self):
        return True


def test_screen_redraws_in_place_on_a_tty():
    out = Tty()
    screen = LiveScreen(out)
    screen.show("a\nb")
    screen.show("c")
    assert out.getvalue() == "\x1b[H\x1b[2Ja\x1b[K\nb\x1b[K\n\x1b[J" "\x1b[Hc\x1b[K\n\x1b[J"


def test_screen_prints_changed_blocks_only_in_a_log():
    out = io.StringIO()
    screen = LiveScreen(out, stamp=lambda: "12:00:00")
    for text in ("one", "one", "two"):
        screen.show(text)
    assert out.getvalue() == "[12:00:00]\none\n\n[12:00:00]\ntwo\n"
    assert "\x1b" not in out.getvalue()


class Clock:
    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def now(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


def test_watch_keeps_the_cadence_and_stops_when_done():
    clock = Clock()
    answers = iter([{"n": 1}, {"n": 2}, {"n": 3}])
    shown = []

    def fetch():
        clock.t += 0.25                     # each request takes a quarter second
        return next(answers)
    last = watch(fetch, lambda t, a: shown.append((t, a["n"])), lambda a: a["n"] == 3, 1.0,
                 now=clock.now, sleep=clock.sleep)
    assert last == {"n": 3}
    assert shown == [(0.25, 1), (1.25, 2), (2.25, 3)]
    assert clock.sleeps == [0.75, 0.75]


def test_watch_recovery_json_is_one_document_per_line():
    clock = Clock()
    answers = iter([answer(node(done=1, total=3)),
                    answer(node(state="complete", done=3, total=3), state="complete")])
    out = io.StringIO()
    final = watch_recovery(lambda: next(answers), 0.5, out, as_json=True, now=clock.now,
                           sleep=clock.sleep)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["watch"]["done"] for d in docs] == [False, True]
    assert docs[1]["watch"]["objects_per_s"] == 4.0 and final["state"] == "complete"
