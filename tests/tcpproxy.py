"""A small TCP proxy that makes loopback behave like a Pi on Wi-Fi: delay, a bandwidth limit, and a link that can be
cut (reset) or frozen (silently dropped) in the middle of a transfer. This kernel has no netem, hence threads.

Run as a script it relays stdin/stdout to HOST PORT, for use as an SSH ProxyCommand: ``tcpproxy.py %h %p``.
"""

from __future__ import annotations

import queue
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

_CHUNK = 16 * 1024


@dataclass
class _Link:
    """One proxied connection: the client side and the upstream side."""

    client: socket.socket
    upstream: socket.socket
    frozen: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        """Close both sides with a TCP reset, as a dropped Wi-Fi association looks to the peers."""
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass


class TcpProxy:
    """Listens on 127.0.0.1 and forwards each connection to ``upstream`` through an emulated link.

    ``delay_s`` is added to each direction (so the round trip grows by twice that); ``rate_bytes_s`` limits each
    direction's throughput. Counters say how many bytes went each way.
    """

    def __init__(self, upstream: tuple[str, int], delay_s: float = 0.0, rate_bytes_s: float | None = None):
        self.upstream = upstream
        self.delay_s = delay_s
        self.rate_bytes_s = rate_bytes_s
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0
        self.connections = 0
        self.links: list[_Link] = []
        self._cut_after: int | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    # -- control --------------------------------------------------------------------------------------------

    def cut_after_upload(self, n_bytes: int) -> None:
        """Reset the live connection once ``n_bytes`` more have gone upstream (one shot)."""
        with self._lock:
            self._cut_after = self.bytes_up + n_bytes

    def cut(self) -> None:
        """Reset every live connection now."""
        for link in list(self.links):
            link.reset()

    def freeze(self) -> None:
        """Stop forwarding on every live connection without closing it: packets vanish, nobody is told."""
        for link in list(self.links):
            link.frozen.set()

    def close(self) -> None:
        self._listener.close()
        self.cut()

    # -- forwarding -----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            self.links.append(link)
            self.connections += 1
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                pipe: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
                threading.Thread(target=self._receive, args=(link, source, pipe, up), daemon=True).start()
                threading.Thread(target=self._deliver, args=(link, sink, pipe), daemon=True).start()

    def _receive(self, link: _Link, source: socket.socket, pipe: queue.Queue, up: bool) -> None:
        while not link.closed.is_set():
            try:
                data = source.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                pipe.put(None)
                return
            if link.frozen.is_set():
                continue
            cut = False
            with self._lock:
                if up:
                    if self._cut_after is not None and self.bytes_up + len(data) >= self._cut_after:
                        data = data[: max(0, self._cut_after - self.bytes_up)]
                        self._cut_after, cut = None, True
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
            pipe.put((time.monotonic() + self.delay_s, data))
            if cut:
                pipe.put(None)
                # Let the partial data through first, then break the link: a transfer cut in its middle.
                threading.Thread(target=self._reset_when_drained, args=(link, pipe), daemon=True).start()
                return

    @staticmethod
    def _reset_when_drained(link: _Link, pipe: queue.Queue) -> None:
        pipe.join()
        link.reset()

    def _deliver(self, link: _Link, sink: socket.socket, pipe: queue.Queue) -> None:
        next_free = time.monotonic()
        while True:
            item = pipe.get()
            try:
                if item is None:
                    if not link.closed.is_set():
                        try:
                            sink.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                    return
                deliver_at, data = item
                # The emulated link: propagation delay, then serialisation at the link rate.
                now = time.monotonic()
                if deliver_at > now:
                    time.sleep(deliver_at - now)
                if self.rate_bytes_s:
                    next_free = max(next_free, time.monotonic()) + len(data) / self.rate_bytes_s
                    time.sleep(max(0.0, next_free - time.monotonic()))
                if link.frozen.is_set() or link.closed.is_set():
                    continue
                try:
                    sink.sendall(data)
                except OSError:
                    link.reset()
            finally:
                pipe.task_done()


def _relay_stdio(host: str, port: int) -> None:
    """ProxyCommand mode: stdin to the socket, the socket to stdout."""
    sock = socket.create_connection((host, port))

    def upstream() -> None:
        while data := sys.stdin.buffer.read1(_CHUNK):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(_CHUNK):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    _relay_stdio(sys.argv[1], int(sys.argv[2]))
