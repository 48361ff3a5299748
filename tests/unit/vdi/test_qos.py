"""vdi.qos: limits validation and the token buckets, on a fake clock (seconds as floats)."""
import pytest

from vdi.qos import READ, WRITE, QosError, QosLimits, Throttle, TokenBucket


def drive(throttle, kind, nbytes, until, now=0.0):
    """Admit requests back to back as fast as the throttle allows; their admission times."""
    times = []
    while True:
        now += throttle.delay(kind, nbytes, now)
        if now > until:
            return times
        throttle.take(kind, nbytes, now)
        times.append(now)


# ---- limits ----

def test_parse_keeps_only_set_fields_and_zero_removes_one():
    limits = QosLimits.parse({"iops": 500, "write_bps": 1 << 20, "read_iops": 0})
    assert limits.to_dict() == {"iops": 500, "write_bps": 1 << 20}
    assert QosLimits.parse({"iops": 0}, base=limits.to_dict()).to_dict() == {"write_bps": 1 << 20}
    assert QosLimits.parse({}, base=limits.to_dict()) == limits
    assert not QosLimits.parse({}).enabled and limits.enabled


@pytest.mark.parametrize("fields, words", [
    ({"iops": -1}, "invalid QoS iops"), ({"iops": "5"}, "invalid QoS iops"),
    ({"iops": True}, "invalid QoS iops"), ({"iops": 1.5}, "invalid QoS iops"),
    ({"nope": 1}, "unknown QoS field"), ({"iops_burst": 10}, "needs a iops limit"),
    ({"bps": 100, "bps_burst": 50}, "below the bps limit"),
    ({"iops": 1, "burst_seconds": 100000}, "burst_seconds"),
])
def test_parse_refuses_what_cannot_apply(fields, words):
    with pytest.raises(QosError, match=words):
        QosLimits.parse(fields)
    with pytest.raises(QosError):
        QosLimits.parse("iops=5")


def test_from_entry_is_lenient():
    entry = {"qos": {"iops": 5, "bps": "x", "nope": 3, "read_iops": -2, "write_iops": True}}
    assert QosLimits.from_entry(entry).to_dict() == {"iops": 5}
    assert QosLimits.from_entry({"qos": [1]}).to_dict() == {}
    assert QosLimits.from_entry({}).to_dict() == {} and QosLimits.from_entry(None).to_dict() == {}


def test_capacity_is_burst_or_limit_times_burst_seconds():
    limits = QosLimits.parse({"iops": 100, "iops_burst": 300, "bps": 10, "burst_seconds": 2})
    assert limits.bucket_shapes() == {"iops": (100.0, 600.0), "bps": (10.0, 20.0)}


# ---- buckets ----

def test_rate_holds_after_the_initial_burst():
    throttle = Throttle(QosLimits.parse({"iops": 200}), now=0.0)
    times = drive(throttle, WRITE, 4096, until=10.0)
    assert len(times) == 200 + 200 * 10          # a full bucket (1 s), then 200/s
    assert times[200:210] == pytest.approx([0.005 * i for i in range(1, 11)])


def test_burst_then_limit():
    throttle = Throttle(QosLimits.parse({"iops": 100, "iops_burst": 1000}), now=0.0)
    times = drive(throttle, READ, 512, until=5.0)
    assert len([t for t in times if t == 0.0]) == 1000
    assert len(times) == 1000 + 500


def test_bps_counts_bytes_and_iops_counts_requests():
    throttle = Throttle(QosLimits.parse({"bps": 1 << 20}), now=0.0)
    assert len(drive(throttle, WRITE, 64 << 10, until=4.0)) == 16 + 16 * 4
    throttle = Throttle(QosLimits.parse({"iops": 10}), now=0.0)
    assert len(drive(throttle, WRITE, 4 << 20, until=1.0)) == 10 + 10


def test_a_request_bigger_than_the_burst_still_passes_and_is_paid_for():
    throttle = Throttle(QosLimits.parse({"bps": 1000}), now=0.0)
    assert throttle.delay(WRITE, 5000, 0.0) == 0.0   # the bucket is full: it goes
    throttle.take(WRITE, 5000, 0.0)
    # in debt by 4000: the next one waits until the bucket is full again (5 s)
    assert throttle.delay(WRITE, 5000, 0.0) == pytest.approx(5.0)
    assert throttle.delay(WRITE, 100, 4.0) == pytest.approx(0.1)
    times = drive(throttle, WRITE, 5000, until=60.0)
    assert len(times) == 12                          # 1000 B/s on average: 5 s each


def test_read_and_write_limits_are_separate_and_total_covers_both():
    throttle = Throttle(QosLimits.parse({"write_iops": 10, "iops": 100}), now=0.0)
    for _ in range(10):
        assert throttle.delay(WRITE, 1, 0.0) == 0.0
        throttle.take(WRITE, 1, 0.0)
    assert throttle.delay(WRITE, 1, 0.0) == pytest.approx(0.1)
    # reads are not held by the write limit, only by the total (which the writes used)
    assert throttle.delay(READ, 1, 0.0) == 0.0
    assert len(drive(throttle, READ, 1, until=1.0)) == 90 + 100
    assert throttle.delay(WRITE, 1, 1.0) == pytest.approx(0.01)   # now the total holds it


def test_a_rate_change_applies_at_once_and_keeps_the_level():
    throttle = Throttle(QosLimits.parse({"iops": 10}), now=0.0)
    drive(throttle, WRITE, 1, until=1.0)            # the bucket is empty now
    assert throttle.delay(WRITE, 1, 1.0) == pytest.approx(0.1)
    throttle.set_limits(QosLimits.parse({"iops": 1000}), now=1.0)
    assert throttle.delay(WRITE, 1, 1.0) == pytest.approx(0.001)   # waiters see it
    assert len(drive(throttle, WRITE, 1, until=2.0, now=1.0)) == 1000
    throttle.set_limits(QosLimits(), now=2.0)
    assert not throttle.enabled and throttle.delay(WRITE, 1, 2.0) == 0.0


def test_lowering_the_burst_caps_the_tokens():
    bucket = TokenBucket(10.0, 100.0, now=0.0)
    bucket.reshape(10.0, 10.0, now=0.0)
    assert bucket.tokens == 10.0
    bucket.take(10, now=0.0)
    bucket.refill(now=100.0)
    assert bucket.tokens == 10.0
