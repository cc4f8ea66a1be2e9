"""Shared caches: the layout of `LocalStore` on any fsspec filesystem, and the local+remote tier.

    RemoteStore(fs, root)        objects/ab/<sha256>, actions/ab/<key>.json and tmp/ below `root`
                                 on a shared folder, file://, s3://, gs://, ... (`bmbuild cache`
                                 also uses it on the local cache folder, so one code path
                                 lists, verifies and collects both)
    TieredStore(local, remote)   what the executor gets when a remote cache is configured: reads
                                 fall through local -> remote, finished stages are pushed

Atomic writes. Object stores (s3, gs, az, ...) publish a PUT, multipart included, only once it
is complete, so objects and entries are written straight to their final names. Every other
filesystem (a folder, file://, sftp, ...) gets a temp file under `tmp/` that is then renamed
into place. An action entry is written only after all of its objects, so a reader never sees an
entry whose objects were never uploaded.

Integrity. An object is named by its sha256 and re-hashed after each download, before it enters
the local store; an object that does not match (truncated, bit-flipped) is never used, is
deleted remotely where allowed, and is uploaded again by the next push.

Reachability. During a build a remote that cannot be reached (or written) is reported once and
the build carries on with the local cache; `bmbuild cache push|pull` fail instead (exit 2).
Every remote operation is bounded: a call that gets no answer for `timeout` seconds (bmbuild.yaml
`remote_cache_timeout`, $BMBUILD_REMOTE_TIMEOUT, default 30) raises RemoteTimeout, so a server
that accepts connections and never answers cannot hang a build; s3 also gets botocore connect and
read timeouts and few retries, so the abandoned call ends soon after.

fsspec (and s3fs, gcsfs, ...) are imported only when a remote is configured.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from bmbuild.cache import CHUNK, ActionEntry, BadEntry, LocalStore, checked_digest, is_digest, json_bytes, warn_once
from bmbuild.cache import warn_stderr  # noqa: F401  (its home was here; TieredStore's default)
from bmbuild.errors import BmbuildError


# Filesystems where one PUT is atomic: the object appears complete or not at all.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"})
OPTIONS_ENV = "BMBUILD_REMOTE_OPTIONS"
TIMEOUT_ENV = "BMBUILD_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
# The slowest link expected (bytes/s): a request whose bytes are only seen once it completes (a
# single-request upload, one block of a read) may take its size / MIN_RATE on top of the timeout.
MIN_RATE = 512 * 1024
UPLOAD_PART = 64 << 20   # the most one upload request carries, for that allowance
READ_BLOCK = 8 << 20     # bytes per read request when hashing a remote object
S3_PROTOCOLS = ("s3", "s3a")


class RemoteUnreachable(BmbuildError):
    """The remote cache cannot be opened, read or written."""


class RemoteTimeout(TimeoutError):
    """A remote operation got no answer in time: an I/O error like a reset connection, which the
    callers turn into a warning (builds) or RemoteUnreachable / a failed transfer (`bmbuild cache`)."""


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def remote_options(configured: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec storage options: bmbuild.yaml's `remote_cache_options`, updated by $BMBUILD_REMOTE_OPTIONS."""
    options = dict(configured or {})
    text = os.environ.get(OPTIONS_ENV)
    if text:
        try:
            extra = json.loads(text)
        except ValueError as exc:
            raise BmbuildError(f"${OPTIONS_ENV} is not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise BmbuildError(f"${OPTIONS_ENV} must be a JSON object of fsspec storage options")
        options.update(extra)
    return options


def remote_timeout(configured: float | None = None) -> float:
    """Seconds a remote operation may go without an answer: $BMBUILD_REMOTE_TIMEOUT, else bmbuild.yaml's
    `remote_cache_timeout`, else 30."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return float(configured) if configured else DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise BmbuildError(f"${TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def _timeout_options(url: str, options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """s3: botocore connect/read timeouts and a single attempt, unless the options set their own."""
    if _protocol(url) not in S3_PROTOCOLS:
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("connect_timeout", timeout)
    config.setdefault("read_timeout", timeout)
    config.setdefault("retries", {"max_attempts": 1})
    return {**options, "config_kwargs": config}


def open_remote(url: str, options: dict[str, Any] | None = None, timeout: float | None = None) -> "RemoteStore":
    """The store at an fsspec URL or folder path, its operations bounded by `timeout` seconds
    (default: `remote_timeout()`). Raises RemoteUnreachable when it cannot be opened."""
    timeout = timeout or remote_timeout()
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:  # pragma: no cover - fsspec is a dependency
        raise RemoteUnreachable(f"remote cache {url}: {exc}") from None
    options = _timeout_options(url, dict(options or {}), timeout)
    try:
        # a private instance: fsspec's shared instances keep listings that other writers outdate
        fs, root = bounded(timeout, f"{url}: open",
                           lambda: url_to_fs(url, skip_instance_cache=True, **options))
    except ImportError as exc:
        raise RemoteUnreachable(f"remote cache {url}: {exc} (for s3:// install bmbuild[s3])") from None
    except Exception as exc:
        raise RemoteUnreachable(f"remote cache {url} cannot be opened: {describe(exc)}") from None
    if _protocol(url) in S3_PROTOCOLS and isinstance(getattr(fs, "retries", None), int):
        fs.retries = min(fs.retries, 2)  # s3fs retries timeouts itself, 5 times by default
    return RemoteStore(fs, root, url, timeout)


def bounded(timeout: float | None, what: str, call: Callable[[], Any],
            progress: Callable[[], int] | None = None, allowance: float = 0.0) -> Any:
    """`call()`, given up with RemoteTimeout after `timeout` (+ `allowance`) seconds without an
    answer; `progress()` (bytes moved so far) growing renews the deadline. Without a timeout,
    simply `call()`. The call runs in a daemon thread: an abandoned one cannot keep the process
    alive, and the caller stops using that remote."""
    if timeout is None:
        return call()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="bmbuild-remote", daemon=True)
    thread.start()
    moved = progress() if progress else 0
    deadline = time.monotonic() + timeout + allowance
    while True:
        thread.join(max(0.0, min(0.5, deadline - time.monotonic())))
        if not thread.is_alive():
            break
        now = time.monotonic()
        current = progress() if progress is not None else moved
        if current != moved:
            moved, deadline = current, now + timeout + allowance
        elif now >= deadline:
            raise RemoteTimeout(f"no answer within {timeout:g}s ({what})")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class BoundedFS:
    """An fsspec filesystem whose I/O calls are bounded by `timeout` (see `bounded`); every
    other attribute is the filesystem's own. Transfers count as answering while bytes move."""

    IO = frozenset({"ls", "info", "exists", "cat", "cat_file", "pipe_file", "find", "mv", "rm_file",
                    "makedirs", "open"})

    def __init__(self, fs: Any, timeout: float):
        self.fs = fs
        self.timeout = timeout

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.fs, name)
        if name not in self.IO:
            return value
        return lambda *args, **kwargs: bounded(self.timeout, f"{name} {args[0] if args else ''}".rstrip(),
                                               lambda: value(*args, **kwargs))

    def get_file(self, rpath: str, lpath: str, **kwargs: Any) -> Any:
        return bounded(self.timeout, f"download {rpath}", lambda: self.fs.get_file(rpath, lpath, **kwargs),
                       progress=lambda: _size(lpath))

    def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> Any:
        from fsspec.callbacks import Callback

        callback = Callback()
        return bounded(self.timeout, f"upload {rpath}",
                       lambda: self.fs.put_file(lpath, rpath, callback=callback, **kwargs),
                       progress=lambda: int(callback.value or 0),
                       allowance=min(_size(lpath), UPLOAD_PART) / MIN_RATE)


