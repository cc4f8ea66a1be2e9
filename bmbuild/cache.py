"""Content hashing, the stat cache, the action key, and the content-addressed store.

The action key is built in exactly one place (`action_key`) and pinned by a golden test.
The store holds objects by sha256 and action entries by key; every write goes to a temp
file and is moved into place, so a killed process never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
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


class StatCache:
    """Remembers file digests by (path, size, mtime, inode) so unchanged files are not re-read.

    Backed by a small sqlite DB; safe to share between threads and processes.
    """

    def __init__(self, db_path: Path):
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS stat (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " inode INTEGER, digest TEXT)")
        self._lock = threading.Lock()
        self.files_hashed = 0  # how many files were actually read (tests and benchmarks use it)

    def digest(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        signature = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            row = self._db.execute("SELECT size, mtime_ns, inode, digest FROM stat WHERE path=?",
                                   (str(path),)).fetchone()
        if row and tuple(row[:3]) == signature:
            return row[3]
        digest = file_digest(path)
        with self._lock:
            self.files_hashed += 1
            self._db.execute("INSERT OR REPLACE INTO stat VALUES (?,?,?,?,?)",
                             (str(path), *signature, digest))
        return digest

    def close(self) -> None:
        self._db.close()


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
