"""systemd's notify protocol (``sd_notify``) without libsystemd.

With ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for an
abstract socket); the daemon sends ``READY=1`` once it serves, ``WATCHDOG=1`` at least
every ``WatchdogSec`` (systemd passes ``WATCHDOG_USEC`` and ``WATCHDOG_PID``) and
``STOPPING=1`` when it begins to stop. Outside systemd (no ``NOTIFY_SOCKET``) every
call is a no-op. A failed send is logged at DEBUG and otherwise ignored: notification
never takes the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog: int | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        try:
            value = int(usec) if usec else 0
        except ValueError:
            value = 0
        pid_ok = True
        if pid:
            try:
                pid_ok = int(pid) == os.getpid()
            except ValueError:
                pid_ok = False
        if value > 0 and pid_ok:
            watchdog = value
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval_s(self) -> float | None:
        """systemd's watchdog timeout in seconds (ping at least twice as often), or None."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000

    def notify(self, state: str) -> bool:
        """Send one state string; True when it was sent."""
        if self.address is None:
            return False
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.debug("sd_notify %r to %s failed: %s", state, self.address, exc)
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1\nSTATUS=syncing")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1\nSTATUS=stopping")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")


__all__ = ["SystemdNotifier"]