def local_view(cache_dir: Path) -> "RemoteStore":
    """The local cache folder seen through the same interface (for `bmbuild cache`)."""
    from fsspec.implementations.local import LocalFileSystem

    return RemoteStore(LocalFileSystem(), str(Path(cache_dir).resolve()), str(cache_dir))


def _timestamp(info: dict[str, Any]) -> float:
    """Modification time from an fsspec info dict (each backend names it differently)."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "modified", "created", "mtime_ns"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value) / (1e9 if name == "mtime_ns" else 1)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return time.time()  # unknown: treat as new, so age-based gc never removes it by mistake


@dataclass
class ObjectInfo:
    digest: str
    size: int
    mtime: float


@dataclass
class ActionInfo:
    key: str
    entry: ActionEntry | None   # None: the entry file could not be read or parsed
    size: int
    mtime: float                # last write (remote) or last use (local cache)


class RemoteStore:
    """The store layout on an fsspec filesystem. Methods raise on I/O errors other than "missing",
    and RemoteTimeout when the filesystem does not answer within `timeout` seconds (None: no bound)."""

    def __init__(self, fs: Any, root: str, url: str | None = None, timeout: float | None = None):
        self.timeout = timeout
        self.fs = BoundedFS(fs, timeout) if timeout else fs
        self.root = root.rstrip("/")
        self.url = url or root
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.atomic_put = bool(set(protocols) & ATOMIC_PUT_PROTOCOLS)

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def object_path(self, digest: str) -> str:
        digest = checked_digest(digest)  # never a path from anything else (entries are validated too)
        return self._path("objects", digest[:2], digest)

    def action_path(self, key: str) -> str:
        key = checked_digest(key)
        return self._path("actions", key[:2], f"{key}.json")

    # --- reachability ---------------------------------------------------------------------
    def probe(self, write: bool = False) -> None:
        """Raise RemoteUnreachable unless the root can be listed (and, with `write`, written)."""
        try:
            try:
                self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                pass  # nothing stored yet
            if write:
                path = self._path("tmp", f"probe-{uuid.uuid4().hex}")
                self._put(lambda target: self.fs.pipe_file(target, b""), path)
                self._remove(path)
        except Exception as exc:
            raise RemoteUnreachable(f"remote cache {self.url} cannot be "
                                    f"{'written' if write else 'read'}: {describe(exc)}") from None

    # --- writing --------------------------------------------------------------------------
    def _put(self, write: Callable[[str], None], final: str) -> None:
        """`write(path)` writes a whole file; it appears under `final` complete or not at all."""
        if self.atomic_put:
            write(final)
            return
        tmp = self._path("tmp", f"{final.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp")
        self.fs.makedirs(self._path("tmp"), exist_ok=True)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        try:
            write(tmp)
            self.fs.mv(tmp, final)
        except BaseException:
            self._remove(tmp, quiet=True)
            raise

    def put_object(self, src: Path, digest: str) -> None:
        self._put(lambda target: self.fs.put_file(str(src), target), self.object_path(digest))

    def put_action(self, entry: ActionEntry) -> None:
        """Write an entry; call only once all of its objects are stored."""
        data = json_bytes(entry.to_json())
        self._put(lambda target: self.fs.pipe_file(target, data), self.action_path(entry.key))

    def _remove(self, path: str, quiet: bool = False) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception:
            if not quiet:
                raise

    def delete_object(self, digest: str) -> None:
        self._remove(self.object_path(digest))

    def delete_action(self, key: str) -> None:
        self._remove(self.action_path(key))

    # --- reading --------------------------------------------------------------------------
    def get_action(self, key: str) -> ActionEntry | None:
        try:
            data = self.fs.cat_file(self.action_path(key))
        except FileNotFoundError:
            return None
        try:
            return ActionEntry.from_bytes(data, key)
        except BadEntry as exc:
            warn_once(f"remote cache {self.url}: entry {key[:12]} is unreadable ({exc}); ignored")
            return None

    def object_size(self, digest: str) -> int | None:
        """Size of a stored object; None when there is none."""
        try:
            return int(self.fs.info(self.object_path(digest))["size"])
        except FileNotFoundError:
            return None

    def fetch_object(self, digest: str, dest: Path) -> bool:
        """Download an object to `dest` (False when there is none). Not verified here:
        `LocalStore.adopt` hashes it before it can enter the local store."""
        try:
            self.fs.get_file(self.object_path(digest), str(dest))
        except FileNotFoundError:
            return False
        return True

    def hash_object(self, digest: str) -> str:
        """sha256 of the stored object's content, streamed (bounded: bytes must keep coming)."""
        hasher = hashlib.sha256()
        moved = [0]

        def read() -> str:
            with self.fs.open(self.object_path(digest), "rb", block_size=READ_BLOCK) as handle:
                while chunk := handle.read(CHUNK):
                    hasher.update(chunk)
                    moved[0] += len(chunk)
            return hasher.hexdigest()

        return bounded(self.timeout, f"read {self.object_path(digest)}", read, progress=lambda: moved[0],
                       allowance=READ_BLOCK / MIN_RATE)

    def holds(self, digest: str, size: int) -> bool:
        """Whether the remote has the object intact: `size` bytes that hash to `digest`. Reads it
        back when the size matches, so a same-size corrupt object counts as missing."""
        try:
            return self.object_size(digest) == size and self.hash_object(digest) == digest
        except FileNotFoundError:
            return False

    def _find(self, folder: str) -> dict[str, dict[str, Any]]:
        try:
            found = self.fs.find(self._path(folder), detail=True)
        except FileNotFoundError:
            return {}
        return {path: info for path, info in found.items() if info.get("type", "file") == "file"}

    def list_objects(self) -> dict[str, ObjectInfo]:
        objects = {}
        for path, info in self._find("objects").items():
            name = path.rsplit("/", 1)[-1]
            if is_digest(name):
                objects[name] = ObjectInfo(name, int(info.get("size") or 0), _timestamp(info))
        return objects

    def list_actions(self, read: bool = True) -> list[ActionInfo]:
        """Every action entry; with `read`, parsed (fetched concurrently where the backend can)."""
        found = {}
        for path, info in self._find("actions").items():
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".json") and is_digest(name[:-5]):
                found[path] = (name[:-5], info)
        contents: dict[str, Any] = {}
        if read and found:
            contents = self.fs.cat(list(found), on_error="return")
            # fsspec keys the answer by the stripped path; match by name to be safe
            contents = {str(path).rsplit("/", 1)[-1]: data for path, data in contents.items()}
        infos = []
        for path, (key, info) in found.items():
            data = contents.get(f"{key}.json")
            entry = _parse_entry(data, key) if isinstance(data, bytes) else None
            infos.append(ActionInfo(key, entry, int(info.get("size") or 0), _timestamp(info)))
        return infos

    def list_temps(self) -> dict[str, float]:
        """Leftover temp files (path -> mtime) from interrupted uploads: only files right in tmp/,
        never through a link (`cache gc` deletes what this returns)."""
        folder = self._path("tmp")
        try:
            if self.fs.info(folder).get("islink"):
                return {}
        except FileNotFoundError:
            return {}
        return {path: _timestamp(info) for path, info in self._find("tmp").items()
                if path.rsplit("/", 1)[0] == folder and not info.get("islink")}

    def remove_path(self, path: str) -> None:
        self._remove(path, quiet=True)


