"""minires.io.download against a local HTTP server on 127.0.0.1 (never the internet).

The server serves a good file, a file that is not the one expected, a response
that announces its length and then hangs up halfway, and a 404.  Each test
checks the target file and that no temporary file is left behind.
"""
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from minires.io import download
from minires.io.download import (WeightsDownloadError, WeightsNotFoundError, get_file, md5sum,
                                 resnet50_weights_path)

GOOD = os.urandom(200_000)
GOOD_MD5 = hashlib.md5(GOOD).hexdigest()
OTHER = os.urandom(200_000)                      # served where GOOD is expected


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = {}                                    # path -> number of requests

    def do_GET(self):
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        if self.path == "/good.h5":
            self._send(GOOD)
        elif self.path == "/other.h5":
            self._send(OTHER)
        elif self.path == "/cut.h5":             # announce all of GOOD, send half, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[:len(GOOD) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404, "Not Found")

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):            # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def hits(path):
    return _Handler.hits.get(path, 0)


def assert_only(folder, *names):
    """``folder`` holds exactly ``names``: in particular no leftover temporary file."""
    assert sorted(os.listdir(folder)) == sorted(names)


# ---------------------------------------------------------------- get_file

def test_good_download_lands_at_target(server, tmp_path):
    target = tmp_path / "sub" / "w.h5"           # the folder is created too
    assert get_file(f"{server}/good.h5", GOOD_MD5, str(target), progress=False) == str(target)
    assert target.read_bytes() == GOOD
    assert_only(tmp_path / "sub", "w.h5")


def test_fallback_progress_line_reaches_100_percent(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "_tqdm", None)
    get_file(f"{server}/good.h5", GOOD_MD5, str(tmp_path / "w.h5"), progress=True)
    err = capsys.readouterr().err
    assert "w.h5: 100%" in err and err.endswith("\n")


def test_md5_mismatch_raises_and_leaves_nothing(server, tmp_path):
    target = tmp_path / "w.h5"
    url = f"{server}/other.h5"
    with pytest.raises(WeightsDownloadError) as info:
        get_file(url, GOOD_MD5, str(target), progress=False)
    message = str(info.value)
    assert message.startswith("MD5 mismatch for w.h5") and url in message
    assert GOOD_MD5 in message and hashlib.md5(OTHER).hexdigest() in message
    assert str(target) in message                                       # manual instructions
    assert message.endswith("get_file then finds it there and downloads nothing.")
    assert "--weights" not in message                  # the command line's flag: not this API's
    assert (info.value.url, info.value.md5, info.value.path) == (url, GOOD_MD5, str(target))
    assert isinstance(info.value, OSError)
    assert_only(tmp_path)


def test_connection_cut_midway_raises_and_leaves_nothing(server, tmp_path):
    target = tmp_path / "w.h5"
    with pytest.raises(WeightsDownloadError) as info:
        get_file(f"{server}/cut.h5", GOOD_MD5, str(target), progress=False)
    # caught by the Content-Length check, before the MD5 check
    assert f"after {len(GOOD) // 2:,} of {len(GOOD):,} bytes" in str(info.value)
    assert_only(tmp_path)


def test_404_names_the_url(server, tmp_path):
    url = f"{server}/missing.h5"
    with pytest.raises(WeightsDownloadError) as info:
        get_file(url, GOOD_MD5, str(tmp_path / "w.h5"), progress=False)
    assert str(info.value).startswith("could not download w.h5: HTTP Error 404")
    assert url in str(info.value)
    assert_only(tmp_path)


def test_interrupt_midway_removes_temp_file(server, tmp_path, monkeypatch):
    class Interrupting:
        def update(self, n):
            raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr(download, "_progress_bar", lambda total, desc, enabled: Interrupting())
    with pytest.raises(KeyboardInterrupt):
        get_file(f"{server}/good.h5", GOOD_MD5, str(tmp_path / "w.h5"))
    assert_only(tmp_path)


def test_existing_good_file_is_not_downloaded_again(server, tmp_path):
    target = tmp_path / "w.h5"
    target.write_bytes(GOOD)
    before = hits("/good.h5")
    assert get_file(f"{server}/good.h5", GOOD_MD5, str(target), progress=False) == str(target)
    assert hits("/good.h5") == before
    assert target.read_bytes() == GOOD


def test_existing_corrupt_file_is_replaced(server, tmp_path):
    target = tmp_path / "w.h5"
    target.write_bytes(GOOD[:1000])              # e.g. an old interrupted copy
    before = hits("/good.h5")
    get_file(f"{server}/good.h5", GOOD_MD5, str(target), progress=False)
    assert hits("/good.h5") == before + 1
    assert target.read_bytes() == GOOD
    assert_only(tmp_path, "w.h5")


