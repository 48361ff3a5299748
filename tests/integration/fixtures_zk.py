"""ZooKeeper fixtures for integration tests: a private server per module, a fresh cluster per test.

Import them into a test module explicitly (``conftest.py`` belongs to someone else)::

    from tests.integration.fixtures_zk import zk_server, zk_chroot  # noqa: F401
"""
from __future__ import annotations

import time
import uuid

import gevent
import pytest

from sheepdog_local.zookeeper import ZooKeeperServer, free_port


@pytest.fixture(scope="module")
def zk_server(tmp_path_factory):
    """A running ZooKeeperServer on a free port (fast, no fsync); stopped even on failure.

    On a failing module the server log tail is printed by ``start`` (startup) or can be read
    from ``zk_server.log_path``.
    """
    server = ZooKeeperServer(tmp_path_factory.mktemp("zk"), free_port(), fast=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def zk_chroot() -> str:
    """A unique cluster name per test (``/sheepdog/<name>`` is then a fresh subtree)."""
    return f"t{uuid.uuid4().hex[:12]}"


def wait_until(pred, timeout: float = 10.0, what: str = "condition"):
    """Poll ``pred()`` (yielding to other greenlets between checks) until truthy; return its value.

    Raises AssertionError naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        gevent.sleep(0.02)
