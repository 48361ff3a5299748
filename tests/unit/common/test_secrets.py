"""The cluster secret file and the keys derived from it."""
from __future__ import annotations

import stat

import pytest

from common.secrets import ClusterSecret, SecretError, same


def test_created_once_then_read_back_the_same(tmp_path):
    path = tmp_path / "keys" / "cluster.secret"
    first, created = ClusterSecret.load_or_create(path)
    again, created_again = ClusterSecret.load_or_create(path)
    assert (created, created_again) == (True, False)
    assert first.peer_key == again.peer_key and first.fingerprint == again.fingerprint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_purpose_gets_its_own_key(tmp_path):
    secret = ClusterSecret(bytes(range(32)))
    keys = {secret.peer_key, secret.derive("zookeeper"), secret.derive("fingerprint")}
    assert len(keys) == 3
    assert secret.zk_credentials == f"sheep:{secret.zk_password}"
    assert ClusterSecret(bytes(range(1, 33))).peer_key != secret.peer_key


@pytest.mark.parametrize("text,why", [("zz" * 32, "not hex"), ("ab" * 4, "at least 16")])
def test_bad_secret_files_are_refused_clearly(tmp_path, text, why):
    path = tmp_path / "s"
    path.write_text(text)
    with pytest.raises(SecretError, match=why):
        ClusterSecret.load_or_create(path)


def test_same_is_an_exact_comparison():
    assert same("abc", b"abc") and not same("abc", "abd") and not same("abc", "ab")


def test_processes_racing_to_create_the_secret_all_read_the_same_one(tmp_path):
    import multiprocessing
    path = tmp_path / "keys" / "cluster.secret"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        for trial in range(20):
            target = path.with_name(f"s{trial}")
            fingerprints = pool.map(_fingerprint_of, [target] * 8)
            assert len(set(fingerprints)) == 1, fingerprints
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]   # no temp left


def _fingerprint_of(path):
    return ClusterSecret.load_or_create(path)[0].fingerprint
