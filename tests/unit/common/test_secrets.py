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
