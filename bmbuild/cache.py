"""Content hashing, the stat cache, the action key, and the content-addressed store.

The action key is built in exactly one place (`action_key`) and pinned by a golden test.
The store holds objects by sha256 and action entries by key; every write goes to a temp
file and is moved into place, so a killed process never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY_VERSION = 1
CHUNK = 1 << 20


def json_bytes(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, so equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def action_key(components: dict[str, Any]) -> str:
    """The one function that turns a stage's inputs into its cache key."""
    return hashlib.sha256(json_bytes({"key_version": KEY_VERSION, **components})).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(files: dict[str, str]) -> str:
    """One digest for a set of (relative path -> digest) entries."""
    return hashlib.sha256(json_bytes(sorted(files.items()))).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STAT_TABLE = "file_stat"  # v2 of the stat cache: the signature includes st_ctime_ns
STAT_COLUMNS = ("path", "size", "mtime_ns", "ctime_ns", "inode", "digest")
LEGACY_STAT = ("stat", ("path", "size", "mtime_ns", "inode", "digest"))  # v1, dropped on open
SQLITE_BUSY = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED: another process is writing, nothing is broken
_SHA256 = re.compile(r"[0-9a-f]{64}")
logger = logging.getLogger("bmbuild.cache")


class StatCache:
    """Remembers file digests by (path, size, mtime, ctime, inode) so unchanged files are not re-read.

    ctime is part of the signature because no write through the filesystem keeps it: a byte
    flipped in place with the mtime set back (`os.utime`) is still noticed. Backed by a small
    sqlite DB; safe to share between threads and processes. The DB is only a cache: one that
    cannot be used (garbage, truncated, a table of another shape) is reported once, discarded
    and recreated; a row of the wrong types is a miss.
    """

    def __init__(self, db_path: Path):
        self.path = Path(db_path)
        self._lock = threading.Lock()
        self._warned = False
        self.files_hashed = 0  # how many files were actually read (tests and benchmarks use it)
        self._db = self._open()

    # --- the DB ---------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """Connect to the DB; a broken one is discarded and recreated, an unusable place kept in memory."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect(str(self.path))
        except (sqlite3.Error, OSError) as exc:
            if not _is_busy(exc):
                self._warn(f"{self.path} cannot be used ({_describe(exc)}); discarded and recreated")
                self._discard()
                try:
                    return self._connect(str(self.path))
                except (sqlite3.Error, OSError) as again:
                    exc = again
            self._warn(f"{self.path} cannot be used ({_describe(exc)}); file digests are kept in memory")
            return self._connect(":memory:")

    @staticmethod
    def _connect(target: str) -> sqlite3.Connection:
        db = sqlite3.connect(target, timeout=60, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            _check_schema(db)
            db.execute(f"CREATE TABLE IF NOT EXISTS {STAT_TABLE} (path TEXT PRIMARY KEY, size INTEGER,"
                       " mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, digest TEXT)")
        except BaseException:
            db.close()
            raise
        return db

    def _discard(self) -> None:
        """Remove the DB and its journals (a folder in its place too): it is only a cache."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            path = self.path.with_name(self.path.name + suffix)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass

    def _warn(self, message: str) -> None:
        if self._warned:
            return
        self._warned = True
        logger.info("warning: %s", message)
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def _query(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Run one statement; a DB found broken mid-run is recreated and the statement skipped."""
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchone()
            except sqlite3.Error as exc:
                if _is_busy(exc):
                    return None  # still busy after the timeout: go on without the cache
                self._warn(f"{self.path} cannot be used ({_describe(exc)}); discarded and recreated")
                self._db.close()
                self._discard()
                self._db = self._open()
                return None

    # --- digests --------------------------------------------------------------------------
    def digest(self, path: Path) -> str:
        path = Path(path).resolve()
        signature = _signature(path.stat())
        row = self._query(f"SELECT size, mtime_ns, ctime_ns, inode, digest FROM {STAT_TABLE} WHERE path=?",
                          (str(path),))
        if row and tuple(row[:4]) == signature and isinstance(row[4], str) and _SHA256.fullmatch(row[4]):
            return row[4]
        return self._hash(path, signature)

    def rehash(self, path: Path) -> str:
        """The digest of what is on disk now, whatever is remembered (`status --verify`).
        Remembered afterwards, so the next up-to-date check sees the same content."""
        path = Path(path).resolve()
        return self._hash(path, _signature(path.stat()))

    def _hash(self, path: Path, signature: tuple[int, ...]) -> str:
        digest = file_digest(path)  # the signature was taken before: a change while reading is seen next time
        with self._lock:
            self.files_hashed += 1
        self._query(f"INSERT OR REPLACE INTO {STAT_TABLE} VALUES (?,?,?,?,?,?)", (str(path), *signature, digest))
        return digest

    def close(self) -> None:
        self._db.close()


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _is_busy(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in SQLITE_BUSY


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _check_schema(db: sqlite3.Connection) -> None:
    """Raise unless our table (if there) has our columns; drop the v1 table, which lacks ctime."""
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
        if name not in (STAT_TABLE, LEGACY_STAT[0]):
            continue  # not ours
        columns = tuple(row[1] for row in db.execute(f"PRAGMA table_info({name})"))
        if name == STAT_TABLE and columns != STAT_COLUMNS:
            raise sqlite3.DatabaseError(f"table {name} has columns {columns}, expected {STAT_COLUMNS}")
        if name == LEGACY_STAT[0]:
            if columns != LEGACY_STAT[1]:
                raise sqlite3.DatabaseError(f"table {name} has columns {columns}, expected {LEGACY_STAT[1]}")
            db.execute(f"DROP TABLE IF EXISTS {name}")


@dataclass
class ActionEntry:
    """What a finished stage produced: its outputs by digest, its log, its metrics."""

    key: str
    outputs: dict[str, str]              # relative path -> sha256
    log_digest: str | None = None
    cmd_digest: str | None = None        # the vendor command lines (`<stage>.cmd`), if any
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    created: float = field(default_factory=time.time)
    recipe: str = ""                     # for `bmbuild cache ls`; not part of the key
    stage: str = ""

    def __post_init__(self) -> None:
        # entries written before these fields existed: recover them from the components
        components = self.components if isinstance(self.components, dict) else {}
        if not self.stage:
            self.stage = str(components.get("stage") or "")
        if not self.recipe:
            params = components.get("params")
            self.recipe = str(params.get("net_name") or "") if isinstance(params, dict) else ""

    @property
    def digests(self) -> list[str]:
        """Every object the entry needs: its outputs, then its log and command lines."""
        return list(self.outputs.values()) + [d for d in (self.log_digest, self.cmd_digest) if d]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ActionEntry":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class LocalStore:
    """Content-addressed objects plus an action cache, in a local folder.

    objects/ab/abcdef...   file contents by sha256
    actions/ab/<key>.json  ActionEntry by action key
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "actions").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def _object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def _action_path(self, key: str) -> Path:
        return self.root / "actions" / key[:2] / f"{key}.json"

    def has_object(self, digest: str) -> bool:
        return self._object_path(digest).is_file()

    def put_file(self, src: Path, digest: str) -> None:
        """Copy `src` (whose content hashes to `digest`) into the store, atomically."""
        target = self._object_path(digest)
        if target.is_file() and target.stat().st_size == src.stat().st_size and file_digest(target) == digest:
            return  # already stored intact (a corrupt object of the same size is replaced)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            if file_digest(Path(tmp)) != digest:
                raise OSError(f"{src} changed while it was being stored")
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_file(self, digest: str, dest: Path) -> bool:
        """Copy an object to `dest`, verifying its digest. A corrupt object is dropped."""
        source = self._object_path(digest)
        if not source.is_file():
            return False
        hasher = hashlib.sha256()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as reader, open(dest, "wb") as writer:
            while chunk := reader.read(CHUNK):
                hasher.update(chunk)
                writer.write(chunk)
        if hasher.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            source.unlink(missing_ok=True)
            return False
        return True

    def get_action(self, key: str) -> ActionEntry | None:
        path = self._action_path(key)
        try:
            entry = ActionEntry.from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError, TypeError):
            return None
        try:  # the entry's mtime is its last use: `bmbuild cache gc` drops the least recently used
            os.utime(path)
        except OSError:
            pass
        return entry

    def put_action(self, entry: ActionEntry) -> None:
        atomic_write_bytes(self._action_path(entry.key), json_bytes(entry.to_json()))

    def has_all(self, entry: ActionEntry) -> bool:
        return all(self.has_object(d) for d in entry.digests)

    # --- used by the remote cache (bmbuild.remote) ----------------------------------------
    def object_path(self, digest: str) -> Path:
        return self._object_path(digest)

    def new_temp(self) -> Path:
        """A fresh, empty file in the store's tmp folder (same filesystem as the objects)."""
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        os.close(fd)
        return Path(tmp)

    def adopt(self, tmp: Path, digest: str) -> bool:
        """Move the downloaded file `tmp` into the store if its content hashes to `digest`.

        Anything else is deleted: a partial or corrupt download never gets an object's name.
        """
        try:
            if file_digest(tmp) != digest:
                return False
            target = self._object_path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)
