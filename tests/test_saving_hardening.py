"""Crafted and odd model files, and faults while saving (issue 15, sections 1 and 2).

Loads that could take gigabytes or block forever before the fix run in a child process
under a 1 GiB address-space limit and a timeout, so that a regression fails the test
(MemoryError, a hang) without hurting the machine.
"""
import errno
import io
import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import fastcnn
import numpy as np
import pytest

from fastcnn import layers, saving
from fastcnn.saving import ModelFileError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ helpers
def dense_model():
    """36 features into a Dense(4): the file holds 148 weights."""
    return fastcnn.Sequential([layers.Input((6, 6, 1)), layers.Flatten(), layers.Dense(4)])


def conv_model():
    return fastcnn.Sequential([layers.Input((4, 4, 1)), layers.Conv2D(2, 3), layers.Flatten(),
                               layers.Dense(2)])


def members(path):
    with zipfile.ZipFile(path) as zf:
        return [(name, zf.read(name)) for name in zf.namelist()]


def raw_zip(path, entries):
    """Writes a zip archive by hand, so that it can lie: ``entries`` are
    ``(name, payload, method, crc, declared_size)`` (payload already compressed)."""
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, size in entries:
        nb = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc,
                           len(payload), size, len(nb), 0) + nb + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0,
                               crc, len(payload), size, len(nb), 0, 0, 0, 0, 0, offset) + nb
    directory = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries),
                                 len(central), directory, 0)
    Path(path).write_bytes(bytes(out))
    return path


def stored(name, data):
    return (name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))


def with_meta(src, dst, edit):
    out = []
    for name, data in members(src):
        if name == "fastcnn.json":
            meta = json.loads(data)
            edit(meta)
            data = json.dumps(meta).encode()
        out.append(stored(name, data))
    return raw_zip(dst, out)


def npy_header_only(shape, dtype="<f4"):
    """A .npy header declaring ``shape``, with no data after it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def npy_bytes(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


_CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
import fastcnn
results = []
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "model":
            fastcnn.load_model(path)
        else:
            from fastcnn import layers
            model = fastcnn.Sequential([layers.Input((6, 6, 1)), layers.Flatten(),
                                        layers.Dense(4)])
            model.load_weights(path)
        results.append(["loaded", ""])
    except BaseException as exc:
        results.append([type(exc).__name__, str(exc)])
print("RESULTS " + json.dumps(results))
"""


