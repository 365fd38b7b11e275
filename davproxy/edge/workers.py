"""``[server] workers = N``: N davproxy processes on one port, and the supervisor that keeps them.

The parent migrates the store once and closes it, binds the listening socket once, then
forks N children that each run the normal application on that socket (``server.py``
with ``sock``).  Nothing that cannot cross a fork exists in the parent when it forks:
no event loop, no store connection, no client session.  The kernel hands each new
connection to one of the children waiting in ``accept`` (a shared socket, measured
against ``SO_REUSEPORT`` in bench/workers.py: see the README's Performance section).

The parent then only supervises:

* a child that dies is started again after a back-off (0.5 s, doubling to 30 s; back to
  0.5 s once it has served a minute), with a line naming its pid and exit status or
  signal;
* SIGTERM/SIGINT are passed on (each child drains its requests in flight), SIGHUP too
  (each child reads the users again; the groups are applied once, see sites.py);
* a child that fails while starting (the store cannot be opened, a port of its own in
  use) ends the whole server the first time that worker starts, or after five failed
  starts in a row later: the child's own one-line reason is shown, with exit code 2
  for a configuration error, else 1.

The children tell the parent through a pipe each: ``ready`` once listening, or
``error <reason>`` when they cannot start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from davproxy import config as config_mod
from davproxy.edge import logs
from davproxy.edge.monitoring import WorkerSlot
from davproxy.edge.server import StartupError, run, run_until_signal
from davproxy.store import Store, StoreError

log = logging.getLogger("davproxy.workers")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # a child that served this long starts over at the first back-off
START_FAILURES_MAX = 5  # failed starts in a row (after the first start) end the server


@dataclass
class _Child:
    index: int
    pid: int
    pipe: int  # read end: "ready" or "error <reason>"
    started: float
    ready: bool = False
    reason: str = ""
    received: bytes = b""


@dataclass
class _Slot:
    """One worker index over its lifetimes: the back-off before its next start."""

    backoff: float = BACKOFF_FIRST
    start_at: float = 0.0
    child: _Child | None = None
    lives: int = 0


@dataclass
class Supervisor:
    config: config_mod.Config
    sock: socket.socket
    since: float = field(default_factory=time.time)
    slots: dict[int, _Slot] = field(default_factory=dict)
    stopping: bool = False
    start_failures: int = 0
    wake: tuple[int, int] = (-1, -1)  # the parent's signal wake-up pipe
    #: each child binds a socket of its own with SO_REUSEPORT (the kernel spreads new
    #: connections by a hash); the parent's socket then only holds the port.  Measured
    #: against the shared socket by bench/workers.py; not the default (README).
    reuse_port: bool = False

    # -- the children --------------------------------------------------------------------

    def spawn(self, index: int) -> None:
        slot = self.slots[index]
        read_end, write_end = os.pipe()
        since = self.since if slot.lives == 0 else time.time()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            self._become_worker(index, write_end, since)
        os.close(write_end)
        slot.lives += 1
        slot.child = _Child(index, pid, read_end, time.time())

    def _become_worker(self, index: int, pipe: int, since: float) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in self.wake:
                os.close(fd)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for other in self.slots.values():  # the siblings' pipes are the parent's
                if other.child is not None:
                    os.close(other.child.pipe)
            logs.name_worker(index)
            slot = WorkerSlot(index, self.config.server.workers, since)
            sock = self.sock
            if self.reuse_port:
                host, port = sock.getsockname()[:2]
                sock.close()
                sock = listen(host, port, reuse_port=True)

            def started(_port: int) -> None:
                os.write(pipe, b"ready\n")

            run(run_until_signal(self.config, started, sock=sock, slot=slot))
            code = 0
        except StartupError as exc:
            os.write(pipe, f"error {exc}\n".encode())
            code = 2 if str(exc).startswith("configuration error") else 1
        except KeyboardInterrupt:
            code = 0
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and keep them until a signal stops the server; the exit code."""
        wake_read, wake_write = self.wake = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        received: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, lambda n, _f: received.append(n))
        count = self.config.server.workers
        log.info("davproxy starting %d workers on %s", count, _address(self.sock))
        for index in range(1, count + 1):
            self.slots[index] = _Slot()
            self.spawn(index)
        deadline: float | None = None
        failed: tuple[int, str] | None = None
        while True:
            pipes = {
                s.child.pipe: s.child for s in self.slots.values() if s.child and s.child.pipe >= 0
            }
            timeout = 1.0
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.time()))
            waiting = [s.start_at for s in self.slots.values() if s.child is None]
            if waiting and not self.stopping:
                timeout = max(0.0, min(timeout, min(waiting) - time.time()))
            try:
                readable, _, _ = select.select([wake_read, *pipes], [], [], timeout)
            except InterruptedError:
                readable = []
            if wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
            for fd in readable:
                if fd in pipes:
                    self._hear(pipes[fd])
            signals, received[:] = list(received), []
            for number in signals:
                if number in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    log.info("stopping %d workers (finishing requests in flight)", count)
                    self.stopping = True
                    deadline = time.time() + self.config.server.shutdown_timeout + 5
                    self._signal_all(signal.SIGTERM)
                elif number == signal.SIGHUP and not self.stopping:
                    log.info("SIGHUP: passed on to the workers")
                    self._signal_all(signal.SIGHUP)
            outcome = self._reap()
            if outcome is not None and failed is None:
                failed = outcome
                self.stopping = True
                deadline = time.time() + self.config.server.shutdown_timeout + 5
                self._signal_all(signal.SIGTERM)
            if self.stopping:
                if all(s.child is None for s in self.slots.values()):
                    break
                if deadline is not None and time.time() >= deadline:
                    self._signal_all(signal.SIGKILL)
                    deadline = None
                continue
            for index, slot in self.slots.items():
                if slot.child is None and time.time() >= slot.start_at:
                    self.spawn(index)
        self.sock.close()
        if failed is not None:
            code, reason = failed
            print(f"davproxy: {reason}", file=sys.stderr)
            return code
        log.info("stopped")
        return 0

    def _hear(self, child: _Child) -> None:
        try:
            data = os.read(child.pipe, 4096)
        except OSError:
            data = b""
        if not data:
            os.close(child.pipe)
            child.pipe = -1
            return
        child.received += data
        for line in child.received.decode(errors="replace").splitlines():
            if line == "ready" and not child.ready:
                child.ready = True
                self.start_failures = 0
                log.info("worker %d (pid %d) ready", child.index, child.pid)
            elif line.startswith("error "):
                child.reason = line[len("error ") :]

    def _reap(self) -> tuple[int, str] | None:
        """Collect dead children; plan their restarts.  (exit code, reason) when the
        server must stop because workers cannot start."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            slot = next((s for s in self.slots.values() if s.child and s.child.pid == pid), None)
            if slot is None or slot.child is None:
                continue
            child, slot.child = slot.child, None
            if child.pipe >= 0:
                self._hear(child)  # a last word sent just before exiting
                if child.pipe >= 0:
                    os.close(child.pipe)
            if self.stopping:
                log.info("worker %d (pid %d) %s", child.index, pid, _how(status))
                continue
            lived = time.time() - child.started
            if not child.ready:
                self.start_failures += 1
                reason = (
                    child.reason
                    or f"worker {child.index} (pid {pid}) {_how(status)} while starting"
                )
                code = os.waitstatus_to_exitcode(status)
                code = code if code in (1, 2) else 1
                if slot.lives == 1 or self.start_failures >= START_FAILURES_MAX:
                    return code, reason
                log.error("worker %d (pid %d) could not start: %s", child.index, pid, reason)
            if lived >= HEALTHY_AFTER:
                slot.backoff = BACKOFF_FIRST
            delay = slot.backoff
            slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)
            slot.start_at = time.time() + delay
            log.warning(
                "worker %d (pid %d) %s after %.0f s; starting it again in %.1f s",
                child.index, pid, _how(status), lived, delay,
            )  # fmt: skip

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots.values():
            if slot.child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.child.pid, signum)


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}/"


def listen(host: str, port: int, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """The one listening socket every worker accepts on (``reuse_port``: one of a group
    bound with SO_REUSEPORT; ``backlog`` 0: bound only, not listening)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if backlog:
            sock.listen(backlog)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    sock.setblocking(False)
    return sock


def serve(config: config_mod.Config, reuse_port: bool = False) -> int:
    """``davproxy serve`` with ``[server] workers`` > 1; the exit code."""
    try:  # migrated once, here, before any worker opens it; closed before forking
        Store.open(config.store.location, config.store.reveal_password()).close()
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    host, port = config.server.host, config.server.port
    sock = listen(host, port, reuse_port=reuse_port, backlog=0 if reuse_port else 1024)
    # Each worker's libuv takes one connection per turn of its loop from the shared
    # socket, so a burst of new connections (a client opening 16 keep-alive connections
    # at once) is spread over the workers instead of all landing on the one that woke
    # first and staying there (measured: 16 of 16 on one worker, c=16 no faster than one
    # process; with it 1.6x).  An operator's own setting is kept.
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    return Supervisor(config, sock, reuse_port=reuse_port).run()
