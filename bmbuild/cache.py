"""Content hashing, the stat cache, the action key, and the content-addressed store.

The action key is built in exactly one place (`action_key`) and pinned by a golden test.
The store (objects by sha256, action entries by key) is bmbuild.store; every write goes to a
temp file and is moved into place, so a killed process never leaves a half-written entry.
Whatever is read back (entries from any store, manifests) passes `validate_entry` before use, and
a store builds paths only from checked digests: a shared cache is input from others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY_VERSION = 2  # 2: stage parameters keyed only when the running toolchain reads them
CHUNK = 1 << 20
MANIFEST = ".bmbuild-manifest.json"   # marks a published stage folder complete (see executor)
HEX = frozenset("0123456789abcdef")

logger = logging.getLogger("bmbuild.cache")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_stderr(message: str) -> None:
    """The user sees it on stderr; logging gets it too (a stage's log, when raised inside one).
    INFO, so that Python's last-resort handler does not print it a second time."""
    logger.info("warning: %s", message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


def warn_once(message: str) -> None:
    """`warn_stderr`, once per process and message: bad state read several times in a run warns once."""
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    warn_stderr(message)


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


def is_digest(value: Any) -> bool:
    """A sha256 as bmbuild writes it: 64 lowercase hex characters (so always a safe file name)."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= HEX


def checked_digest(value: Any) -> str:
    """`value` when it is a digest; ValueError otherwise. Guards every path built from a digest."""
    if not is_digest(value):
        raise ValueError(f"not a sha256 digest: {value!r:.80}")
    return value


class BadEntry(ValueError):
    """An action entry or manifest that bmbuild did not write: never used, never turned into a path."""


def _has_control(text: str) -> bool:
    """Control characters (NUL, newline, the terminal's escape) have no place in a name or a summary."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _check_output_name(name: Any) -> str:
    """A normalised relative POSIX path that stays inside the stage folder; BadEntry otherwise."""
    if not isinstance(name, str) or not name:
        raise BadEntry(f"output name {name!r:.80} is not a non-empty string")
    if "\\" in name or _has_control(name):
        raise BadEntry(f"output name {name!r:.80} has a backslash or a control character")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts) or name == MANIFEST:
        raise BadEntry(f"output name {name!r:.80} is absolute, not normalised, leaves its folder or is reserved")
    try:
        if any(len(part.encode()) > 255 for part in parts):
            raise BadEntry(f"output name {name!r:.80} has a part longer than 255 bytes")
    except UnicodeEncodeError:
        raise BadEntry(f"output name {name!r:.80} is not valid unicode") from None
    return name


def _check_outputs(outputs: Any) -> None:
    if not isinstance(outputs, dict) or not outputs:
        raise BadEntry(f"outputs must be a non-empty object, not {type(outputs).__name__}")
    for name, digest in outputs.items():
        _check_output_name(name)
        if not is_digest(digest):
            raise BadEntry(f"output {name!r} has no valid digest: {digest!r:.80}")
    folders = {"/".join(parts[:i]) for parts in (n.split("/") for n in outputs) for i in range(1, len(parts))}
    clash = folders & set(outputs)
    if clash:
        raise BadEntry(f"output {sorted(clash)[0]!r} is both a file and a folder")


# optional fields: the types an entry or manifest may hold (missing ones take their defaults)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "summary": (str,), "metrics": (dict,), "components": (dict,), "recipe": (str,), "stage": (str,),
    "seconds": (int, float), "created": (int, float),
}


def validate_entry(data: Any, key: str | None = None) -> dict[str, Any]:
    """The one check for everything read back (action entries from any store, stage manifests).

    Returns `data` when it has the shape bmbuild writes, else raises BadEntry saying why: keys and
    digests are sha256 hex, output names stay inside the stage folder, fields have their types,
    and the entry is the one asked for (`key`).
    """
    if not isinstance(data, dict):
        raise BadEntry(f"not a JSON object but {type(data).__name__}")
    if not is_digest(data.get("key")):
        raise BadEntry(f"key {data.get('key')!r:.80} is not a sha256 digest")
    if key is not None and data["key"] != key:
        raise BadEntry(f"holds the entry of another key ({data['key'][:12]})")
    _check_outputs(data.get("outputs"))
    for name in ("log_digest", "cmd_digest"):
        if data.get(name) is not None and not is_digest(data[name]):
            raise BadEntry(f"{name} {data[name]!r:.80} is not a sha256 digest")
    for name, types in FIELD_TYPES.items():
        value = data.get(name)
        if name in data and (not isinstance(value, types) or isinstance(value, bool)):
            raise BadEntry(f"{name} must be {' or '.join(t.__name__ for t in types)}, not {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadEntry(f"{name} is not a finite number")
        if isinstance(value, str) and _has_control(value):
            raise BadEntry(f"{name} has a control character (it would reach the terminal)")
    components = data.get("components") or {}
    for section in ("params", "inputs", "upstream"):
        if not isinstance(components.get(section, {}), dict):
            raise BadEntry(f"components.{section} must be an object")
    return data


STAT_TABLE = "file_stat"  # v2 of the stat cache: the signature includes st_ctime_ns
STAT_COLUMNS = ("path", "size", "mtime_ns", "ctime_ns", "inode", "digest")
LEGACY_STAT = ("stat", ("path", "size", "mtime_ns", "inode", "digest"))  # v1, dropped on open
SQLITE_BUSY = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED: another process is writing, nothing is broken
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
        if row and tuple(row[:4]) == signature and is_digest(row[4]):
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
    def from_json(cls, data: Any, key: str | None = None) -> "ActionEntry":
        """An entry read back from a store; BadEntry unless `validate_entry` accepts it."""
        validate_entry(data, key)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def from_bytes(cls, data: Any, key: str) -> "ActionEntry":
        """The entry stored under `key`, from the bytes of its file; BadEntry when it is not one."""
        try:
            return cls.from_json(json.loads(data), key)
        except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError, BadEntry, not bytes
            raise exc if isinstance(exc, BadEntry) else BadEntry(f"not JSON ({exc})") from None


def __getattr__(name: str) -> Any:
    """`LocalStore` moved to bmbuild.store (the one store implementation); imported from here lazily,
    since bmbuild.store builds on this module."""
    if name == "LocalStore":
        from bmbuild.store import LocalStore

        return LocalStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
