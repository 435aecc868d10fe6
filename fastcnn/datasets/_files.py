"""Finding, downloading and sha256-checking the data files of the downloadable datasets.

Where the files come from (decided on every call, from the environment at that moment):

1. ``$FASTCNN_DATA`` set (and not empty): the files must be in ``$FASTCNN_DATA/<folder>/``
   (``mnist/``, ``fashion-mnist/``), under their original names. Nothing is downloaded and
   there is no fallback: naming a folder is an explicit choice, and quietly downloading
   elsewhere would hide a typo in it. Missing files raise :class:`DatasetNotFoundError`
   naming the folder and the files expected.
2. Otherwise the cache ``$FASTCNN_CACHE/<folder>/`` (default ``~/.cache/fastcnn/<folder>/``).
   A missing file is downloaded there from the dataset's mirrors, tried in order: streamed
   into a temporary file in the same folder, its sha256 checked, then renamed into place
   with :func:`os.replace` (atomic), so the cache never holds a partial file under the final
   name. A failed download leaves nothing behind.

Every file is checked against its published size and sha256 before it is read. A mismatch
raises :class:`ChecksumError` naming the file and the expected checksum. A bad file is never
deleted or replaced automatically: it may be the user's own copy, and a file that changed
after being verified points to a problem worth seeing. The message says what to do (delete a
cached file so the next call downloads it again; replace a file under ``$FASTCNN_DATA``).

A successful check is remembered for the rest of the process, keyed by the file's path,
size and modification time, so repeated ``load_data()`` calls skip the hashing.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: Environment variable naming a folder that holds the datasets (no download).
DATA_ENV = "FASTCNN_DATA"
#: Environment variable naming the download cache folder.
CACHE_ENV = "FASTCNN_CACHE"
#: Cache folder used when ``$FASTCNN_CACHE`` is unset.
DEFAULT_CACHE = Path("~/.cache/fastcnn")
#: Seconds one network operation (connect, or one read) may block before the mirror counts
#: as failed: a dead mirror costs at most this long, never a hang.
TIMEOUT_S = 30.0

_CHUNK = 1 << 20
_USER_AGENT = "fastcnn-datasets (Python urllib)"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, size in bytes and sha256 (lowercase hex)."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable dataset.

    Attributes:
        title: human-readable name, used in messages.
        folder: sub-folder of ``$FASTCNN_DATA`` and of the cache holding the files.
        files: role (e.g. ``"train_images"``) -> :class:`RemoteFile`.
        mirrors: base URLs (ending in ``/``) tried in order; a file's URL is base + name.
    """

    title: str
    folder: str
    files: dict[str, RemoteFile]
    mirrors: tuple[str, ...]


class DatasetError(OSError):
    """A dataset file cannot be found, fetched or trusted."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """Files are missing from the folder named by ``$FASTCNN_DATA``."""


class ChecksumError(DatasetError):
    """A file's size or sha256 differs from the published one."""


class DownloadError(DatasetError):
    """No mirror delivered a file with the published checksum."""


# (resolved path, size, mtime_ns) -> sha256 already verified in this process.
_verified: dict[tuple[str, int, int], str] = {}


def _env_path(name: str) -> Path | None:
    # An empty value counts as unset: `FASTCNN_DATA= cmd` is how one unsets it for a command.
    value = os.environ.get(name, "")
    return Path(value).expanduser() if value else None


def data_folder(spec: DatasetSpec) -> Path | None:
    """``$FASTCNN_DATA/<folder>`` when ``$FASTCNN_DATA`` is set, else None."""
    root = _env_path(DATA_ENV)
    return None if root is None else root / spec.folder


