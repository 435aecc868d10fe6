"""Locating, downloading and checksum-checking dataset files, on synthetic data.

Nothing here touches the internet or ~/.cache: every test runs with FASTCNN_DATA unset (or set
to a tmp folder), FASTCNN_CACHE in tmp, and mirrors that are HTTP servers on 127.0.0.1 (or a
loopback port that refuses connections). Network waits are capped at a few seconds.
"""
import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest

from fastcnn.datasets import _files, fashion_mnist, mnist
from fastcnn.datasets._files import (
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    RemoteFile,
    fetch,
)

N_TRAIN, N_TEST = 6, 4


def idx_gz(magic, array):
    return gzip.compress(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes())


def remote(name, content):
    return RemoteFile(name, len(content), hashlib.sha256(content).hexdigest())


@pytest.fixture
def synthetic(tmp_path):
    """A tiny MNIST-shaped dataset: its arrays, its published files (in ``origin``) and a spec."""
    rng = np.random.default_rng(7)
    arrays = {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    origin = tmp_path / "origin"
    origin.mkdir()
    files = {}
    for role, name in [
        ("train_images", "train-images-idx3-ubyte.gz"),
        ("train_labels", "train-labels-idx1-ubyte.gz"),
        ("test_images", "t10k-images-idx3-ubyte.gz"),
        ("test_labels", "t10k-labels-idx1-ubyte.gz"),
    ]:
        a = arrays[role]
        content = idx_gz(0x803 if a.ndim == 3 else 0x801, a)
        (origin / name).write_bytes(content)
        files[role] = remote(name, content)
    spec = DatasetSpec(title="Synthetic", folder="synthetic", files=files, mirrors=())
    return arrays, origin, spec


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No FASTCNN_DATA, a tmp cache, an empty verification memo, short network timeouts."""
    monkeypatch.delenv("FASTCNN_DATA", raising=False)
    monkeypatch.setenv("FASTCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_files, "_verified", {})
    monkeypatch.setattr(_files, "TIMEOUT_S", 5.0)
    # Loopback must never go through a proxy configured in the environment.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "cache"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/short/NAME`` cuts the body in half, ``/long/NAME`` appends bytes."""

    def do_GET(self):
        self.server.requests.append(self.path)
        for mode in ("short", "long"):
            prefix = f"/{mode}/"
            if self.path.startswith(prefix):
                path = os.path.join(self.directory, self.path[len(prefix) :])
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                with open(path, "rb") as f:
                    body = f.read()
                self.send_response(200)
                if mode == "short":
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                else:  # no Content-Length: the client must stop by itself
                    self.end_headers()
                    self.wfile.write(body + b"\0" * 4096)
                self.close_connection = True
                return
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@contextlib.contextmanager
def serve(directory):
    """An HTTP server on 127.0.0.1 serving ``directory``; yields (base URL, request log)."""

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(directory), **kwargs)

    server = Server(("127.0.0.1", 0), handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True  # never keeps the test process alive
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def refused_url():
    """A loopback URL nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def with_mirrors(spec, *mirrors):
    return dataclasses.replace(spec, mirrors=tuple(mirrors))


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# --- FASTCNN_DATA: an explicit folder, used alone -------------------------------------------


def test_data_folder_is_used_without_download(synthetic, tmp_path, monkeypatch, refused_url):
    arrays, origin, spec = synthetic
    (tmp_path / "data").mkdir()
    origin.rename(tmp_path / "data" / "synthetic")
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "data"))
    paths = fetch(with_mirrors(spec, refused_url))
    assert paths == {r: tmp_path / "data" / "synthetic" / f.name for r, f in spec.files.items()}
    assert not (tmp_path / "cache").exists()


def test_data_folder_missing_says_where_and_does_not_fall_back(
    synthetic, tmp_path, monkeypatch, refused_url
):
    _, _, spec = synthetic
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as info:
        fetch(with_mirrors(spec, refused_url))
    msg = str(info.value)
    assert "FASTCNN_DATA" in msg and "does not exist" in msg
    assert str(tmp_path / "nowhere" / "synthetic") in msg
    for f in spec.files.values():
        assert f.name in msg
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "cache").exists()  # no silent download elsewhere


def test_data_folder_lists_the_missing_files(synthetic, tmp_path, monkeypatch):
    _, origin, spec = synthetic
    (origin / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "data").mkdir()
    origin.rename(tmp_path / "data" / "synthetic")
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError, match=r"lacks t10k-labels-idx1-ubyte\.gz\."):
        fetch(spec)


def test_empty_data_variable_counts_as_unset(synthetic, monkeypatch, isolated):
    _, origin, spec = synthetic
    monkeypatch.setenv("FASTCNN_DATA", "")
    origin.rename(isolated.parent / "moved")
    isolated.mkdir()
    (isolated.parent / "moved").rename(isolated / "synthetic")
    assert fetch(spec)["train_images"] == isolated / "synthetic" / "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_data_folder_bad_file_names_file_and_expected_sha(synthetic, tmp_path, monkeypatch, damage):
    _, origin, spec = synthetic
    target = origin / "train-labels-idx1-ubyte.gz"
    content = bytearray(target.read_bytes())
    if damage == "truncate":
        del content[-5:]
    else:
        content[len(content) // 2] ^= 1  # same size: only the hash can tell
    target.write_bytes(bytes(content))
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path))
    origin.rename(tmp_path / "synthetic")
    with pytest.raises(ChecksumError) as info:
        fetch(spec)
    msg = str(info.value)
    assert str(tmp_path / "synthetic" / "train-labels-idx1-ubyte.gz") in msg
    assert spec.files["train_labels"].sha256 in msg
    assert "Replace it with the original file" in msg
    assert ("bytes, expected" if damage == "truncate" else "has sha256") in msg


# --- the cache and downloads ------------------------------------------------------------------


def test_download_into_cache_then_reuse(synthetic, isolated, capsys):
    _, origin, spec = synthetic
    with serve(origin) as (base, requests):
        paths = fetch(with_mirrors(spec, base))
        assert sorted(requests) == sorted("/" + f.name for f in spec.files.values())
        folder = isolated / "synthetic"
        for role, f in spec.files.items():
            assert paths[role] == folder / f.name
            assert paths[role].read_bytes() == (origin / f.name).read_bytes()
        assert leftovers(folder) == []
        assert "fastcnn: downloading " + base in capsys.readouterr().err
        assert fetch(with_mirrors(spec, base)) == paths
        assert len(requests) == 4  # the second call found everything in the cache


def test_verification_is_remembered_per_path_size_and_mtime(synthetic, monkeypatch, isolated):
    _, origin, spec = synthetic
    origin.rename(isolated.parent / "moved")
    isolated.mkdir()
    (isolated.parent / "moved").rename(isolated / "synthetic")
    hashed = []
    real = _files.sha256_file
    monkeypatch.setattr(_files, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    fetch(spec)
    assert len(hashed) == 4
    fetch(spec)
    assert len(hashed) == 4  # remembered
    path = isolated / "synthetic" / "t10k-images-idx3-ubyte.gz"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "modified"
    fetch(spec)
    assert hashed[4:] == ["t10k-images-idx3-ubyte.gz"]


def test_falls_back_to_the_next_mirror(synthetic, isolated, refused_url):
    _, origin, spec = synthetic
    with serve(origin) as (base, requests):
        paths = fetch(with_mirrors(spec, refused_url, base))
    assert len(requests) == 4
    assert paths["test_labels"].read_bytes() == (origin / "t10k-labels-idx1-ubyte.gz").read_bytes()


def test_all_mirrors_fail_names_urls_and_suggests_fastcnn_data(
    synthetic, isolated, refused_url, tmp_path
):
    _, _, spec = synthetic
    empty = tmp_path / "empty"
    empty.mkdir()
    with serve(empty) as (base, _):
        with pytest.raises(DownloadError) as info:
            fetch(with_mirrors(spec, refused_url, base))
    msg = str(info.value)
    first = spec.files["train_images"].name
    assert f"{refused_url}{first}: ConnectionRefusedError" in msg
    assert f"{base}{first}: HTTP 404" in msg
    assert "FASTCNN_DATA" in msg and str(isolated / "synthetic") in msg
    assert list((isolated / "synthetic").iterdir()) == []


@pytest.mark.parametrize(
    "mode, words",
    [
        ("bad", "downloaded file has sha256"),
        ("bad-size", "server announces .* bytes, expected"),
        ("short/", "received .* bytes, expected|IncompleteRead"),
        ("long/", "server sent more than the expected"),
    ],
)
def test_bad_download_leaves_nothing_behind(synthetic, isolated, tmp_path, mode, words):
    _, origin, spec = synthetic
    if mode.startswith("bad"):  # a mirror serving other bytes, of the same size or not
        served = tmp_path / "bad"
        served.mkdir()
        for f in spec.files.values():
            (served / f.name).write_bytes(b"\x1f" * (f.size + (mode == "bad-size")))
        mode = ""
    else:
        served = origin
    with serve(served) as (base, _):
        with pytest.raises(DownloadError, match=words):
            fetch(with_mirrors(spec, base + mode))
    assert list((isolated / "synthetic").iterdir()) == []


def test_silent_mirror_times_out_instead_of_hanging(synthetic, isolated, monkeypatch):
    _, _, spec = synthetic
    monkeypatch.setattr(_files, "TIMEOUT_S", 0.3)
    # A listening socket that never answers: the kernel accepts the connection, nobody reads.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        start = time.monotonic()
        with pytest.raises(DownloadError, match="timed out"):
            fetch(with_mirrors(spec, f"http://127.0.0.1:{s.getsockname()[1]}/"))
    assert time.monotonic() - start < 5
    assert leftovers(isolated / "synthetic") == []


def test_corrupted_cached_file_says_delete_it(synthetic, isolated):
    _, origin, spec = synthetic
    with serve(origin) as (base, requests):
        spec = with_mirrors(spec, base)
        fetch(spec)
        cached = isolated / "synthetic" / "t10k-images-idx3-ubyte.gz"
        cached.write_bytes(cached.read_bytes()[:-1])
        with pytest.raises(ChecksumError) as info:
            fetch(spec)
        msg = str(info.value)
        assert str(cached) in msg and spec.files["test_images"].sha256 in msg
        assert "Delete it" in msg
        # Neither deleted nor fetched again behind the user's back.
        assert cached.exists() and len(requests) == 4
        cached.unlink()  # as the message says
        fetch(spec)
        assert len(requests) == 5
        assert cached.read_bytes() == (origin / cached.name).read_bytes()


def test_unwritable_cache_names_the_variables(synthetic, monkeypatch, tmp_path):
    _, _, spec = synthetic
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    monkeypatch.setenv("FASTCNN_CACHE", str(blocker))
    with pytest.raises(DatasetError, match="FASTCNN_CACHE") as info:
        fetch(spec)
    assert "FASTCNN_DATA" in str(info.value) and str(blocker / "synthetic") in str(info.value)


def test_default_cache_is_under_home(synthetic, monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCNN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = synthetic[2]
    assert _files.cache_folder(spec) == tmp_path / ".cache" / "fastcnn" / "synthetic"


# --- load_data end to end, on the synthetic files -----------------------------------------------


@pytest.mark.parametrize("module", [mnist, fashion_mnist], ids=["mnist", "fashion_mnist"])
def test_load_data_downloads_and_returns_fresh_arrays(synthetic, isolated, monkeypatch, module):
    arrays, origin, spec = synthetic
    with serve(origin) as (base, _):
        monkeypatch.setattr(module, "SPEC", with_mirrors(spec, base))
        (x_train, y_train), (x_test, y_test) = module.load_data()
    for got, role in [
        (x_train, "train_images"),
        (y_train, "train_labels"),
        (x_test, "test_images"),
        (y_test, "test_labels"),
    ]:
        np.testing.assert_array_equal(got, arrays[role])
        assert got.dtype == np.uint8
    x_train[...] = 0  # the caller owns the arrays; a second call is unaffected
    (again, _), _ = module.load_data()  # from the cache: the server is gone
    np.testing.assert_array_equal(again, arrays["train_images"])


def test_real_spec_error_names_the_mnist_folder_and_files(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        mnist.load_data()
    msg = str(info.value)
    assert str(tmp_path / "mnist") in msg and "FASTCNN_DATA" in msg
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
