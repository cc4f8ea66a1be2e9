"""`bmbuild cache push|pull|ls|gc|verify`: move, list, collect and check cached stage results.

The operations are plain functions over `LocalStore` / `RemoteStore` that return data; the
bottom of the module parses arguments and renders. The local cache is handled through the same
`RemoteStore` interface (on a local filesystem) as a remote, so `ls`, `gc` and `verify` are one
code path for both.

Exit codes: 0 done, 1 `verify` found corrupt objects or entries, 2 no remote configured or the
remote is unreachable (and every other user error).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmbuild.errors import BmbuildError
from bmbuild.toolchains.base import REGISTRY

if TYPE_CHECKING:
    from bmbuild.cache import ActionEntry, LocalStore
    from bmbuild.remote import ActionInfo, ObjectInfo, RemoteStore
    from bmbuild.workspace import Workspace

# Unreferenced objects and temp files younger than this may belong to a build or upload in
# progress (objects are written before their entry): gc leaves them alone.
GRACE_SECONDS = 3600.0
SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
              "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'0', '500M', '1.5G', '10GiB', '2048' -> bytes (k/M/G are powers of 1000, KiB/MiB/GiB of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 0, 500M, 10G or 2GiB, got {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def count(number: int, noun: str) -> str:
    """'1 entry', '2 entries', '1 object', '3 objects'."""
    if number == 1:
        return f"1 {noun}"
    return f"{number} {noun[:-1]}ies" if noun.endswith("y") else f"{number} {noun}s"


def human_age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


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


def _local_entries(local: LocalStore) -> list[ActionEntry]:
    from bmbuild.remote import local_view

    return [info.entry for info in local_view(local.root).list_actions() if info.entry is not None]


def push(local: LocalStore, remote: RemoteStore) -> Transfer:
    """Upload every local entry the remote lacks: its missing objects first, the entry last.

    Local objects are re-hashed before upload, so local corruption is never spread. A remote
    object of the right size is read back and hashed (once per push), so a same-size corrupt one
    is replaced: a push reads every remote object the local cache also holds.
    """
    from bmbuild.cache import file_digest
    from bmbuild.remote import describe

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
            paths = {d: local.object_path(d) for d in entry.digests}
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
    except BmbuildError:
        raise
    except Exception as exc:
        raise BmbuildError(f"push to {remote.url} failed after {count(result.entries, 'entry')}: "
                           f"{describe(exc)}\n  what was pushed is complete; run the push again") from None
    return result


def _object_info(digest: str, size: int) -> ObjectInfo:
    from bmbuild.remote import ObjectInfo

    return ObjectInfo(digest, size, time.time())


def pull(local: LocalStore, remote: RemoteStore, keys: list[str] | None = None) -> Transfer:
    """Download remote entries (all, or those of `keys`) with their objects, each verified."""
    from bmbuild.remote import describe

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
    """
    from bmbuild.cache import action_key
    from bmbuild.executor import Executor, read_manifest
    from bmbuild.planner import Expected

    workspace = build.workspace
    remote = workspace.open_remote()
    executor = Executor(replace(workspace, remote_cache=None))
    keys: list[str] = []
    unknown = 0
    expected = Expected()
    try:
        for node in build.nodes:
            if expected.pending(node) is not None:
                unknown += 1
                continue
            key = action_key(executor.components(node, expected.upstream(node)))
            keys.append(key)
            manifest = read_manifest(workspace.stage_dir(node.recipe_name, node.stage.name))
            if manifest is not None and manifest["key"] == key:
                expected.record(node, manifest["outputs"])
                continue
            entry = executor.store.get_action(key) or _remote_entry(remote, key)
            expected.record(node, entry.outputs if entry is not None else None)
    finally:
        executor.stat.close()
    return keys, unknown


def _remote_entry(remote: RemoteStore, key: str) -> ActionEntry | None:
    from bmbuild.remote import RemoteUnreachable, describe

    try:
        return remote.get_action(key)
    except Exception as exc:
        raise RemoteUnreachable(f"remote cache {remote.url} cannot be read: {describe(exc)}") from None


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


def list_entries(store: RemoteStore) -> list[EntryRow]:
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


