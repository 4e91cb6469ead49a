"""Where a study lives: a local folder (or NFS path), or a URI that ``pyarrow.fs`` opens.

``--dir`` is parsed once into a ``Location``; every file of a study (study.json, the
Parquet parts, ASHA's rungs, the Optuna snapshot, the report) is read and written through
it, and Ray Tune gets its ``(filesystem, path)`` pair. A Location is a value: it pickles
as its URI (never as a filesystem object, which could carry credentials), and builds its
pyarrow filesystem on first use in whichever process it lands in, with the credentials
that process finds (environment, credential files, instance role).

Writes are all-or-nothing everywhere: locally through ``trainer.atomic`` (temp file,
fsync, rename); on an object store, which has no rename, the bytes are produced whole in
memory first and sent as one object under their final key, so a reader sees the whole
object or none (S3 makes an object visible only once its upload completes).
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from trainer.atomic import atomic_write
from trainer.config import ConfigError

# Query options that would put a secret into study.json, Tune's files and every log line.
_SECRET_OPTIONS = ("key", "secret", "token", "password", "credential")
HINT = "e.g. s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http, gs://bucket/prefix or a local folder"


@dataclass(frozen=True)
class Location:
    """A folder of a local disk (``base`` an absolute path) or of a remote filesystem
    (``base`` ``scheme://bucket/path``, ``query`` its URI options, kept for every child)."""

    base: str
    query: str = ""

    # --- naming ---------------------------------------------------------------------
    @property
    def local(self) -> bool:
        return "://" not in self.base

    @property
    def uri(self) -> str:
        """What pyarrow's ``FileSystem.from_uri`` opens: this location anywhere (no secret in it)."""
        return self.base + (f"?{self.query}" if self.query else "")

    def __str__(self) -> str:
        return self.base if self.local else self.uri

    def __truediv__(self, name: str) -> "Location":
        if self.local:
            return Location(str(Path(self.base) / name))
        return Location(f"{self.base.rstrip('/')}/{name}", self.query)

    @property
    def name(self) -> str:
        return self.base.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> "Location":
        if self.local:
            return Location(str(Path(self.base).parent))
        return Location(self.base.rstrip("/").rsplit("/", 1)[0], self.query)

    @property
    def path(self) -> Path:
        """The local folder; only for a local location."""
        if not self.local:
            raise ValueError(f"{self} is not a local path")
        return Path(self.base)

    # --- the filesystem ---------------------------------------------------------------
    @property
    def fs(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem() if self.local else _filesystem(self.base.split("://", 1)[0],
                                                                      self.query, _bucket(self.base))

    @property
    def fs_path(self) -> str:
        """The path inside ``fs`` (``bucket/prefix/...`` on S3)."""
        return os.path.abspath(self.base) if self.local else self.base.split("://", 1)[1].rstrip("/")

    def info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.fs_path)
        except (OSError, pa.ArrowException) as err:
            raise ConfigError(f"{self}: cannot read it ({_first_line(err)})") from None

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        if not self.local:  # an object store has prefixes, not folders: one that holds an object counts
            return bool(self.list())
        return self.info().type == pafs.FileType.Directory

    def list(self) -> list[tuple[str, bool]]:
        """(name, is a file) of each entry directly in this folder, sorted; [] if there is none."""
        return sorted((e.base_name, e.type == pafs.FileType.File) for e in self._entries(recursive=False))

    def files_below(self) -> list[str]:
        """The path, relative to this folder, of every file under it at any depth, sorted; [] if
        there is none. On an object store that is one listing request per thousand keys."""
        base = self.fs_path.rstrip("/") + "/"
        return sorted(e.path.removeprefix(base) for e in self._entries(recursive=True) if e.type == pafs.FileType.File)

    def _entries(self, recursive: bool) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(pafs.FileSelector(self.fs_path, allow_not_found=True, recursive=recursive))
        except (OSError, pa.ArrowException) as err:
            raise ConfigError(f"{self}: cannot list it ({_first_line(err)})") from None

    # --- reading and writing ----------------------------------------------------------
    def read_bytes(self) -> bytes:
        if self.local:
            return self.path.read_bytes()
        with self.fs.open_input_stream(self.fs_path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """All-or-nothing: atomic rename locally, one whole object under its final key remotely."""
        if self.local:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path) as handle:
                handle.write(data)
            return
        with self.fs.open_output_stream(self.fs_path) as stream:
            stream.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def delete(self) -> None:
        """Remove this file; one that is gone already is fine."""
        try:
            self.fs.delete_file(self.fs_path)
        except FileNotFoundError:
            pass

    def delete_tree(self) -> None:
        """Remove this folder and everything under it. On an object store that is a listing and
        one batch delete per thousand keys, where removing the files one by one costs three
        requests each (pyarrow looks each one up, and writes its folder's marker back after)."""
        try:
            self.fs.delete_dir(self.fs_path)
        except FileNotFoundError:
            pass

    def mkdir(self) -> None:
        if self.local:
            self.path.mkdir(parents=True, exist_ok=True)
        # An object store makes prefixes as objects land under them.


def as_location(where: "str | os.PathLike[str] | Location") -> Location:
    """``where`` as a Location: a Location as it is, else ``parse`` it."""
    return where if isinstance(where, Location) else parse(where)


def parse(text: "str | os.PathLike[str]") -> Location:
    """``--dir``: a local path, ``file://PATH`` or a URI of a pyarrow filesystem; ConfigError if it
    cannot be one (unknown scheme, a typo in its options, credentials inside it)."""
    text = os.fspath(text)
    if text.startswith("file://"):
        text = urllib.parse.unquote(text.removeprefix("file://"))
    if "://" not in text:
        return Location(str(Path(text).expanduser()))  # as given: messages name it as the user wrote it
    parts = urllib.parse.urlsplit(text)
    if "@" in parts.netloc:
        raise ConfigError(f"--dir {parts.scheme}://...@{parts.netloc.rsplit('@', 1)[1]}{parts.path}: credentials in the "
                          "URI would be stored with the study; put them where pyarrow and boto look "
                          "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance role)")
    options = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    secret = [k for k in options if any(word in k.lower() for word in _SECRET_OPTIONS)]
    if secret:
        raise ConfigError(f"--dir option {secret[0]!r}: a secret in the URI would be stored with the study; "
                          "give credentials through the environment or the provider's credential files")
    if not parts.netloc:
        raise ConfigError(f"--dir {text!r}: no bucket in the URI; {HINT}")
    location = Location(f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}", parts.query)
    try:
        pafs.FileSystem.from_uri(location.uri)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ConfigError(f"--dir {location}: {_first_line(err)}; {HINT}") from None
    return location


def check_reachable(location: Location, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, on a location that cannot be used: an endpoint that does not
    answer (the S3 client would retry for a minute), a bucket that does not exist, refused credentials."""
    if location.local:
        return
    options = urllib.parse.parse_qs(location.query)
    endpoint = (options.get("endpoint_override") or [""])[0]
    if endpoint:
        host, _, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "")
        scheme = (options.get("scheme") or ["https"])[0]
        port_number = int(port) if port.isdigit() else (80 if scheme == "http" else 443)
        try:
            socket.create_connection((host or endpoint, port_number), timeout=timeout).close()
        except OSError as err:
            raise ConfigError(f"--dir {location}: the endpoint {endpoint} does not answer "
                              f"({err.strerror or err}); start the object store or fix endpoint_override") from None
    bucket = location.fs_path.split("/", 1)[0]
    try:
        kind = location.fs.get_file_info(bucket).type
    except (OSError, pa.ArrowException) as err:
        raise ConfigError(f"--dir {location}: the object store refused ({_first_line(err)}); check the "
                          "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws/credentials) and the "
                          "region") from None
    if kind == pafs.FileType.NotFound:
        raise ConfigError(f"--dir {location}: the bucket {bucket!r} does not exist; create it first "
                          "(the study never creates buckets)")


@functools.lru_cache(maxsize=32)
def _filesystem(scheme: str, query: str, bucket: str) -> pafs.FileSystem:
    # One client per (scheme, options, bucket) and process: S3 clients are costly to make.
    fs = pafs.FileSystem.from_uri(f"{scheme}://{bucket}?{_client_options(scheme, query)}".rstrip("?"))[0]
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    # An option that pyarrow's pickled form does not carry (tls_verify_certificates, for one)
    # would be lost by rebuilding the client: such a URI keeps pyarrow's own class.
    if set(urllib.parse.parse_qs(query)) - set(_s3_options(fs)):
        return fs
    return ObjectStore.like(fs)


def _client_options(scheme: str, query: str) -> str:
    """The URI's options, plus what this project's small objects need on S3. Without
    ``allow_delayed_open`` pyarrow opens a multipart upload for every file it writes (create,
    one part, complete: three requests); with it, a file under its part size is one PutObject
    (measured on moto: 12 against 6 ms a write). Its cost, a missing bucket found only when the
    file is closed, is covered by ``check_reachable`` before a study starts. A user's own setting
    of it stands."""
    if scheme != "s3" or "allow_delayed_open" in urllib.parse.parse_qs(query):
        return query
    return "&".join(part for part in (query, "allow_delayed_open=true") if part)


class ObjectStore(pafs.S3FileSystem):
    """pyarrow's S3 client, without folder markers.

    S3 has keys, not folders: a prefix exists once an object lies under it. pyarrow's
    ``create_dir`` still writes an empty marker object for every level of the path (one HEAD
    and five PUTs for a trial's checkpoint folder), and Ray Tune calls it before each checkpoint
    it uploads. Nothing here or in Tune needs an empty folder to exist (checkpoints, reports and
    state are files), so a folder is made by the first object written under it. Where pyarrow
    makes folders itself, on its C++ side (``copy_files`` of a tree), it is told to look before
    it writes: a folder that exists costs two requests instead of six (Ray Tune, whose uploads
    copy trees, gets ``tune_filesystem``, which makes none). It pickles as its own kind, so
    Tune's trials on other nodes do the same; credentials travel only if they were given
    explicitly, as they would with pyarrow's own class.
    """

    def create_dir(self, path: str, *, recursive: bool = True) -> None:
        pass

    def __reduce__(self):  # noqa: ANN204 - pickle's protocol
        return _object_store, (_s3_options(self),)

    @classmethod
    def like(cls, fs: pafs.S3FileSystem) -> "ObjectStore":
        """This class with ``fs``'s options (its endpoint, region, credentials chain)."""
        return cls(**{**_s3_options(fs), "check_directory_existence_before_creation": True})


class TuneFiles(pafs.FileSystemHandler):
    """What Ray Tune writes a study in an object store through: the store itself, except that
    making a folder does nothing, also where pyarrow's ``copy_files`` asks for one.

    Tune uploads its staging folder of the experiment at every snapshot (every 2 s), and that
    folder holds an empty one per running trial (where Tune would write the trial's error
    files). pyarrow's ``copy_files`` makes each folder it copies on the S3 client's C++ side,
    which ``ObjectStore.create_dir`` cannot reach: three lookups per running trial per snapshot,
    and a marker object for each new one, for folders that nothing reads (15% of a tiny study's
    requests). Through this handler the folder is made by the files written under it, as
    everywhere else. It pickles with the store it wraps, so Tune's trials on every node write
    their checkpoints the same way.
    """

    def __init__(self, store: pafs.FileSystem) -> None:
        self.store = store

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TuneFiles) and self.store.equals(other.store)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return f"{self.store.type_name}-for-tune"

    def normalize_path(self, path: str) -> str:
        return self.store.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.store.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.store.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        pass  # a prefix exists once an object lies under it

    def delete_dir(self, path: str) -> None:
        self.store.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.store.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to empty the whole object store (every bucket); delete a study's folder instead")

    def delete_file(self, path: str) -> None:
        self.store.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.store.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.store.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.store.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.store.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict | None) -> pa.NativeFile:
        return self.store.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: dict | None) -> pa.NativeFile:
        return self.store.open_append_stream(path, metadata=metadata)


def tune_filesystem(fs: pafs.FileSystem) -> pafs.FileSystem:
    """The filesystem Ray Tune gets for a study in ``fs``: an object store through ``TuneFiles``."""
    return pafs.PyFileSystem(TuneFiles(fs)) if isinstance(fs, pafs.S3FileSystem) else fs


def _object_store(options: dict) -> ObjectStore:
    return ObjectStore(**options)


def _s3_options(fs: pafs.S3FileSystem) -> dict:
    """The constructor options of ``fs``, as pyarrow pickles them: (its rebuilder, (options,))."""
    reduced = pafs.S3FileSystem.__reduce__(fs)
    if len(reduced) < 2 or not reduced[1] or not isinstance(reduced[1][0], dict):
        raise RuntimeError(f"pyarrow {pa.__version__} pickles S3FileSystem in a form this code does not know "
                           f"({type(reduced[1]).__name__}); pin pyarrow to a release that study/location.py "
                           "was written for (21 to 26)")
    return reduced[1][0]


def _bucket(base: str) -> str:
    return base.split("://", 1)[1].split("/", 1)[0]


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]