@pytest.mark.parametrize("served", ["other.h5", "cut.h5", "missing.h5"])
def test_existing_corrupt_file_is_deleted_when_redownload_fails(server, tmp_path, served):
    """Decision: a file with the wrong MD5 is never used.  If it cannot be replaced
    it is deleted, so nothing can load it later, and the error says so."""
    target = tmp_path / "w.h5"
    target.write_bytes(b"not the weights")
    bad_md5 = hashlib.md5(b"not the weights").hexdigest()
    with pytest.raises(WeightsDownloadError) as info:
        get_file(f"{server}/{served}", GOOD_MD5, str(target), progress=False)
    assert f"had MD5 {bad_md5}" in str(info.value) and "was deleted" in str(info.value)
    assert_only(tmp_path)


def test_md5sum_matches_hashlib_across_chunks(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(GOOD)
    assert md5sum(str(path), chunk_size=4096) == GOOD_MD5   # 200 kB: many chunks


# ---------------------------------------------------------------- table and cache

def test_table_urls_and_filenames_agree():
    for (generation, top), entry in download.RESNET50_WEIGHTS.items():
        assert entry.url.rsplit("/", 1)[1] == entry.filename
        assert entry.filename.endswith("_kernels.h5" if top else "_kernels_notop.h5")
        assert len(entry.md5) == 32 and int(entry.md5, 16) >= 0
    assert len({e.md5 for e in download.RESNET50_WEIGHTS.values()}) == 4
    assert len({e.url for e in download.RESNET50_WEIGHTS.values()}) == 4


@pytest.fixture
def user_cache(tmp_path, monkeypatch):
    """Pretend minires is installed (no checkout) with MINIRES_HOME = tmp_path/home."""
    monkeypatch.setattr(download, "_checkout_weights_dir", lambda root=None: None)
    monkeypatch.setenv("MINIRES_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_cache_dir_honours_minires_home(user_cache):
    assert download.cache_dir() == str(user_cache)


def test_cache_dir_falls_back_to_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_checkout_weights_dir", lambda root=None: None)
    monkeypatch.delenv("MINIRES_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == str(tmp_path / "xdg" / "minires")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert download.cache_dir() == str(tmp_path / "me" / ".cache" / "minires")


def test_minires_home_wins_over_the_checkout(tmp_path, monkeypatch):
    checkout = str(tmp_path / "repo" / "weights")
    monkeypatch.setattr(download, "_checkout_weights_dir", lambda root=None: checkout)
    monkeypatch.setenv("MINIRES_HOME", str(tmp_path / "home"))
    assert download.cache_dir() == str(tmp_path / "home")
    monkeypatch.delenv("MINIRES_HOME")
    assert download.cache_dir() == checkout


def test_checkout_detection_needs_weights_dir_and_setup_cfg(tmp_path):
    assert download._checkout_weights_dir(str(tmp_path)) is None
    (tmp_path / "weights").mkdir()
    assert download._checkout_weights_dir(str(tmp_path)) is None
    (tmp_path / "setup.cfg").write_text("")
    assert download._checkout_weights_dir(str(tmp_path)) == str(tmp_path / "weights")


def test_not_found_without_download_names_path_and_url(user_cache):
    with pytest.raises(WeightsNotFoundError) as info:
        resnet50_weights_path("legacy", include_top=False, download=False)
    entry = download.RESNET50_WEIGHTS[("legacy", False)]
    path = user_cache / "legacy" / entry.filename
    assert str(path) in str(info.value) and entry.url in str(info.value)
    assert "ResNet50(weights=PATH)" in str(info.value) and "--weights" not in str(info.value)
    lines = str(info.value).splitlines()                     # a few short lines
    assert len(lines) <= 6 and all(len(line) <= 80 for line in lines if line not in
                                   (f"    {entry.url}", f"    {path}")), lines
    assert (info.value.url, info.value.path) == (entry.url, str(path))
    assert isinstance(info.value, FileNotFoundError)
    assert not user_cache.exists()                   # nothing created


def test_without_download_a_corrupt_file_is_refused_and_kept(user_cache):
    path = user_cache / "current" / download.RESNET50_WEIGHTS[("current", True)].filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"junk")
    with pytest.raises(WeightsNotFoundError, match="has MD5"):
        resnet50_weights_path("current", download=False)
    assert path.read_bytes() == b"junk"


def test_generations_are_cached_apart(server, user_cache, monkeypatch):
    table = dict(download.RESNET50_WEIGHTS)
    for generation in download.GENERATIONS:
        table[(generation, True)] = table[(generation, True)]._replace(url=f"{server}/good.h5", md5=GOOD_MD5)
    monkeypatch.setattr(download, "RESNET50_WEIGHTS", table)
    legacy = resnet50_weights_path("legacy", progress=False)
    current = resnet50_weights_path("current", progress=False)
    assert legacy == str(user_cache / "legacy" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    assert current == str(user_cache / "current" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    assert Path(legacy).read_bytes() == GOOD and Path(current).read_bytes() == GOOD
    assert resnet50_weights_path("legacy", download=False) == legacy


def test_unknown_generation_is_named():
    with pytest.raises(ValueError, match="'keras4'"):
        resnet50_weights_path("keras4", download=False)