def load_in_child(*jobs, timeout=120):
    """``[(exception class name, message)]`` of loading each ``(kind, path)`` in a child
    process under a 1 GiB address-space limit (kind 'model': load_model; 'weights':
    load_weights into a dense_model())."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + (
                   [env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
    arg = json.dumps([[kind, str(path)] for kind, path in jobs])
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True,
                              text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {jobs} did not finish within {timeout} s (blocked)")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, f"the child failed:\n{done.stdout}\n{done.stderr}"
    return [tuple(r) for r in json.loads(lines[0][len("RESULTS "):])]


@pytest.fixture
def dense_file(tmp_path):
    path = tmp_path / "dense.fcnn"
    dense_model().save(path)
    return path


# ------------------------------------------------- 1. crafted and odd files
@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_AS"),
                    reason="needs resource.RLIMIT_AS (POSIX)")
def test_architectures_larger_than_the_file_are_refused_before_allocating(tmp_path):
    dense = tmp_path / "dense.fcnn"
    dense_model().save(dense)
    conv = tmp_path / "conv.fcnn"
    conv_model().save(conv)

    def units(n):
        def edit(meta):
            meta["model"]["config"]["layers"][-1]["config"]["units"] = n
        return edit

    def filters(meta):
        meta["model"]["config"]["layers"][0]["config"]["filters"] = 2**30

    jobs = [("model", with_meta(dense, tmp_path / "d21", units(2**21))),   # 300 MB
            ("model", with_meta(dense, tmp_path / "d23", units(2**23))),   # 1.2 GB
            ("model", with_meta(dense, tmp_path / "d27", units(2**27))),   # 19 GB
            ("model", with_meta(conv, tmp_path / "c30", filters))]         # 38 GB
    for (kind, path), (error, message) in zip(jobs, load_in_child(*jobs)):
        assert error == "ModelFileError", (path, error, message)
        assert str(path) in message
        assert "asks for more weights than the file holds" in message, message
        assert "refused before allocating" in message


def test_a_crafted_architecture_allocates_nothing_big(dense_file, tmp_path):
    def edit(meta):
        meta["model"]["config"]["layers"][-1]["config"]["units"] = 2**19   # 75 MB
    path = with_meta(dense_file, tmp_path / "big", edit)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"layer 'dense\w*' weight 0 of shape "
                                                 r"\(36, 524288\)"):
            fastcnn.load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_the_budget_is_the_files_own_arrays(dense_file, tmp_path):
    # Weights written for Dense(4), architecture Dense(5): the arrays held are 148 floats,
    # the architecture 185; within the slack, so the shape check names the array.
    def edit(meta):
        meta["model"]["config"]["layers"][-1]["config"]["units"] = 5
    with pytest.raises(ModelFileError, match=r"has shape \(36, 4\), expected \(36, 5\)"):
        fastcnn.load_model(with_meta(dense_file, tmp_path / "five", edit))
    assert fastcnn.load_model(dense_file).count_params() == 148   # a good file still loads


def test_npy_header_declaring_a_huge_shape(dense_file, tmp_path):
    out = [stored(n, npy_header_only((2**40,)) if n.endswith("1.npy") else d)
           for n, d in members(dense_file)]
    path = raw_zip(tmp_path / "huge-header", out)
    results = load_in_child(("model", path), ("weights", path))
    for error, message in results:
        assert error == "ModelFileError", (error, message)
        assert str(path) in message
        assert re.search(r"declares \d+ bytes, but its header \(shape \(1099511627776,\)", message)


def test_a_deflate_bomb_is_stopped_while_reading(dense_file, tmp_path):
    # fastcnn.json: 64 MiB of deflated zeros (about 64 KB) declaring 2,000 bytes; zipfile's
    # read() inflated all of it at once before the declared size was compared.
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\0" * 2**20
    payload = b"".join(bomb.compress(chunk) for _ in range(64)) + bomb.flush()
    entries = [("fastcnn.json", payload, zipfile.ZIP_DEFLATED, 0, 2000)]
    entries += [stored(n, d) for n, d in members(dense_file) if n != "fastcnn.json"]
    path = raw_zip(tmp_path / "bomb", entries)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="fastcnn.json cannot be read"):
            fastcnn.load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_a_member_declaring_more_than_its_bytes_can_hold(dense_file, tmp_path):
    out = []
    for name, data in members(dense_file):
        entry = stored(name, data)
        if name == "weights/1/0.npy":   # stored bytes expand 1:1
            entry = entry[:4] + (len(data) * 1000,)
        out.append(entry)
    path = raw_zip(tmp_path / "liar", out)
    with pytest.raises(ModelFileError, match=r"weights/1/0.npy' declares \d+ bytes, but its "
                                             r"\d+ stored bytes cannot hold more"):
        fastcnn.load_model(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for error, message in load_in_child(("model", fifo), ("weights", fifo), timeout=60):
        assert error == "ModelFileError", (error, message)
        assert "named pipe (FIFO), not a regular file" in message and str(fifo) in message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_link_to_dev_zero_is_refused_without_reading(tmp_path):
    link = tmp_path / "zero.fcnn"
    os.symlink("/dev/zero", link)
    for error, message in load_in_child(("model", link), ("weights", link)):
        assert error == "ModelFileError", (error, message)
        assert "character device, not a regular file" in message and str(link) in message


@pytest.mark.parametrize("twice", ["fastcnn.json", "weights/1/0.npy"])
def test_duplicate_member_names_are_refused(dense_file, tmp_path, twice):
    entries = [stored(n, d) for n, d in members(dense_file)]
    original = dict(members(dense_file))[twice]
    if twice == "fastcnn.json":
        other = json.loads(original)
        other["model"]["config"]["layers"][-1]["config"]["activation"] = "softmax"
        other = json.dumps(other).encode()
    else:
        other = npy_bytes(np.ones((36, 4), np.float32))
    entries.append(stored(twice, other))   # the last one would win silently
    path = raw_zip(tmp_path / "twice", entries)
    with pytest.raises(ModelFileError, match=f"two members named '{twice}'"):
        fastcnn.load_model(path)
    with pytest.raises(ModelFileError, match=f"two members named '{twice}'"):
        dense_model().load_weights(path)


def test_an_array_listed_twice_is_refused(tmp_path):
    model = fastcnn.Sequential([layers.Input((3,)), layers.Dense(3), layers.Dense(3)])
    model.save(tmp_path / "m")

    def edit(meta):   # the second Dense reads the first one's arrays
        meta["weights"][-1]["arrays"] = meta["weights"][-2]["arrays"]
    with pytest.raises(ModelFileError, match="is listed twice in the weights index"):
        fastcnn.load_model(with_meta(tmp_path / "m", tmp_path / "twice", edit))


# ------------------------------------------------------ 2. faults while saving
def test_leftovers_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "m.fcnn"
    stale = [tmp_path / ".m.fcnn.k2j4_x9q.fcnn-tmp",   # a save killed before its rename
             tmp_path / ".m.fcnn.ab12cd34.tmp"]         # the form older versions left
    for leftover in stale:
        leftover.write_bytes(b"PK half a model" * 1000)
    others = [tmp_path / ".other.ab12cd34.fcnn-tmp", tmp_path / "m.fcnn.ab12cd34.tmp"]
    for other in others:                                # not temporaries of this path
        other.write_bytes(b"keep")
    dense_model().save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["m.fcnn"] + [o.name for o in others])
    dense_model().save_weights(path)                    # save_weights cleans up too
    assert sorted(os.listdir(tmp_path)) == sorted(["m.fcnn"] + [o.name for o in others])


@pytest.mark.skipif(os.name != "posix", reason="advisory locks (fcntl.flock) are POSIX")
def test_a_temporary_file_another_save_holds_is_left_alone(tmp_path):
    import fcntl
    busy = tmp_path / ".m.fcnn.busy1234.fcnn-tmp"
    with open(busy, "wb") as f:   # what a save in progress holds
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        dense_model().save(tmp_path / "m.fcnn")
        assert busy.exists()
    dense_model().save(tmp_path / "m.fcnn")   # released: now a leftover
    assert os.listdir(tmp_path) == ["m.fcnn"]


_KILLED_SAVE = r"""
import os, signal, sys
import fastcnn
from fastcnn import layers, saving
model = fastcnn.Sequential([layers.Input((6, 6, 1)), layers.Flatten(), layers.Dense(4)])
real = saving._write_array
def write_then_die(zf, name, array):
    real(zf, name, array)
    os.kill(os.getpid(), signal.SIGKILL)   # killed half-way through the archive
