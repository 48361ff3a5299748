"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest
from gevent import socket


@pytest.fixture
def pair():
    """Two connected gevent stream sockets (closed after the test)."""
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()