def gc(store: RemoteStore, max_age_days: float | None = None, max_size: int | None = None,
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


def verify(store: RemoteStore, delete: bool = True) -> VerifyResult:
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


# --- command line -----------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """Register `bmbuild cache ...` on the main parser's subcommands."""
    cache = sub.add_parser("cache", help="push, pull, list, collect and verify cached stage results",
                           description=__doc__.splitlines()[0])
    actions = cache.add_subparsers(dest="cache_command", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--cache-dir", help="local cache (default: $BMBUILD_CACHE_DIR or the user cache dir)")
        parser.add_argument("--remote-cache", metavar="URL",
                            help="remote cache: a folder or an fsspec URL (s3://bucket/prefix, gs://...); "
                                 "default: $BMBUILD_REMOTE_CACHE or bmbuild.yaml remote_cache. Storage options "
                                 "(JSON) from $BMBUILD_REMOTE_OPTIONS or bmbuild.yaml remote_cache_options")
        parser.set_defaults(func=cmd_cache)
        return parser

    common(actions.add_parser("push", help="upload every local entry (and its objects) the remote lacks"))
    pull_parser = common(actions.add_parser("pull", help="download remote entries and objects, verified"))
    pull_parser.add_argument("paths", nargs="*",
                             help="only the current stages of these recipes (default: everything)")
    pull_parser.add_argument("--toolchain", choices=["auto", *REGISTRY],
                             help="override the recipes' toolchain when picking their stages")
    ls = common(actions.add_parser("ls", help="list cached entries (newest first)"))
    ls.add_argument("--remote", action="store_true", help="list the remote cache instead of the local one")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    gc_parser = common(actions.add_parser("gc", help="remove old or least recently used entries and "
                                                     "the objects no entry needs"))
    gc_parser.add_argument("--max-age", type=float, metavar="DAYS", help="remove entries unused for DAYS days")
    gc_parser.add_argument("--max-size", type=parse_size, metavar="SIZE",
                           help="keep the most recently used entries that fit in SIZE (0, 500M, 10G, 2GiB)")
    gc_parser.add_argument("--remote", action="store_true", help="collect the remote cache instead of the local one")
    gc_parser.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    verify_parser = common(actions.add_parser("verify", help="re-hash every object; delete and report corrupt ones"))
    verify_parser.add_argument("--remote", action="store_true", help="verify the remote cache instead of the local one")
    verify_parser.add_argument("--keep", action="store_true", help="report corrupt objects without deleting them")


def _workspace(args: argparse.Namespace) -> Workspace:
    from bmbuild.workspace import Workspace

    return Workspace.at(cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                        remote_cache=args.remote_cache or None)


def cmd_cache(args: argparse.Namespace) -> int:
    from bmbuild.cache import LocalStore
    from bmbuild.remote import local_view

    workspace = _workspace(args)
    local = LocalStore(workspace.cache_dir)
    command = args.cache_command
    if command == "push":
        remote = workspace.open_remote()
        _print_transfer("pushed", "to", remote.url, push(local, remote))
        return 0
    if command == "pull":
        remote = workspace.open_remote()
        keys = None
        if args.paths:
            from bmbuild.project import prepare

            build = prepare(args.paths, workspace, args.toolchain, check_toolchains=False)
            keys, unknown = recipe_keys(build)
            if unknown:
                print(f"{unknown} stage(s) skipped: their upstream results are in no cache")
        _print_transfer("pulled", "from", remote.url, pull(local, remote, keys))
        return 0
    if command == "ls":
        store = workspace.open_remote() if args.remote else local_view(workspace.cache_dir)
        if args.remote:
            store.probe()
        rows = list_entries(store)
        if args.json:
            print(json.dumps({"store": store.url, "entries": [row.to_json() for row in rows]}, indent=2))
            return 0
        now = time.time()
        print(f"{'key':<14} {'recipe':<20} {'stage':<14} {'size':>10} {'age':>6}  summary")
        for row in rows:
            flag = "" if row.complete else "  (incomplete)"
            print(f"{row.key[:12]:<14} {row.recipe[:20]:<20} {row.stage[:14]:<14} {human_size(row.size):>10} "
                  f"{human_age(now - row.mtime):>6}  {row.summary}{flag}".rstrip())
        print(f"{count(len(rows), 'entry')}, {human_size(sum(r.size for r in rows))} "
              f"in {store.url}")
        return 0
    if command == "gc":
        if args.remote:  # --remote means the same in ls, gc and verify: that store instead of the local one
            remote = workspace.open_remote()
            remote.probe(write=not args.dry_run)
            stores = [remote]
        else:
            stores = [local_view(workspace.cache_dir)]
        verb = "would remove" if args.dry_run else "removed"
        for store in stores:
            result = gc(store, args.max_age, args.max_size, dry_run=args.dry_run)
            print(f"{store.url}: {verb} {count(result.entries, 'entry')} and {count(result.objects, 'object')} "
                  f"({human_size(result.bytes)}); kept {count(result.kept_entries, 'entry')}, "
                  f"{human_size(result.kept_bytes)}")
        return 0
    if command == "verify":
        store = workspace.open_remote() if args.remote else local_view(workspace.cache_dir)
        if args.remote:
            store.probe()
        result = verify(store, delete=not args.keep)
        action = "kept" if args.keep else "deleted"
        for digest in result.corrupt:
            print(f"  corrupt object {digest} ({action})")
        for key in result.bad_entries:
            print(f"  unreadable entry {key} ({action})")
        print(f"{store.url}: {count(result.objects, 'object')} checked ({human_size(result.bytes)}), "
              f"{len(result.corrupt)} corrupt, {count(len(result.bad_entries), 'unreadable entry')}, "
              f"{count(result.incomplete, 'entry')} missing objects")
        return 0 if result else 1
    raise BmbuildError(f"unknown cache command {command!r}")  # pragma: no cover - argparse checks


def _print_transfer(verb: str, direction: str, url: str, result: Transfer) -> None:
    print(f"{verb} {count(result.entries, 'entry')} and {count(result.objects, 'object')} ({human_size(result.bytes)}) "
          f"{direction} {url}; {result.present} already there")
    if result.incomplete:
        print(f"{count(result.incomplete, 'entry')} skipped: an object is missing or corrupt at the source")
    for digest in result.corrupt:
        print(f"  corrupt object {digest} (not transferred)")
    if result.not_found:
        print(f"{result.not_found} stage(s) are in no cache")
