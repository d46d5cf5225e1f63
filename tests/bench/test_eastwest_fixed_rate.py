"""The fixed-rate east-west run's reading of hey: real hey, at a fixed rate, against a local
HTTP server (one with an error path), parsed as bench/eastwest.py parses it."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading

import pytest

from bench.eastwest import _percentile, parse_hey_csv


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        code = 503 if self.path == "/fail" else 200
        self.send_response(code)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.mark.skipif(shutil.which("hey") is None, reason="hey: make setup installs it")
def test_hey_at_a_fixed_rate_is_read_request_by_request(server):
    run = ["hey", "-z", "2s", "-c", "4", "-q", "25", "-disable-keepalive", "-o", "csv"]
    out = subprocess.run([*run, f"{server}/"], capture_output=True, text=True, timeout=30)
    times, errors = parse_hey_csv(out.stdout)
    p50 = _percentile(times, 0.5)
    print(f"100 requests a second for 2 s: {len(times)} answered, p50 {p50:.2f} ms")
    assert 150 <= len(times) <= 210 and errors == 0  # the rate held, not wrk's "as fast as it can"
    assert times == sorted(times) and times[0] > 0
    slow = ["hey", "-z", "1s", "-c", "2", "-q", "5", "-disable-keepalive", "-o", "csv"]
    bad = subprocess.run([*slow, f"{server}/fail"], capture_output=True, text=True, timeout=30)
    failed, errors = parse_hey_csv(bad.stdout)
    assert failed and errors == len(failed)  # every 503 counted


def test_percentiles_by_nearest_rank():
    values = [float(i) for i in range(1, 1001)]
    assert (_percentile(values, 0.5), _percentile(values, 0.99), _percentile(values, 0.999)) == (
        500.0, 990.0, 999.0,
    )  # fmt: skip
    assert _percentile([], 0.99) == 0.0 and _percentile([7.0], 0.999) == 7.0
