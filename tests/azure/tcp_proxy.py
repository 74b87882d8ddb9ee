"""A loopback TCP proxy that can cut a connection after N bytes from the client, like a network failing mid-upload,
add a round-trip delay, like a network between a plant and a cloud region, and count the HTTP requests it carries."""

from __future__ import annotations

import collections
import heapq
import re
import socket
import threading
import time

_REQUEST_LINE = re.compile(rb"(GET|PUT|HEAD|POST|DELETE|PATCH) (/[^ \r\n]*) HTTP/1\.[01]\r\n")


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>.

    ``cut_after``: once a connection has carried that many bytes from the client (``direction="up"``, an
    upload) or from the server (``"down"``, a download), both of its sockets are closed; only the first
    such connection is cut. ``then``: ``"forward"`` keeps serving new
    connections (a blip the client can retry through), ``"die"`` also closes the listening socket (the
    proxy is killed: later connects are refused until ``start()`` is called again on the same port).
    """

    def __init__(
        self,
        target_port: int,
        cut_after: int | None = None,
        then: str = "forward",
        direction: str = "up",
        delay_s: float = 0.0,
    ):
        """``delay_s``: round-trip time added to every exchange (half on the way up, half on the way down; data
        is held, not throttled: a long transfer pays it once, like a real link's latency)."""
        assert then in ("forward", "die") and direction in ("up", "down")
        self.direction = direction
        self.delay_s = delay_s
        self.requests: collections.Counter[str] = collections.Counter()  # HTTP method -> requests seen
        self.request_lines: list[tuple[str, str]] = []  # (method, path) of each request seen
        self.bytes_up = 0
        self.bytes_down = 0
        self.target_port = target_port
        self.cut_after = cut_after
        self.then = then
        self.port = 0
        self.cuts = 0
        self.connections = 0
        self.forwarded_at_cut: list[int] = []
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.cut_event = threading.Event()

    def start(self) -> CuttingProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._listener is not None:
            _close(self._listener)
            self._listener = None
        with self._lock:
            for sock in list(self._sockets):
                _close(sock)
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self.connections += 1
                self._sockets.update((client, upstream))
            pair = _Pair(client, upstream)
            up, down = self.direction == "up", self.direction == "down"
            threading.Thread(target=self._pump, args=(pair, client, upstream, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, upstream, client, down), daemon=True).start()

    def _pump(self, pair: _Pair, source: socket.socket, target: socket.socket, may_cut: bool) -> None:
        moved = 0
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            if (
                may_cut
                and self.cut_after is not None
                and not self.cut_event.is_set()
                and moved + len(data) > self.cut_after
            ):
                keep = self.cut_after - moved
                try:
                    target.sendall(data[:keep])
                except OSError:
                    pass
                self._cut(pair, moved + keep)
                return
            if source is pair.client:
                self._count_requests(pair, data)
            with self._lock:
                if source is pair.client:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
            try:
                if self.delay_s > 0:
                    pair.delayed(target, data, time.monotonic() + self.delay_s / 2)
                else:
                    target.sendall(data)
            except OSError:
                break
            moved += len(data)
        if self.delay_s > 0:
            pair.delayed(target, None, time.monotonic() + self.delay_s / 2)  # close once the data is delivered
        else:
            pair.close()

    def _count_requests(self, pair: _Pair, data: bytes) -> None:
        """Request lines in the client's stream (a tail of the previous chunk covers a line split in two)."""
        window = pair.tail + data
        start = len(pair.tail)
        found = [
            (m.group(1).decode(), m.group(2).decode(errors="replace"))
            for m in _REQUEST_LINE.finditer(window)
            if m.end() > start and (m.start() == start or window[max(0, m.start() - 2) : m.start()] == b"\r\n")
        ]
        pair.tail = window[-512:]
        if found:
            with self._lock:
                self.requests.update(method for method, _ in found)
                self.request_lines.extend(found)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_lines.clear()
            self.bytes_up = self.bytes_down = 0

    def _cut(self, pair: _Pair, forwarded: int) -> None:
        with self._lock:
            self.cuts += 1
            self.forwarded_at_cut.append(forwarded)
        if self.then == "die":
            self.stop()
        pair.close(reset=True)
        self.cut_event.set()

    def __enter__(self) -> CuttingProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.tail = b""
        self._queue: list[tuple[float, int, socket.socket, bytes | None]] = []
        self._ready = threading.Condition()
        self._order = 0
        self._sender: threading.Thread | None = None

    def delayed(self, target: socket.socket, data: bytes | None, due: float) -> None:
        """Send ``data`` to ``target`` at ``due`` (in order); ``None`` closes the pair then."""
        with self._ready:
            self._order += 1
            heapq.heappush(self._queue, (due, self._order, target, data))
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_when_due, daemon=True)
                self._sender.start()
            self._ready.notify()

    def _send_when_due(self) -> None:
        while True:
            with self._ready:
                while not self._queue or self._queue[0][0] > time.monotonic():
                    self._ready.wait(max(0.0, self._queue[0][0] - time.monotonic()) if self._queue else None)
                _, _, target, data = heapq.heappop(self._queue)
            if data is None:
                self.close()
                return
            try:
                target.sendall(data)
            except OSError:
                self.close()
                return

    def close(self, reset: bool = False) -> None:
        for sock in (self.client, self.upstream):
            if reset:  # RST instead of FIN: the peer sees the connection break, not a clean end
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass
            _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class ProxyProcess:
    """A ``CuttingProxy`` in a process of its own (the network does not share the client's interpreter): the
    delay is set and the counts are read over a loopback control socket."""

    def __init__(self, target_port: int):
        import subprocess
        import sys

        self._process = subprocess.Popen(
            [sys.executable, __file__, str(target_port)], stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        self.port, self._control = (int(x) for x in self._process.stdout.readline().split())

    def _ask(self, **command) -> dict:
        import json

        with socket.create_connection(("127.0.0.1", self._control)) as conn:
            conn.sendall(json.dumps(command).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                reply += chunk
        return json.loads(reply)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def delay_s(self) -> float:
        return self._ask()["delay_s"]

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._ask(delay_s=value)

    def reset_counts(self) -> None:
        self._ask(reset=True)

    def counts(self) -> dict:
        """{"requests": {method: n}, "request_lines": [[method, path], ...], "bytes_up": n, "bytes_down": n}"""
        return self._ask(counts=True)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def _serve(target_port: int) -> None:
    import json

    proxy = CuttingProxy(target_port).start()
    control = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    control.bind(("127.0.0.1", 0))
    control.listen(4)
    print(proxy.port, control.getsockname()[1], flush=True)
    while True:
        conn, _ = control.accept()
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                line += chunk
            command = json.loads(line or b"{}")
            if "delay_s" in command:
                proxy.delay_s = float(command["delay_s"])
            if command.get("reset"):
                proxy.reset_counts()
            reply: dict = {"delay_s": proxy.delay_s}
            if command.get("counts"):
                with proxy._lock:
                    reply.update(
                        requests=dict(proxy.requests),
                        request_lines=list(proxy.request_lines),
                        bytes_up=proxy.bytes_up,
                        bytes_down=proxy.bytes_down,
                    )
            conn.sendall(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    import sys

    _serve(int(sys.argv[1]))
