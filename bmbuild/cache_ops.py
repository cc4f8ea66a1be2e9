"""The cache operations behind `bmbuild cache`: push, pull, list, collect (gc) and verify.

Plain functions over stores (bmbuild.store: the local cache and remotes share one protocol and
one implementation) that return data; `cache_cmd.py` parses arguments and renders. The local
cache is listed, collected and verified through the same code as a remote.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmbuild.errors import BmbuildError

if TYPE_CHECKING:
    from bmbuild.cache import ActionEntry
    from bmbuild.store import ActionInfo, FsStore, LocalStore, ObjectInfo
    from bmbuild.workspace import Workspace

# Unreferenced objects and temp files younger than this may belong to a build or upload in
# progress (objects are written before their entry): gc leaves them alone.
GRACE_SECONDS = 3600.0


def count(number: int, noun: str) -> str:
    """'1 entry', '2 entries', '1 object', '3 objects'."""
    if number == 1:
        return f"1 {noun}"
    return f"{number} {noun[:-1]}ies" if noun.endswith("y") else f"{number} {noun}s"


def open_store(workspace: Workspace, remote: bool, write: bool = False) -> FsStore:
    """The store a `bmbuild cache` command works on: the remote (checked readable, or writable
    with `write`), else the local cache."""
    if not remote:
        from bmbuild.store import local_view

        return local_view(workspace.cache_dir)
    store = workspace.open_remote()
    store.probe(write=write)
    return store


# --- push / pull ------------------------------------------------------------------------------
@dataclass
class Transfer:
    """What a push or pull moved."""

    entries: int = 0          # entries transferred
    objects: int = 0          # objects transferred
    bytes: int = 0
    present: int = 0          # entries already complete at the destination
    incomplete: int = 0       # entries skipped: an object is missing or corrupt at the source
    corrupt: list[str] = field(default_factory=list)   # corrupt source objects (digests)
    not_found: int = 0        # pull by recipe: keys in no cache
    keys: list[str] = field(default_factory=list)      # the entries transferred (push: bmbuild.buildrecords)


def _local_entries(local: LocalStore) -> list[ActionEntry]:
    return [info.entry for info in local.list_actions() if info.entry is not None]


def push(local: LocalStore, remote: FsStore) -> Transfer:
    """Upload every local entry the remote lacks: its missing objects first, the entry last.

    Local objects are re-hashed before upload, so local corruption is never spread. A remote
    object of the right size is read back and hashed (once per push), so a same-size corrupt one
    is replaced: a push reads every remote object the local cache also holds.
    """
    from bmbuild.cache import file_digest
    from bmbuild.store import describe

    remote.probe(write=True)
    result = Transfer()
    intact: set[str] = set()  # remote objects hashed (or uploaded) during this push

    def remote_holds(digest: str, path: Path) -> bool:
        if digest not in intact:
            info = remote_objects.get(digest)
            if info is None or info.size != path.stat().st_size:
                return False
            try:
                if remote.hash_object(digest) != digest:
                    return False
            except FileNotFoundError:
                return False
            intact.add(digest)
        return True

    try:
        remote_objects = remote.list_objects()
        remote_keys = {info.key for info in remote.list_actions(read=False)}
        for entry in _local_entries(local):
            paths = {d: local.object_file(d) for d in entry.digests}
            if not all(path.is_file() for path in paths.values()):
                result.incomplete += 1
                continue
            missing = [d for d, path in paths.items() if not remote_holds(d, path)]
            if entry.key in remote_keys and not missing:
                result.present += 1
                continue
            corrupt = [d for d in missing if file_digest(paths[d]) != d]
            if corrupt:
                result.corrupt.extend(corrupt)
                result.incomplete += 1
                continue
            for digest in missing:
                remote.put_object(paths[digest], digest)
                size = paths[digest].stat().st_size
                remote_objects[digest] = _object_info(digest, size)
                intact.add(digest)
                result.objects += 1
                result.bytes += size
            remote.put_action(entry)
            result.entries += 1
            result.keys.append(entry.key)
    except BmbuildError:
        raise
    except Exception as exc:
        raise BmbuildError(f"push to {remote.url} failed after {count(result.entries, 'entry')}: "
                           f"{describe(exc)}\n  what was pushed is complete; run the push again") from None
    return result


def _object_info(digest: str, size: int) -> ObjectInfo:
    from bmbuild.store import ObjectInfo

    return ObjectInfo(digest, size, time.time())


def pull(local: LocalStore, remote: FsStore, keys: list[str] | None = None) -> Transfer:
    """Download remote entries (all, or those of `keys`) with their objects, each verified."""
    from bmbuild.store import describe

    remote.probe()
    result = Transfer()
    try:
        if keys is None:
            entries = [info.entry for info in remote.list_actions() if info.entry is not None]
        else:
            entries = []
            for key in dict.fromkeys(keys):
                entry = local.get_action(key) or remote.get_action(key)
                if entry is None:
                    result.not_found += 1
                else:
                    entries.append(entry)
        for entry in entries:
            known = local.get_action(entry.key)
            if known is not None and local.has_all(known):
                result.present += 1
                continue
            complete = True
            for digest in entry.digests:
                if local.has_object(digest):
                    continue
                tmp = local.new_temp()
                try:
                    if not remote.fetch_object(digest, tmp):
                        complete = False
                        break
                    size = tmp.stat().st_size
                    if not local.adopt(tmp, digest):   # verified: a mismatch never enters the store
                        result.corrupt.append(digest)
                        complete = False
                        break
                    result.objects += 1
                    result.bytes += size
                finally:
                    tmp.unlink(missing_ok=True)
            if complete:
                local.put_action(entry)
                result.entries += 1
            else:
                result.incomplete += 1
    except Exception as exc:
        raise BmbuildError(f"pull from {remote.url} failed after {count(result.entries, 'entry')}: "
                           f"{describe(exc)}") from None
    return result


def recipe_keys(build: Any) -> tuple[list[str], int]:
    """The current action keys of a build's nodes, and how many nodes have no computable key.

    A downstream key needs its upstream outputs: they come from the build folder when it is up
    to date, else from a cached entry (local, then remote); without either the node is skipped.
    The propagation is `plan`'s (project.expected_decisions), over the local+remote store; a
    remote that cannot be read is an error here (RemoteUnreachable), not a warning.
    """
    from bmbuild.executor import Executor
    from bmbuild.project import expected_decisions
    from bmbuild.remote import TieredStore
    from bmbuild.store import LocalStore

    workspace = build.workspace
    remote = workspace.open_remote()
    executor = Executor(replace(workspace, remote_cache=None))
    executor.store = TieredStore(LocalStore(workspace.cache_dir), remote, strict=True)
    keys: list[str] = []
    unknown = 0
    try:
        for _node, decision, _waiting in expected_decisions(build, executor):
            if decision is None or decision.key is None:
                unknown += 1
            else:
                keys.append(decision.key)
    finally:
        executor.stat.close()
    return keys, unknown


# --- ls / gc / verify -------------------------------------------------------------------------
@dataclass
class EntryRow:
    key: str
    recipe: str
    stage: str
    size: int          # the entry and its objects
    mtime: float       # last use (local) or upload (remote)
    complete: bool     # every object present
    summary: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_entries(store: FsStore) -> list[EntryRow]:
    """Every entry, newest first; unreadable entries are listed with stage '?'."""
    objects = store.list_objects()
    rows = []
    for info in store.list_actions():
        entry = info.entry
        digests = set(entry.digests) if entry else set()
        rows.append(EntryRow(info.key, entry.recipe if entry else "", entry.stage if entry else "?",
                             info.size + sum(objects[d].size for d in digests if d in objects), info.mtime,
                             entry is not None and digests <= set(objects), entry.summary if entry else ""))
    return sorted(rows, key=lambda row: row.mtime, reverse=True)


@dataclass
class GcResult:
    entries: int = 0          # entries removed
    objects: int = 0          # objects removed
    bytes: int = 0            # bytes freed
    kept_entries: int = 0
    kept_bytes: int = 0
    temps: int = 0            # leftover temp files removed


def gc(store: FsStore, max_age_days: float | None = None, max_size: int | None = None,
       dry_run: bool = False, now: float | None = None) -> GcResult:
    """Drop entries older than `max_age_days`, then the least recently used ones until the rest
    fits in `max_size` bytes; then every object no entry needs. Entries go first, so a reader
    never finds an entry whose objects were removed."""
    now = time.time() if now is None else now
    objects = store.list_objects()
    actions = sorted(store.list_actions(), key=lambda info: info.mtime, reverse=True)
    referenced = {d for info in actions if info.entry for d in info.entry.digests}
    keep: list[ActionInfo] = []
    drop: list[ActionInfo] = []
    used, counted, full = 0, set(), False
    for info in actions:  # most recently used first
        if info.entry is None or (max_age_days is not None and now - info.mtime > max_age_days * 86400):
            drop.append(info)
            continue
        new = [d for d in info.entry.digests if d in objects and d not in counted]
        size = info.size + sum(objects[d].size for d in new)
        if max_size is not None and (full or used + size > max_size):
            full = True  # strictly least recently used: nothing older than this one stays
            drop.append(info)
            continue
        keep.append(info)
        counted.update(new)
        used += size
    needed = {d for info in keep for d in info.entry.digests}  # type: ignore[union-attr]
    result = GcResult(kept_entries=len(keep))
    result.kept_bytes = sum(info.size for info in keep) + sum(objects[d].size for d in needed if d in objects)
    for info in drop:
        result.entries += 1
        result.bytes += info.size
        if not dry_run:
            store.delete_action(info.key)
    for digest, obj in objects.items():
        if digest in needed:
            continue
        if digest not in referenced and now - obj.mtime < GRACE_SECONDS:
            continue  # maybe a build in progress whose entry is not written yet
        result.objects += 1
        result.bytes += obj.size
        if not dry_run:
            store.delete_object(digest)
    for path, mtime in store.list_temps().items():
        if now - mtime >= GRACE_SECONDS:
            result.temps += 1
            if not dry_run:
                store.remove_path(path)
    return result


@dataclass
class VerifyResult:
    objects: int = 0                                       # objects checked
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)       # digests whose content does not match
    bad_entries: list[str] = field(default_factory=list)   # entries that cannot be read
    incomplete: int = 0                                    # entries that need a missing object
    deleted: bool = False

    def __bool__(self) -> bool:
        return not self.corrupt and not self.bad_entries


def verify(store: FsStore, delete: bool = True) -> VerifyResult:
    """Re-hash every object; report (and unless told otherwise delete) corrupt objects and unreadable entries."""
    result = VerifyResult(deleted=delete)
    objects = store.list_objects()
    for digest, obj in sorted(objects.items()):
        result.objects += 1
        result.bytes += obj.size
        try:
            actual = store.hash_object(digest)
        except FileNotFoundError:  # removed meanwhile
            continue
        if actual != digest:
            result.corrupt.append(digest)
            if delete:
                store.delete_object(digest)
    good = set(objects) - set(result.corrupt)
    for info in store.list_actions():
        if info.entry is None:
            result.bad_entries.append(info.key)
            if delete:
                store.delete_action(info.key)
        elif not set(info.entry.digests) <= good:
            result.incomplete += 1
    return result