saving._write_array = write_then_die
model.save(sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_a_killed_save_leaves_one_temporary_file_that_the_next_save_removes(tmp_path):
    path = tmp_path / "ck.fcnn"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]]
                                                         if os.environ.get("PYTHONPATH") else [])))
    for _ in range(3):   # each killed save removed the leftover of the one before
        done = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(path)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == -9, done.stderr
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".ck.fcnn."), left
    model = dense_model()
    model.save(path)
    assert os.listdir(tmp_path) == ["ck.fcnn"]
    assert fastcnn.load_model(path).count_params() == model.count_params()


def test_a_full_disk_names_the_path_being_written(tmp_path, monkeypatch):
    path = tmp_path / "m.fcnn"
    path.write_bytes(b"the previous model")
    calls = []

    def disk_full(zf, name, array):
        calls.append(name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(saving, "_write_array", disk_full)
    for save in (dense_model().save, dense_model().save_weights):
        with pytest.raises(OSError) as info:
            save(path)
        assert info.value.errno == errno.ENOSPC
        assert info.value.filename == str(path)
        assert repr(str(path)) in str(info.value) and "No space left" in str(info.value)
        assert path.read_bytes() == b"the previous model"
        assert os.listdir(tmp_path) == ["m.fcnn"]
    assert len(calls) == 2
