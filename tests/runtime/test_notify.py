"""``SystemdNotifier`` against a real unix datagram socket (what systemd listens on)."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.runtime.notify import SystemdNotifier


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket at a short path (sun_path is 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="bpn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()
        Path(path).unlink(missing_ok=True)
        os.rmdir(directory)


def test_ready_watchdog_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier.from_env(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.enabled
    assert notifier.watchdog_interval_s() == 10.0
    assert notifier.ready()
    assert sock.recv(4096).decode().splitlines()[0] == "READY=1"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096).decode().splitlines()[0] == "STOPPING=1"


def test_abstract_socket() -> None:
    name = f"bpsync-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096).startswith(b"READY=1")
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_no_socket_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s() is None
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_from_env_reads_os_environ(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = SystemdNotifier.from_env()
    assert notifier.watchdog_interval_s() is None
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_watchdog_for_another_pid_is_not_ours() -> None:
    notifier = SystemdNotifier.from_env(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}
    )
    assert notifier.watchdog_interval_s() is None


def test_a_vanished_socket_never_raises() -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "/nonexistent/bpsync-notify"})
    assert notifier.ready() is False
