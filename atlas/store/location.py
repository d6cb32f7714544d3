"""Where a store lives: a local folder or a bucket prefix, behind one small set of file operations.

Every path the store touches is joined here, relative to the location's root, and goes through
`pyarrow.fs` (fsspec only for schemes pyarrow lacks), so `s3://atlas/nightly` is a bucket prefix
and never a local folder named `s3:`. Credentials come from where each SDK looks by itself
(environment, config files, instance role); a URI that carries them is refused by `check_uri`,
the one rule every URI the atlas accepts passes through, so no secret can reach job.json, a log,
an error message or a Ray runtime environment through a URI.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from atlas.core.errors import AtlasError
from atlas.core.registry import Registry
from atlas.store.safefs import file_mode, remove, remove_empty_folders

REMOTE_SCHEMES = ("s3", "gs", "gcs")


class LocationError(AtlasError):
    """An output URI that cannot be used; the message says how to write it."""


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_AUTHORITY = re.compile(r"(?P<host>[A-Za-z0-9._\-]*)(?::(?P<port>[0-9]+))?")
BUCKET_SCHEMES = ("s3", "gs", "gcs")  # the part after `scheme://` names a bucket, never a port


def is_uri(out: str | os.PathLike) -> bool:
    """True for `scheme://...` (a bucket or other remote file system), False for a local path."""
    text = str(out)
    return "://" in text and not text.startswith("file://")


def check_uri(text: str, where: str = "") -> None:
    """The one rule for every URI the atlas accepts: no credential in it, whatever it holds.

    A text holding `://` is a URI and must read `scheme://HOST/path` where HOST, everything up to
    the first `/`, `?` or `#` (RFC 3986), is a bare bucket or host name (letters, digits, `.`,
    `_`, `-`), with a port (digits) only on schemes that have hosts and only when no `@`
    follows. Anything else is refused, without repeating any of the text but its scheme: an `@`
    (`user:password@`, `user@`, `:password@`, `@`), a `:` before a `/` in a password
    (`KEY:SEC/RET@bucket`), `%`-escapes, non-ASCII, a `#` part, and `?` options other than the
    plain, secret-free `URI_OPTIONS` (pyarrow reads `access_key=`/`secret_key=` there). `@` and
    `:` after the first `/` are the path's and are kept (`s3://bucket/a@b:c`); a text without
    `://` is a local path, checked by nothing here.
    Because a `/` ends HOST for every URI parser, a user name holding `/` reads as a path.
    """
    if "://" not in text:
        return
    scheme, _, rest = text.partition("://")
    prefix = f"{where}: " if where else ""
    if not _SCHEME.fullmatch(scheme):
        raise LocationError(
            f"{prefix}the value holds '://' but does not begin with a URI scheme (not repeated here); "
            "write a local path, or scheme://BUCKET/PREFIX such as s3://atlas/nightly"
        )
    found = re.search(r"[/?#]", rest)
    authority = rest[: found.start()] if found else rest
    shape = _AUTHORITY.fullmatch(authority)
    port = shape is not None and shape.group("port") is not None
    if shape is None or (port and (scheme.lower() in BUCKET_SCHEMES or "@" in rest)):
        raise LocationError(
            f"{prefix}the {scheme}:// URI carries a credential, or characters no bucket or host name "
            "holds, before its first '/' (not repeated here). Credentials never go in a URI, where "
            "they would reach job.json, logs and error messages: remove them and set them in the "
            "environment or config files, where the SDK looks (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, GOOGLE_APPLICATION_CREDENTIALS); then write "
            f"{scheme}://BUCKET/PREFIX"
        )
    _, _, query = rest.partition("?")
    if "#" in rest or not _plain_options(query):
        raise LocationError(
            f"{prefix}the {scheme}:// URI has a '#' part or '?' options other than "
            f"{', '.join(URI_OPTIONS)} with plain values (not repeated here: options there can hold "
            "credentials); set credentials in the environment or config files, as the SDK reads them"
        )


# Options pyarrow's file systems read from a URI's query that hold no secret; the values must be
# plain (host:port, region, true/false, numbers). Any other option (`access_key`, `secret_key`,
# `session_token`, ...) is refused.
URI_OPTIONS = (
    "endpoint_override",
    "scheme",
    "region",
    "allow_bucket_creation",
    "allow_bucket_deletion",
    "force_virtual_addressing",
    "connect_timeout",
    "request_timeout",
)
_OPTION_VALUE = re.compile(r"[A-Za-z0-9._:\-]*")


def _plain_options(query: str) -> bool:
    """True when a URI's query holds only `URI_OPTIONS` with plain values (or is empty)."""
    for pair in query.split("&") if query else ():
        name, equals, value = pair.partition("=")
        if name not in URI_OPTIONS or not equals or not _OPTION_VALUE.fullmatch(value):
            return False
    return True


