"""A loopback TCP proxy that can cut a connection after N bytes from the client, like a network failing mid-upload."""

from __future__ import annotations

import socket
import threading


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>.

    ``cut_after``: once a connection has carried that many bytes from the client (``direction="up"``, an
    upload) or from the server (``"down"``, a download), both of its sockets are closed; only the first
    such connection is cut. ``then``: ``"forward"`` keeps serving new
    connections (a blip the client can retry through), ``"die"`` also closes the listening socket (the
    proxy is killed: later connects are refused until ``start()`` is called again on the same port).
    """

    def __init__(self, target_port: int, cut_after: int | None = None, then: str = "forward", direction: str = "up"):
        assert then in ("forward", "die") and direction in ("up", "down")
        self.direction = direction
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
            try:
                target.sendall(data)
            except OSError:
                break
            moved += len(data)
        pair.close()

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