def cache_folder(spec: DatasetSpec) -> Path:
    """``$FASTCNN_CACHE/<folder>``, or ``~/.cache/fastcnn/<folder>`` when it is unset."""
    root = _env_path(CACHE_ENV) or DEFAULT_CACHE.expanduser()
    return root / spec.folder


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile, advice: str) -> None:
    """Checks ``path`` against ``remote``'s size and sha256; :class:`ChecksumError` if not.

    The size is compared first, so a truncated file fails at once without being hashed.
    ``advice`` (what the user should do) ends the error message.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == remote.sha256:
        return
    if st.st_size != remote.size:
        raise ChecksumError(
            f"{str(path)!r} is {st.st_size} bytes, expected "
            f"{remote.size} (truncated or not the published {remote.name}); expected "
            f"sha256 {remote.sha256}. {advice}"
        )
    digest = sha256_file(path)
    if digest != remote.sha256:
        raise ChecksumError(
            f"{str(path)!r} has sha256 {digest}, expected {remote.sha256} (corrupted or "
            f"not the published {remote.name}). {advice}"
        )
    _verified[key] = remote.sha256


def _download(spec: DatasetSpec, remote: RemoteFile, dest: Path) -> None:
    """Fetches ``remote`` into ``dest`` from the first mirror that delivers it intact."""
    failures = []
    for base in spec.mirrors:
        url = base + remote.name
        try:
            _download_one(url, remote, dest)
            return
        # URLError, HTTPError and timeouts are OSErrors; a connection cut mid-body is an
        # http.client.IncompleteRead (HTTPException); our own size/checksum checks are ValueErrors.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"  {url}: {_describe(exc)}")
    raise DownloadError(
        f"could not download {spec.title} file {remote.name!r} into {str(dest.parent)!r}; "
        f"tried:\n" + "\n".join(failures) + "\n"
        f"If this machine has no internet access, copy the original files "
        f"({', '.join(f.name for f in spec.files.values())}) into a folder "
        f"DIR/{spec.folder}/ and set {DATA_ENV}=DIR."
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _download_one(url: str, remote: RemoteFile, dest: Path) -> None:
    print(f"fastcnn: downloading {url}", file=sys.stderr)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        received = 0
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            request, timeout=TIMEOUT_S
        ) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != remote.size:
                raise ValueError(
                    f"server announces {length} bytes, expected {remote.size}"
                )
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                # Stop a server that sends more than the file's size instead of filling the disk.
                if received > remote.size:
                    raise ValueError(f"server sent more than the expected {remote.size} bytes")
                h.update(chunk)
                out.write(chunk)
        if received != remote.size:
            raise ValueError(f"received {received} bytes, expected {remote.size}")
        if h.hexdigest() != remote.sha256:
            raise ValueError(
                f"downloaded file has sha256 {h.hexdigest()}, expected {remote.sha256}"
            )
        os.replace(tmp, dest)
    except BaseException:
        # KeyboardInterrupt included: never leave a partial file behind.
        tmp.unlink(missing_ok=True)
        raise
    st = dest.stat()
    _verified[(str(dest.resolve()), st.st_size, st.st_mtime_ns)] = remote.sha256


def fetch(spec: DatasetSpec) -> dict[str, Path]:
    """Locates (downloading when needed) and verifies every file of ``spec``.

    Returns:
        role -> path of a file whose size and sha256 match the published ones.

    Raises:
        DatasetNotFoundError: ``$FASTCNN_DATA`` is set and files are missing under it.
        ChecksumError: a file present differs from the published one.
        DownloadError: a file is neither present nor downloadable from any mirror.
    """
    folder = data_folder(spec)
    if folder is not None:
        paths = {role: folder / f.name for role, f in spec.files.items()}
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            where = (
                f"folder {str(folder)!r} lacks {', '.join(missing)}"
                if folder.is_dir()
                else f"folder {str(folder)!r} does not exist"
            )
            raise DatasetNotFoundError(
                f"{spec.title} not found: {DATA_ENV}={os.environ[DATA_ENV]!r}, and the "
                f"{where}. Expected the original files "
                f"{', '.join(f.name for f in spec.files.values())} in "
                f"$FASTCNN_DATA/{spec.folder}/. Point {DATA_ENV} at the folder holding "
                f"{spec.folder}/, or unset it to download into the cache "
                f"({str(cache_folder(spec))!r})."
            )
        for role, path in paths.items():
            verify(
                path,
                spec.files[role],
                f"Replace it with the original file, or unset {DATA_ENV} to download "
                f"{spec.title} into the cache.",
            )
        return paths

    folder = cache_folder(spec)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create the {spec.title} cache folder {str(folder)!r} ({exc}); set "
            f"{CACHE_ENV} to a writable folder, or {DATA_ENV} to a folder that already "
            f"holds {spec.folder}/"
        ) from exc
    paths = {}
    for role, remote in spec.files.items():
        path = folder / remote.name
        if not path.is_file():
            _download(spec, remote, path)
        verify(
            path,
            remote,
            "Delete it; the next load_data() call downloads it again.",
        )
        paths[role] = path
    return paths
