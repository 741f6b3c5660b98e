"""Downloads against a hostile server on 127.0.0.1 (never the internet), every
one bounded in time: a server that drips one byte at a time (in the body, or
in the headers), two processes downloading the same file at once, one
download failing while another succeeds, SIGTERM mid-download. After each,
the target holds a verified file or nothing, and once the next download of
the same target finishes no temporary file is left but a live writer's.
(Truncated and wrong-MD5 downloads: tests/test_download.py.)
"""
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from minires.io import atomic
from minires.io.download import WeightsDownloadError, get_file

ROOT = Path(__file__).resolve().parents[1]
GOOD = os.urandom(300_000)
GOOD_MD5 = hashlib.md5(GOOD).hexdigest()
DRIP_EVERY = 0.1          # seconds between two bytes of a dripping response
DRIP_FOR = 20             # seconds a dripping response lasts at most (then it hangs up)


class _Handler(http.server.BaseHTTPRequestHandler):
    started = {}          # path -> threading.Event, set once its response is under way
    release = threading.Event()      # /held-then-cut.h5 hangs up when this is set
    pair = threading.Barrier(2)      # /slow-pair.h5 answers once two requests are in

    def do_GET(self):
        try:
            if self.path == "/good.h5":
                self.headers_for(len(GOOD))
                self.wfile.write(GOOD)
            elif self.path.startswith("/drip-body"):        # all headers, then a byte at a time
                self.headers_for(len(GOOD))
                self.signal_started()
                self.drip(GOOD)
            elif self.path == "/drip-headers.h5":        # even the status line, a byte at a time
                self.signal_started()
                self.drip(b"HTTP/1.0 200 OK\r\nX-Slow: " + b"a" * 10_000)
            elif self.path == "/slow-pair.h5":           # both requests in, then GOOD in pieces
                self.pair.wait(timeout=60)
                self.headers_for(len(GOOD))
                for start in range(0, len(GOOD), 30_000):
                    self.wfile.write(GOOD[start:start + 30_000])
                    self.wfile.flush()
                    time.sleep(0.02)
            elif self.path == "/held-then-cut.h5":       # half of GOOD, wait, hang up
                self.headers_for(len(GOOD))
                self.wfile.write(GOOD[:len(GOOD) // 2])
                self.wfile.flush()
                self.signal_started()
                self.release.wait(timeout=30)
                self.close_connection = True
            else:
                self.send_error(404, "Not Found")
        except (BrokenPipeError, ConnectionResetError, threading.BrokenBarrierError):
            pass                                         # the client gave up: fine

    def headers_for(self, length):
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()

    def signal_started(self):
        self.started.setdefault(self.path, threading.Event()).set()

    def drip(self, data):
        """One byte every DRIP_EVERY seconds: each read sees data long before any
        timeout, so only an overall deadline ends it."""
        end = time.monotonic() + DRIP_FOR
        for byte in data:
            if time.monotonic() > end:
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(DRIP_EVERY)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    block_on_close = False                  # closing does not wait for dripping handlers


@pytest.fixture(scope="module")
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def started(path, timeout):
    """Wait until the server's response to ``path`` is under way."""
    return _Handler.started.setdefault(path, threading.Event()).wait(timeout)


def assert_only(folder, *names):
    assert sorted(os.listdir(folder)) == sorted(names)


def child(url, target, timeout=10, deadline=60):
    """A separate Python process running get_file(url, GOOD_MD5, target)."""
    code = ("import sys; from minires.io.download import get_file; "
            "get_file(sys.argv[1], sys.argv[2], sys.argv[3], progress=False, "
            "timeout=float(sys.argv[4]), deadline=float(sys.argv[5]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT), no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")
    return subprocess.Popen([sys.executable, "-c", code, url, GOOD_MD5, str(target), str(timeout),
                             str(deadline)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------- a byte at a time

@pytest.mark.parametrize("path", ["/drip-body.h5", "/drip-headers.h5"])
def test_a_dripping_server_is_stopped_at_the_deadline(server, tmp_path, path):
    """timeout=2 never fires (a byte comes every 0.1 s); deadline=1 does."""
    target = tmp_path / "w.h5"
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        get_file(server + path, GOOD_MD5, str(target), progress=False, timeout=2, deadline=1)
    seconds = time.monotonic() - start
    assert seconds < 4, f"stopped after {seconds:.1f} s"
    message = str(info.value)
    assert message.startswith("download of w.h5 stopped at its deadline: 1 s passed with ")
    assert "A longer deadline=, in seconds, gives it more time" in message
    assert str(target) in message and server + path in message        # how to get it by hand
    assert_only(tmp_path)


# ---------------------------------------------------------------- two downloads at once

def test_a_failing_download_keeps_the_good_file_another_one_put_there(server, tmp_path):
    """A finds a stale bad file and downloads slowly; B replaces the stale file
    with a good one; then A fails. A must not delete B's file."""
    target = tmp_path / "w.h5"
    target.write_bytes(b"stale: not the weights")
    _Handler.release.clear()
    _Handler.started.pop("/held-then-cut.h5", None)
    errors = []

    def download_a():
        try:
            get_file(f"{server}/held-then-cut.h5", GOOD_MD5, str(target), progress=False,
                     timeout=10, deadline=30)
        except WeightsDownloadError as error:
            errors.append(error)

    a = threading.Thread(target=download_a)
    a.start()
    try:
        assert started("/held-then-cut.h5", timeout=10)
        get_file(f"{server}/good.h5", GOOD_MD5, str(target), progress=False, deadline=30)   # B
        assert target.read_bytes() == GOOD
    finally:
        _Handler.release.set()
        a.join(timeout=30)
    assert not a.is_alive() and len(errors) == 1
    message = str(errors[0])
    assert message.startswith("download of w.h5 was cut short")
    stale_md5 = hashlib.md5(b"stale: not the weights").hexdigest()
    assert f"The earlier w.h5 had MD5 {stale_md5}, not {GOOD_MD5}; it has changed since " \
           "(another download?) and was left alone." in message
    assert target.read_bytes() == GOOD
    assert_only(tmp_path, "w.h5")


@pytest.mark.skipif(os.name != "posix", reason="process ids as minires's temporaries use them")
def test_two_processes_downloading_the_same_file_at_once(server, tmp_path):
    target = tmp_path / "cache" / "w.h5"
    _Handler.pair.reset()
    downloads = [child(f"{server}/slow-pair.h5", target) for _ in range(2)]
    for download in downloads:                   # the server answers once both have asked
        _, err = download.communicate(timeout=120)
        assert download.returncode == 0, err
    assert target.read_bytes() == GOOD
    assert_only(target.parent, "w.h5")


# ---------------------------------------------------------------- killed mid-download

@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_sigterm_midway_leaves_a_part_file_that_the_next_download_removes(server, tmp_path):
    target = tmp_path / "w.h5"
    download = child(f"{server}/drip-body-sigterm.h5", target)
    try:
        assert started("/drip-body-sigterm.h5", timeout=120), download.stderr.read()
        download.send_signal(signal.SIGTERM)     # Python dies at once: no cleanup can run
        download.communicate(timeout=30)
    finally:
        download.kill()
    assert download.returncode == -signal.SIGTERM
    orphans = os.listdir(tmp_path)
    assert len(orphans) == 1 and orphans[0].startswith(".w.h5.") and \
        f"-{download.pid}." in orphans[0] and orphans[0].endswith(".part"), orphans

    assert get_file(f"{server}/good.h5", GOOD_MD5, str(target), progress=False) == str(target)
    assert target.read_bytes() == GOOD
    assert_only(tmp_path, "w.h5")


@pytest.mark.skipif(os.name != "posix", reason="process ids")
def test_only_stale_temporaries_of_the_same_target_are_swept(server, tmp_path):
    """Swept: a dead writer's, and one untouched for over STALE_AFTER (another
    machine's, or an earlier minires's). Kept: a live writer's (this process),
    another machine's recent one, and every other file."""
    target = tmp_path / "w.h5"
    live = Path(atomic.temporary_name(target, ".part"))            # this process: alive
    host = live.name.split(".")[3].split("-")[0]
    other_host = f"{int(host, 16) ^ 1:08x}"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = tmp_path / f".w.h5.{host}-{int(finished.stdout)}.0123abcd.part"
    elsewhere_recent = tmp_path / f".w.h5.{other_host}-1.0123abcd.part"
    elsewhere_old = tmp_path / f".w.h5.{other_host}-2.0123abcd.part"
    earlier_old = tmp_path / ".w.h5.k2j4h6g8.part"
    bystanders = [".w.h5.part", "w.h5.part", ".w.h5.12345.part", ".w.h5.abc-12.0123abcd.part",
                  ".x.h5.k2j4h6g8.part", f".w.h5.{host}-{int(finished.stdout)}.0123abcd.npz"]
    for path in [live, dead, elsewhere_recent, elsewhere_old, earlier_old,
                 *(tmp_path / name for name in bystanders)]:
        path.write_bytes(b"partial")
    old = time.time() - atomic.STALE_AFTER - 60
    for path in (elsewhere_old, earlier_old):
        os.utime(path, (old, old))

    get_file(f"{server}/good.h5", GOOD_MD5, str(target), progress=False)
    assert target.read_bytes() == GOOD
    assert_only(tmp_path, "w.h5", live.name, elsewhere_recent.name, *bystanders)
