"""The one store protocol, its layout, and its one implementation over a filesystem.

    objects/ab/<sha256>        file contents by digest (read-only in a local folder)
    actions/ab/<key>.json      ActionEntry by action key
    tmp/                       temp files of writes in progress (renamed into place)
    builds/ab/<sha256>.json    the last build of each recipe, on a remote (bmbuild.buildrecords)

`FsStore` keeps that layout on any fsspec filesystem (a shared folder, file://, s3://, gs://, ...)
and, through `LocalFolderFS`, on the local cache folder: `LocalStore` is the same class plus what
only a local folder can do (hardlinks into the build folder, last-use times for `cache gc`).
`bmbuild.remote.TieredStore` (local + remote) implements the same `Store` protocol, so the
executor, the cluster and `bmbuild cache` never care which one they hold.

Paths are only ever built from checked digests (`checked_digest`), and everything read back
passes `validate_entry` (ActionEntry.from_bytes): a shared cache is input from others.

Restoring links. An object restored into the build folder is hardlinked where that is safe, and
copied otherwise. Safe means the read-only mode of the object actually stops writes: a user (or
a later stage) who writes to a linked build output gets "permission denied" instead of changing
the cached object under every other workspace. A process that may write read-only files anyway
(root with CAP_DAC_OVERRIDE) gets copies, as does a build folder on another filesystem (EXDEV)
or one where linking fails. Logs and command files are appended to later: always copied.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from bmbuild.cache import CHUNK, ActionEntry, BadEntry, checked_digest, file_digest, is_digest, json_bytes, warn_once

OBJECTS, ACTIONS, TMP = "objects", "actions", "tmp"
# Filesystems where one PUT is atomic: the object appears complete or not at all.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"})
# The slowest link expected (bytes/s): a request whose bytes are only seen once it completes (a
# single-request upload, one block of a read) may take its size / MIN_RATE on top of the timeout.
MIN_RATE = 512 * 1024
UPLOAD_PART = 64 << 20   # the most one upload request carries, for that allowance
READ_BLOCK = 8 << 20     # bytes per read request when hashing a remote object


# --- the layout, defined once ---------------------------------------------------------------------
def object_name(digest: str) -> str:
    """Where an object lives below the store root. Raises ValueError unless `digest` is a sha256."""
    digest = checked_digest(digest)  # never a path from anything else (entries are validated too)
    return f"{OBJECTS}/{digest[:2]}/{digest}"


def action_name(key: str) -> str:
    """Where an action entry lives below the store root."""
    key = checked_digest(key)
    return f"{ACTIONS}/{key[:2]}/{key}.json"


def listed_digest(path: str) -> str | None:
    """The digest of a listed object path; None for anything that is not one of ours."""
    name = path.rsplit("/", 1)[-1]
    return name if is_digest(name) else None


def listed_key(path: str) -> str | None:
    """The key of a listed action entry path; None for anything that is not one of ours."""
    name = path.rsplit("/", 1)[-1]
    return name[:-5] if name.endswith(".json") and is_digest(name[:-5]) else None


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


@runtime_checkable
class Store(Protocol):
    """What builds and `bmbuild cache` need from a cache: LocalStore, FsStore (remote), TieredStore."""

    url: str

    def has_object(self, digest: str) -> bool: ...
    def get_file(self, digest: str, dest: Path, link: bool = False) -> bool: ...
    def put_file(self, src: Path, digest: str, link: bool = False) -> None: ...
    def get_action(self, key: str) -> ActionEntry | None: ...
    def put_action(self, entry: ActionEntry) -> None: ...
    def has_all(self, entry: ActionEntry) -> bool: ...
    def list_objects(self) -> dict[str, ObjectInfo]: ...
    def list_actions(self, read: bool = True) -> list[ActionInfo]: ...
    def delete_object(self, digest: str) -> None: ...
    def delete_action(self, key: str) -> None: ...


# --- bounding remote calls ------------------------------------------------------------------------
class RemoteTimeout(TimeoutError):
    """A remote operation got no answer in time: an I/O error like a reset connection, which the
    callers turn into a warning (builds) or RemoteUnreachable / a failed transfer (`bmbuild cache`)."""


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


def _parse_entry(data: Any, key: str) -> ActionEntry | None:
    """A listed entry, or None when it is unreadable (`cache ls` shows it, `cache verify` reports it)."""
    try:
        return ActionEntry.from_bytes(data, key)
    except BadEntry:
        return None


# --- the implementation -------------------------------------------------------------------------
class FsStore:
    """The store layout on a filesystem with fsspec's interface. Methods raise on I/O errors other
    than "missing", and RemoteTimeout when the filesystem does not answer within `timeout`
    seconds (None: no bound).

    Atomic writes: object stores (s3, gs, ...) publish a PUT only once it is complete, so files
    are written straight to their final names; every other filesystem gets a temp file under
    tmp/ that is then renamed into place. An entry is written only after all its objects."""

    kind = "remote cache"

    def __init__(self, fs: Any, root: str, url: str | None = None, timeout: float | None = None):
        self.timeout = timeout
        self.fs = BoundedFS(fs, timeout) if timeout else fs
        self.base = str(root).rstrip("/") or "/"
        self.root: str | Path = self.base
        self.url = url or self.base
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.atomic_put = bool(set(protocols) & ATOMIC_PUT_PROTOCOLS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _path(self, *parts: str) -> str:
        return "/".join((self.base.rstrip("/"), *parts))

    def object_path(self, digest: str) -> str:
        return self._path(object_name(digest))

    def action_path(self, key: str) -> str:
        return self._path(action_name(key))

    # --- reachability ---------------------------------------------------------------------
    def probe(self, write: bool = False) -> None:
        """Raise RemoteUnreachable unless the root can be listed (and, with `write`, written)."""
        from bmbuild.remote import RemoteUnreachable

        try:
            try:
                self.fs.ls(self.base, detail=False)
            except FileNotFoundError:
                pass  # nothing stored yet
            if write:
                path = self._path(TMP, f"probe-{uuid.uuid4().hex}")
                self._put(lambda target: self.fs.pipe_file(target, b""), path)
                self._remove(path)
        except Exception as exc:
            raise RemoteUnreachable(f"{self.kind} {self.url} cannot be "
                                    f"{'written' if write else 'read'}: {describe(exc)}") from None

    # --- writing --------------------------------------------------------------------------
    def _put(self, write: Callable[[str], None], final: str) -> None:
        """`write(path)` writes a whole file; it appears under `final` complete or not at all."""
        if self.atomic_put:
            write(final)
            return
        tmp = self._path(TMP, f"{final.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp")
        self.fs.makedirs(self._path(TMP), exist_ok=True)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        try:
            write(tmp)
            self.fs.mv(tmp, final)
        except BaseException:
            self._remove(tmp, quiet=True)
            raise

    def put_object(self, src: Path | str, digest: str) -> None:
        """Upload `src` as the object `digest` (the caller checked that its content hashes to it)."""
        self._put(lambda target: self.fs.put_file(str(src), target), self.object_path(digest))

    def put_file(self, src: Path, digest: str, link: bool = False) -> None:
        """Store `src` as the object `digest` unless the store already holds it intact."""
        if not self.holds(digest, Path(src).stat().st_size):
            self.put_object(src, digest)

    def put_action(self, entry: ActionEntry) -> None:
        """Write an entry; call only once all of its objects are stored."""
        data = json_bytes(entry.to_json())
        self._put(lambda target: self.fs.pipe_file(target, data), self.action_path(entry.key))

    def put_named(self, name: str, data: bytes) -> None:
        """Write a small file under `name`, a layout path made by its owner (bmbuild.buildrecords)."""
        self._put(lambda target: self.fs.pipe_file(target, data), self._path(name))

    def get_named(self, name: str, limit: int) -> bytes | None:
        """The file under `name` (None when there is none), at most `limit` + 1 bytes of it."""
        try:
            return self.fs.cat_file(self._path(name), start=0, end=limit + 1)
        except FileNotFoundError:
            return None

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

    def remove_path(self, path: str) -> None:
        self._remove(path, quiet=True)

    # --- reading --------------------------------------------------------------------------
    def get_action(self, key: str) -> ActionEntry | None:
        try:
            data = self.fs.cat_file(self.action_path(key))
        except FileNotFoundError:
            return None
        try:
            return ActionEntry.from_bytes(data, key)
        except BadEntry as exc:
            self._unreadable(key, exc)
            return None

    def _unreadable(self, key: str, exc: BaseException) -> None:
        warn_once(f"{self.kind} {self.url}: entry {key[:12]} is unreadable ({exc}); ignored, "
                  "the stage runs again and replaces it")

    def object_size(self, digest: str) -> int | None:
        """Size of a stored object; None when there is none."""
        try:
            info = self.fs.info(self.object_path(digest))
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type", "file") == "file" else None

    def has_object(self, digest: str) -> bool:
        return self.object_size(digest) is not None

    def has_all(self, entry: ActionEntry) -> bool:
        return all(self.has_object(d) for d in entry.digests)

    def fetch_object(self, digest: str, dest: Path) -> bool:
        """Download an object to `dest` (False when there is none). Not verified here: callers
        hash it (`get_file`, `LocalStore.adopt`) before it is used."""
        try:
            self.fs.get_file(self.object_path(digest), str(dest))
        except FileNotFoundError:
            return False
        return True

    def get_file(self, digest: str, dest: Path, link: bool = False) -> bool:
        """Download the object to `dest`, verified; a corrupt object is deleted, and False returned."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            if not self.fetch_object(digest, tmp):
                return False
            if file_digest(tmp) != digest:
                self._remove(self.object_path(digest), quiet=True)
                return False
            os.replace(tmp, dest)
            return True
        finally:
            tmp.unlink(missing_ok=True)

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
        """Whether the store has the object intact: `size` bytes that hash to `digest`. Reads it
        back when the size matches, so a same-size corrupt object counts as missing."""
        try:
            return self.object_size(digest) == size and self.hash_object(digest) == digest
        except FileNotFoundError:
            return False

    # --- listing --------------------------------------------------------------------------
    def _find(self, folder: str) -> dict[str, dict[str, Any]]:
        try:
            found = self.fs.find(self._path(folder), detail=True)
        except FileNotFoundError:
            return {}
        return {path: info for path, info in found.items() if info.get("type", "file") == "file"}

    def list_objects(self) -> dict[str, ObjectInfo]:
        objects = {}
        for path, info in self._find(OBJECTS).items():
            digest = listed_digest(path)
            if digest is not None:
                objects[digest] = ObjectInfo(digest, int(info.get("size") or 0), _timestamp(info))
        return objects

    def list_actions(self, read: bool = True) -> list[ActionInfo]:
        """Every action entry; with `read`, parsed (fetched concurrently where the backend can)."""
        found = {path: (key, info) for path, info in self._find(ACTIONS).items()
                 if (key := listed_key(path)) is not None}
        contents: dict[str, Any] = {}
        if read and found:
            contents = self.fs.cat(list(found), on_error="return")
            # fsspec keys the answer by the stripped path; match by name to be safe
            contents = {str(path).rsplit("/", 1)[-1]: data for path, data in contents.items()}
        infos = []
        for key, info in found.values():
            data = contents.get(f"{key}.json")
            entry = _parse_entry(data, key) if isinstance(data, bytes) else None
            infos.append(ActionInfo(key, entry, int(info.get("size") or 0), _timestamp(info)))
        return infos

    def list_temps(self) -> dict[str, float]:
        """Leftover temp files (path -> mtime) from interrupted uploads: only files right in tmp/,
        never through a link (`cache gc` deletes what this returns)."""
        folder = self._path(TMP)
        try:
            if self.fs.info(folder).get("islink"):
                return {}
        except FileNotFoundError:
            return {}
        return {path: _timestamp(info) for path, info in self._find(TMP).items()
                if path.rsplit("/", 1)[0] == folder and not info.get("islink")}


