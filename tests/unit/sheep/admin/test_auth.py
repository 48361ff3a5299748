"""The admin API's gate: Host, bearer token, body type and size (pure)."""
from __future__ import annotations

import pytest

from sheep.admin.auth import AdminPolicy, host_name

TOKEN = "s3cret-token-0123456789"


def policy(**kw):
    return AdminPolicy(lambda: TOKEN, {"sheep1", "node.example"}, **kw)


def env(**headers):
    base = {"HTTP_HOST": "127.0.0.1:7000", "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    base.update(headers)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("header,name", [
    ("127.0.0.1:7000", "127.0.0.1"), ("[::1]:7000", "::1"), ("Sheep1", "sheep1"),
    ("localhost", "localhost"), ("::1", "::1"), ("node.example:80", "node.example")])
def test_host_name_drops_port_and_brackets(header, name):
    assert host_name(header) == name


def test_a_good_request_passes():
    assert policy().check("GET", "/vdis", env()) is None
    assert policy().check("POST", "/vdis", env(CONTENT_TYPE="application/json")) is None


@pytest.mark.parametrize("host", ["127.0.0.1:7000", "[::1]:7000", "10.1.2.3", "localhost:7000",
                                  "sheep1:7000", "NODE.example"])
def test_ip_literals_and_own_names_are_accepted(host):
    assert policy().check("GET", "/vdis", env(HTTP_HOST=host)) is None


def test_a_rebound_dns_name_is_refused_even_with_the_token():
    refusal = policy().check("GET", "/vdis", env(HTTP_HOST="evil.example:7000"))
    assert refusal.status == 421 and "evil.example" in refusal.message


def test_health_and_metrics_need_no_token_but_do_need_a_good_host():
    bare = env(HTTP_AUTHORIZATION=None)
    assert policy().check("GET", "/health", bare) is None
    assert policy().check("GET", "/metrics", bare) is None
    assert policy().check("GET", "/metrics", env(HTTP_HOST="evil.example")).status == 421


@pytest.mark.parametrize("authorization,why", [
    (None, "needs a token"), ("Bearer wrong", "wrong admin token"),
    (f"Basic {TOKEN}", "only"), ("Bearer ", "only"), (f"Bearer {TOKEN}x", "wrong admin token"),
    (f"Bearer {TOKEN[:-1]}", "wrong admin token")])
def test_a_missing_or_wrong_token_is_401_with_a_challenge(authorization, why):
    refusal = policy().check("POST", "/cluster/shutdown",
                             env(HTTP_AUTHORIZATION=authorization, CONTENT_TYPE="application/json"))
    assert refusal.status == 401 and why in refusal.message
    assert ("WWW-Authenticate", 'Bearer realm="sheepdog"') in refusal.headers


def test_no_token_known_yet_refuses_everything_but_the_open_routes():
    p = AdminPolicy(lambda: None, set())
    assert p.check("GET", "/vdis", env()).status == 401
    assert p.check("GET", "/health", env()) is None


@pytest.mark.parametrize("method,ctype,ok", [
    ("POST", "application/json", True), ("POST", "application/json; charset=utf-8", True),
    ("POST", "text/plain", False), ("POST", None, False),
    ("POST", "application/x-www-form-urlencoded", False),
    ("PUT", "application/octet-stream", True), ("PUT", "application/json", False),
    ("DELETE", None, True), ("GET", None, True)])
def test_bodies_must_name_their_type(method, ctype, ok):
    refusal = policy().check(method, "/vdis/x", env(CONTENT_TYPE=ctype))
    assert (refusal is None) == ok
    if not ok:
        assert refusal.status == 415


def test_a_declared_body_over_the_cap_is_413():
    p = policy(max_body=1000)
    ok = env(CONTENT_TYPE="application/json", CONTENT_LENGTH="1000")
    assert p.check("POST", "/vdis", ok) is None
    big = env(CONTENT_TYPE="application/json", CONTENT_LENGTH="1001")
    assert p.check("POST", "/vdis", big).status == 413
    bad = env(CONTENT_TYPE="application/json", CONTENT_LENGTH="x")
    assert p.check("POST", "/vdis", bad).status == 400


def test_a_restore_reads_its_body_as_a_stream_and_has_no_cap():
    p = policy(max_body=1000)
    huge = env(CONTENT_TYPE="application/octet-stream", CONTENT_LENGTH=str(1 << 40))
    assert p.check("PUT", "/vdis/vm/restore", huge) is None
    assert p.check("PUT", "/vdis/vm/data", huge).status == 413
    # still a token and the right type
    assert p.check("PUT", "/vdis/vm/restore", {**huge, "HTTP_AUTHORIZATION": "Bearer x"}
                   ).status == 401
    assert p.check("PUT", "/vdis/vm/restore", {**huge, "CONTENT_TYPE": "text/plain"}
                   ).status == 415
