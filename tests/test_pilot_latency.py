"""The latency rig: raw-window encoding and the delay proxy."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

from edgeagent.pipeline import features
from edgelab.pilot.latency import DelayProxy, decode_window, encode_window, latency_windows


def test_raw_window_round_trip_gives_the_same_features() -> None:
    w = latency_windows(seed=0, n=2)[1]
    back = decode_window(encode_window(w))
    assert back.start == w.start and back.end == w.end and back.present == w.present
    np.testing.assert_array_equal(features.extract(back), features.extract(w))


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        c, _ = srv.accept()
        with c:
            while data := c.recv(4096):
                c.sendall(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, t


def test_delay_proxy_adds_the_delay_each_way() -> None:
    srv, t = _echo_server()
    proxy = DelayProxy(srv.getsockname(), 0.05)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
            rtts = []
            for i in range(5):
                t0 = time.perf_counter()
                c.sendall(b"ping%d" % i)
                got = b""
                while len(got) < 5:
                    got += c.recv(64)
                rtts.append(time.perf_counter() - t0)
                assert got == b"ping%d" % i
        assert min(rtts) >= 0.1  # 50 ms up + 50 ms back
        assert np.median(rtts) < 0.2
    finally:
        proxy.close()
        srv.close()
        t.join(timeout=2)