class LocalFolderFS:
    """The part of fsspec's filesystem interface that FsStore uses, on local paths with os calls.

    The local cache is read on every plan, status and no-op run; fsspec costs about 0.4 s to
    import, so it is imported only when a remote is configured. Links are never followed: a
    symlink is listed as "other", like fsspec's LocalFileSystem does."""

    protocol = "file"

    def info(self, path: str) -> dict[str, Any]:
        st = os.lstat(path)
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        return {"name": path, "size": st.st_size, "type": kind, "mtime": st.st_mtime,
                "islink": stat.S_ISLNK(st.st_mode)}

    def ls(self, path: str, detail: bool = False) -> list[Any]:
        names = [os.path.join(path, name) for name in sorted(os.listdir(path))]
        return [self.info(name) for name in names] if detail else names

    def find(self, path: str, detail: bool = False) -> Any:
        if not os.path.isdir(path):
            raise FileNotFoundError(path)
        found = {}
        for folder, _dirs, files in os.walk(path):  # does not descend into linked folders
            for name in files:
                full = f"{folder}/{name}"
                try:
                    found[full] = self.info(full)
                except FileNotFoundError:  # removed meanwhile
                    continue
        return found if detail else sorted(found)

    def cat_file(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    def cat(self, paths: list[str], on_error: str = "raise") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in paths:
            try:
                out[path] = self.cat_file(path)
            except OSError as exc:
                if on_error == "raise":
                    raise
                out[path] = exc
        return out

    def pipe_file(self, path: str, data: bytes) -> None:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def mv(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def rm_file(self, path: str) -> None:
        os.unlink(path)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        return open(path, mode)

    def get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        shutil.copyfile(rpath, lpath)

    def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        shutil.copyfile(lpath, rpath)


class LocalStore(FsStore):
    """The store in a local folder (the user's cache): FsStore over LocalFolderFS, plus what only a
    local folder does. Objects are read-only and restored as hardlinks where that is safe (see the
    module docstring); an entry's mtime is its last use, which `cache gc` collects by; a folder
    found where one of the store's files belongs is removed; downloads are adopted only verified."""

    kind = "local cache"

    def __init__(self, root: Path | str):
        super().__init__(LocalFolderFS(), str(Path(root)), str(root))
        self.root = Path(root)
        for folder in (OBJECTS, ACTIONS, TMP):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._links_safe: bool | None = None

    def object_file(self, digest: str) -> Path:
        return self.root / object_name(digest)

    def _clear_folder(self, target: Path) -> None:
        """A folder where one of the store's files belongs (damage by hand or by a tool) is removed."""
        if target.is_dir() and not target.is_symlink():
            warn_once(f"local cache {self.root}: {target.relative_to(self.root)} was a folder; replaced")
            shutil.rmtree(target, ignore_errors=True)

    def _install(self, tmp: Path, target: Path) -> None:
        """Move a finished temp file to its name in the store."""
        target.parent.mkdir(parents=True, exist_ok=True)
        self._clear_folder(target)
        os.replace(tmp, target)

    def new_temp(self) -> Path:
        """A fresh, empty file in the store's tmp folder (same filesystem as the objects)."""
        fd, tmp = tempfile.mkstemp(dir=self.root / TMP)
        os.close(fd)
        return Path(tmp)

    def _temp_name(self) -> Path:
        return self.root / TMP / f"link-{uuid.uuid4().hex}"

    # --- actions --------------------------------------------------------------------------
    def get_action(self, key: str) -> ActionEntry | None:
        path = self.root / action_name(key)
        try:
            entry = super().get_action(key)
        except OSError as exc:  # a folder in its place, unreadable: the stage runs and replaces it
            self._unreadable(key, exc)
            return None
        if entry is not None:
            try:  # the entry's mtime is its last use: `bmbuild cache gc` drops the least recently used
                os.utime(path)
            except OSError:
                pass
        return entry

    def put_action(self, entry: ActionEntry) -> None:
        self._clear_folder(self.root / action_name(entry.key))
        super().put_action(entry)

    # --- objects --------------------------------------------------------------------------
    def has_object(self, digest: str) -> bool:
        return self.object_file(digest).is_file()

    def put_file(self, src: Path, digest: str, link: bool = False) -> None:
        """Store `src` (whose content hashes to `digest`), atomically; verified, read-only.

        With `link`, where read-only protects the object (`links_safe`), `src` itself becomes the
        object (a hardlink, no copy): it turns read-only too. Only a plain file that nothing else
        links to: a symlink or a file shared with another path (a user's file) is copied."""
        target = self.object_file(digest)
        if target.is_file() and target.stat().st_size == src.stat().st_size and file_digest(target) == digest:
            return  # already stored intact (a corrupt object of the same size is replaced)
        tmp = self._temp_name()
        try:
            if not (link and _sole_file(src) and self.links_safe() and _hardlink(src, tmp)):
                shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o444)
            if file_digest(tmp) != digest:
                if tmp.stat().st_nlink > 1:  # linked: do not leave the stage's output read-only
                    os.chmod(tmp, 0o644)
                raise OSError(f"{src} changed while it was being stored")
            self._install(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def get_file(self, digest: str, dest: Path, link: bool = False) -> bool:
        """Put the object at `dest`, verified: hardlinked with `link` where that is safe (the
        object is read-only and this process cannot write it anyway, same filesystem), else
        copied. A corrupt object is deleted and False returned."""
        source = self.object_file(digest)
        if not source.is_file():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        if link and not os.access(source, os.W_OK):
            if file_digest(source) != digest:
                source.unlink(missing_ok=True)
                return False
            dest.unlink(missing_ok=True)
            if _hardlink(source, dest):
                return True
            shutil.copyfile(source, dest)  # another filesystem: verified above
            return True
        return self._copy_verified(source, digest, dest)

    def _copy_verified(self, source: Path, digest: str, dest: Path) -> bool:
        """Copy while hashing (one read); a mismatch deletes both."""
        hasher = hashlib.sha256()
        with open(source, "rb") as reader, open(dest, "wb") as writer:
            while chunk := reader.read(CHUNK):
                hasher.update(chunk)
                writer.write(chunk)
        if hasher.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            source.unlink(missing_ok=True)
            return False
        return True

    def links_safe(self) -> bool:
        """Whether a read-only file in this store stops this process from writing it (False for
        root with CAP_DAC_OVERRIDE): only then may the build folder share an object's inode."""
        if self._links_safe is None:
            probe = self._temp_name()
            try:
                probe.write_bytes(b"")
                os.chmod(probe, 0o444)
                self._links_safe = not os.access(probe, os.W_OK)
            except OSError:
                self._links_safe = False
            finally:
                probe.unlink(missing_ok=True)
        return self._links_safe

    def adopt(self, tmp: Path, digest: str) -> bool:
        """Move the downloaded file `tmp` into the store if its content hashes to `digest`.

        Anything else is deleted: a partial or corrupt download never gets an object's name.
        """
        try:
            if file_digest(tmp) != digest:
                return False
            os.chmod(tmp, 0o444)
            self._install(tmp, self.object_file(digest))
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)


def _sole_file(path: Path) -> bool:
    """A regular file (not a symlink) with no other name: making it an object changes nothing else."""
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _hardlink(source: Path, dest: Path) -> bool:
    """Link `dest` to `source`; False where the filesystem cannot (another device: EXDEV, no
    hardlinks, too many links), so the caller copies instead."""
    try:
        os.link(source, dest)
        return True
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOENT):
            raise
        return False


def local_view(cache_dir: Path) -> LocalStore:
    """The local cache folder as a store (for `bmbuild cache`)."""
    return LocalStore(Path(cache_dir))