def parse_out(text: str, where: str = "") -> Path | str:
    """A spec's or the CLI's `out`: a Path for local folders, the URI text for anything remote."""
    check_uri(text, where)
    if text.startswith("file://"):
        return Path(urlsplit(text).path)
    if not is_uri(text):
        return Path(text)
    parts = urlsplit(text)
    if not parts.netloc:
        raise LocationError(
            f"{text} names no bucket; write {parts.scheme}://BUCKET/PREFIX, e.g. s3://atlas/nightly"
        )
    return f"{parts.scheme}://{parts.netloc}/{parts.path.strip('/')}".rstrip("/")


@dataclass
class Location:
    """A root inside a file system; every store path is relative to it.

    This base class is a bucket-style prefix behind `pyarrow.fs` (one PUT per write, server-side
    moves, no folders of its own). Each scheme is one subclass registered in `SCHEMES`: a local
    folder, s3://, gs:// and, for any other scheme, an fsspec file system.
    """

    fs: pafs.FileSystem
    root: str  # the root as the file system names it (no scheme, no trailing slash)
    uri: str  # printable: file:///abs/path or s3://bucket/prefix
    scheme: str = "file"
    local: ClassVar[bool] = False  # a folder on this machine (checksums are cheap to read)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str) -> str:
        """What a user (or DuckDB) would type for a file in the store."""
        return f"{self.uri}/{rel}" if rel else self.uri

    # -- reading ----------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every file under `prefix` with its size, keyed by path relative to the root (one listing)."""
        try:
            infos = self.fs.get_file_info(
                pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True)
            )
        except FileNotFoundError:
            return {}
        root = self.root.strip("/")  # fsspec's memory:// lists "/bucket/...": compare without slashes
        cut = len(root) + 1 if root else 0
        return {i.path.strip("/")[cut:]: i.size for i in infos if i.type == pafs.FileType.File}

    def empty(self) -> bool:
        """True when nothing is at or below the root (a missing folder or prefix is empty)."""
        if self.fs.get_file_info(self.root).type == pafs.FileType.File:
            return False
        try:
            return not self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return True

    def etags(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Every file under `prefix` with its size and ETag ("" where none is known), in one listing."""
        return {rel: (size, "") for rel, size in self.sizes(prefix).items()}

    # -- writing ----------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Replace a file whole: one PUT. `headers` (e.g. Content-Type, Cache-Control) become the
        object's metadata."""
        with self.fs.open_output_stream(self.path(rel), metadata=headers) as stream:
            stream.write(data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create a file only if none exists (False if one does): the lease's compare-and-swap.

        Without a conditional put: check, write, read back (a narrow race, documented)."""
        if self.exists(rel):
            return False
        self.write_bytes(rel, data)
        return self.read_bytes(rel) == data

    def move(self, src: str, dst: str) -> None:
        """Server-side copy + delete (no bytes through this process)."""
        self.fs.move(self.path(src), self.path(dst))

    def delete(self, rel: str) -> None:
        """Delete one file of the store."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(rel))

    def delete_empty_folder(self, rel: str) -> None:
        """Remove the empty folder objects pyarrow leaves (it re-creates a parent's on every
        delete), only when no file is left under the prefix (a prefix without objects, as on GCS,
        has nothing to remove)."""
        folder = self.path(rel)
        if not self.sizes(rel) and self.fs.get_file_info(folder).type == pafs.FileType.Directory:
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile
                self.fs.delete_dir(folder)


class LocalFolder(Location):
    """A folder on this machine: atomic replace by rename, never a deletion outside the root or
    through a link."""

    local: ClassVar[bool] = True

    def sizes(self, prefix: str) -> dict[str, int]:
        if self.fs.get_file_info(self.path(prefix)).type != pafs.FileType.Directory:
            return {}
        return super().sizes(prefix)

    def empty(self) -> bool:
        if self.fs.get_file_info(self.root).type == pafs.FileType.NotFound:
            return True
        return super().empty()

    def write_bytes(self, rel: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Temp file + fsync + rename: a reader sees the old file or the new one, never a part."""
        target = self.path(rel)
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), file_mode())  # mkstemp makes 0600; the rename would keep it
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            remove(tmp, within=self.root)
            raise

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        target = self.path(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True

    def move(self, src: str, dst: str) -> None:
        os.makedirs(os.path.dirname(self.path(dst)), exist_ok=True)
        super().move(src, dst)

    def delete(self, rel: str) -> None:
        remove(self.path(rel), within=self.root)

    def delete_empty_folder(self, rel: str) -> None:
        remove_empty_folders(self.path(rel), within=self.root)

    @classmethod
    def of(cls, folder: Path) -> LocalFolder:
        root = folder.expanduser().absolute()
        return cls(pafs.LocalFileSystem(), root.as_posix().rstrip("/") or "/", root.as_uri())


class S3Prefix(Location):
    """s3:// with the SDK's own credential chain; AWS_ENDPOINT_URL(_S3) picks an S3-compatible
    server. The lease uses a conditional PUT, and listings give ETags (through boto3)."""

    @staticmethod
    def filesystem(scheme: str) -> pafs.FileSystem:
        return _s3()

    def etags(self, prefix: str) -> dict[str, tuple[int, str]]:
        """pyarrow's listing gives sizes only; the same listing through boto3 (the `s3` extra) also
        gives each object's ETag, the MD5 of its bytes for a single-part upload."""
        try:
            import boto3
        except ImportError:
            return super().etags(prefix)
        bucket, _, key = self.path(prefix).partition("/")
        cut = len(self.root) - len(bucket)  # object keys lack the bucket and its slash
        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/")
        return {
            item["Key"][cut:]: (item["Size"], item.get("ETag", "").strip('"'))
            for page in pages
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        }

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        return _s3_put_if_absent(self.path(rel), data)


class GcsPrefix(Location):
    """gs:// (or gcs://) with Google's default credentials, or an emulator (STORAGE_EMULATOR_HOST)."""

    @staticmethod
    def filesystem(scheme: str) -> pafs.FileSystem:
        return _gcs()


class FsspecPrefix(Location):
    """Any other scheme fsspec knows (memory://, az://, ...), through pyarrow's fsspec handler."""

    @staticmethod
    def filesystem(scheme: str) -> pafs.FileSystem:
        return _fsspec(scheme)


# One class per remote scheme, each with its `filesystem(scheme)`; a scheme not registered here
# goes to fsspec.
SCHEMES: Registry[type[Location]] = Registry("storage scheme", LocationError)
SCHEMES.register("s3", S3Prefix)
SCHEMES.register("gs", GcsPrefix)
SCHEMES.register("gcs", GcsPrefix)


def open_location(out: str | os.PathLike) -> Location:
    """The file system and root for an output folder or URI (credentials found by the SDK)."""
    target = parse_out(str(out)) if isinstance(out, str) else Path(out)
    if isinstance(target, Path):
        return LocalFolder.of(target)
    scheme, _, rest = target.partition("://")
    kind = SCHEMES.get(scheme) if scheme in SCHEMES else FsspecPrefix
    return kind(kind.filesystem(scheme), rest.rstrip("/"), target, scheme)


def _s3() -> pafs.S3FileSystem:
    """S3 with the SDK's own credential chain; AWS_ENDPOINT_URL(_S3) picks an S3-compatible server.

    `allow_delayed_open` lets small objects go up as one PutObject instead of a multipart upload.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict = {"allow_delayed_open": True}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if endpoint:
        netloc, scheme = _endpoint(endpoint, "AWS_ENDPOINT_URL", "https")
        options.update(endpoint_override=netloc, scheme=scheme)
    return pafs.S3FileSystem(**options)


def _gcs() -> pafs.GcsFileSystem:
    """GCS with Google's default credentials; STORAGE_EMULATOR_HOST (the variable Google's own
    client libraries read, e.g. `http://127.0.0.1:9023`) points it at an emulator, anonymously."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if not emulator:
        return pafs.GcsFileSystem()
    netloc, scheme = _endpoint(emulator, "STORAGE_EMULATOR_HOST", "http")
    return pafs.GcsFileSystem(anonymous=True, endpoint_override=netloc, scheme=scheme)


def _endpoint(value: str, variable: str, default_scheme: str) -> tuple[str, str]:
    """An endpoint variable's host[:port] and scheme, under the same rule as every URI."""
    url = value if "://" in value else f"{default_scheme}://{value}"
    check_uri(url, variable)
    parts = urlsplit(url)
    return parts.netloc, parts.scheme


def _s3_put_if_absent(path: str, data: bytes) -> bool:
    """PutObject with If-None-Match: * (boto3, from the `s3` extra); the SDK finds the credentials."""
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError as err:
        raise LocationError(
            "the store lease on s3:// needs boto3 for a conditional put: pip install 'neuron-atlas[s3]'"
        ) from err
    bucket, _, key = path.partition("/")
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
    return True


def _fsspec(scheme: str) -> pafs.FileSystem:
    try:
        import fsspec
    except ImportError as err:
        raise LocationError(
            f"{scheme}:// needs fsspec and its {scheme} driver (pyarrow has s3:// and gs:// built in)"
        ) from err
    try:
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
    except (ImportError, ValueError) as err:
        raise LocationError(f"{scheme}:// is not a file system fsspec knows here: {err}") from err


def holder_name() -> str:
    """Who holds a lease, for the message a second driver sees."""
    return f"{socket.gethostname()}:{os.getpid()}"