def _parse_entry(data: Any, key: str) -> ActionEntry | None:
    """A listed entry, or None when it is unreadable (`cache ls` shows it, `cache verify` reports it)."""
    try:
        return ActionEntry.from_bytes(data, key)
    except BadEntry:
        return None


class TieredStore:
    """The executor's store when a remote cache is configured: local first, then the remote.

    - get_action: a complete local entry, else the remote's entry, else the local one.
    - get_file: the local object, else the remote one, downloaded, verified, kept locally;
      once all objects of a remote entry are local, the entry is written locally too.
    - put_action: local, then pushed: the missing objects first, the entry last.
    A remote error warns once and turns the remote off for the rest of the run (a failed write
    only turns pushing off); the build always continues with the local cache.
    """

    def __init__(self, local: LocalStore, remote: RemoteStore,
                 warn: Callable[[str], None] | None = None):
        self.local = local
        self.remote: RemoteStore | None = remote
        self.can_push = True
        self.warn = warn or warn_stderr
        self._lock = threading.Lock()
        self._pending: dict[str, ActionEntry] = {}  # found remotely, not yet complete locally
        self._bad: set[str] = set()                 # digests found corrupt remotely
        self.pulled = 0                             # objects downloaded (tests, summaries)
        self.pushed = 0                             # entries uploaded

    @property
    def root(self) -> Path:
        return self.local.root

    def _remote_failed(self, exc: BaseException, writing: bool = False) -> None:
        with self._lock:
            remote = self.remote
            if remote is None or (writing and not self.can_push):
                return
            if writing:
                self.can_push = False
                message = (f"remote cache {remote.url} cannot be written ({describe(exc)}); "
                           "finished stages stay in the local cache only for this run")
            else:
                self.remote = None
                message = (f"remote cache {remote.url} is unreachable ({describe(exc)}); "
                           "continuing with the local cache only")
        self.warn(message)

    def _read(self, call: Callable[[RemoteStore], Any], default: Any = None) -> Any:
        remote = self.remote
        if remote is None:
            return default
        try:
            return call(remote)
        except Exception as exc:
            self._remote_failed(exc)
            return default

    # --- the interface the executor uses --------------------------------------------------
    def has_object(self, digest: str) -> bool:
        return self.local.has_object(digest) or bool(
            self._read(lambda remote: remote.object_size(digest) is not None, False))

    def has_all(self, entry: ActionEntry) -> bool:
        return all(self.has_object(d) for d in entry.digests)

    def get_action(self, key: str) -> ActionEntry | None:
        entry = self.local.get_action(key)
        if entry is not None and self.local.has_all(entry):
            return entry
        remote_entry = self._read(lambda remote: remote.get_action(key))
        if remote_entry is not None:
            with self._lock:
                self._pending[key] = remote_entry
            return remote_entry
        return entry

    def get_file(self, digest: str, dest: Path) -> bool:
        if self.local.get_file(digest, dest):
            return True
        if not self.pull(digest) or not self.local.get_file(digest, dest):
            return False
        self._settle()
        return True

    def put_file(self, src: Path, digest: str) -> None:
        self.local.put_file(src, digest)

    def put_action(self, entry: ActionEntry) -> None:
        self.local.put_action(entry)
        self.push(entry)

    # --- transfers ------------------------------------------------------------------------
    def pull(self, digest: str) -> bool:
        """Download one object into the local store, verified. False when missing or corrupt."""
        remote = self.remote
        if remote is None:
            return False
        tmp = self.local.new_temp()
        try:
            if not remote.fetch_object(digest, tmp):
                return False
            if self.local.adopt(tmp, digest):  # hashes it; a mismatch is deleted, never stored
                with self._lock:
                    self.pulled += 1
                return True
        except Exception as exc:
            self._remote_failed(exc)
            return False
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._bad.add(digest)
        self.warn(f"remote cache {remote.url}: object {digest[:12]} does not match its digest "
                  "(corrupt or partial); ignored, the stage runs instead and uploads it again")
        try:
            remote.delete_object(digest)
        except Exception:  # read-only credentials: the next push overwrites it
            pass
        return False

    def _settle(self) -> None:
        """Write remote entries locally once all their objects have been pulled."""
        with self._lock:
            done = [entry for entry in self._pending.values() if self.local.has_all(entry)]
            for entry in done:
                del self._pending[entry.key]
        for entry in done:
            self.local.put_action(entry)

    def push(self, entry: ActionEntry) -> bool:
        """Upload an entry's missing objects, then the entry. False when the remote is not writable.

        An object the remote already has with the right size is read back and hashed (`holds`):
        a same-size corrupt object is replaced. That costs at most what uploading it would (one
        transfer of the stage's outputs, only for objects already there), and it happens only
        after a stage ran, which is far more expensive; restored stages are not pushed.
        """
        remote = self.remote
        if remote is None or not self.can_push:
            return False
        try:
            for digest in entry.digests:
                source = self.local.object_path(digest)
                with self._lock:
                    bad = digest in self._bad
                if bad or not remote.holds(digest, source.stat().st_size):
                    remote.put_object(source, digest)
                    with self._lock:
                        self._bad.discard(digest)
            remote.put_action(entry)
        except Exception as exc:
            self._remote_failed(exc, writing=True)
            return False
        with self._lock:
            self.pushed += 1
        return True


def tiered(local: LocalStore, url: str, options: dict[str, Any] | None = None,
           warn: Callable[[str], None] | None = None, timeout: float | None = None) -> LocalStore | TieredStore:
    """The store for a build: local + remote, or local alone (with a warning) if the remote cannot be opened."""
    options = remote_options(options)  # a malformed $BMBUILD_REMOTE_OPTIONS is a user error
    try:
        remote = open_remote(url, options, timeout)
    except RemoteUnreachable as exc:
        (warn or warn_stderr)(f"{exc}; continuing with the local cache only")
        return local
    return TieredStore(local, remote, warn)
