"""`bmbuild cache push|pull|ls|gc|verify`: move, list, collect and check cached stage results.

This module only parses arguments, calls the operations in bmbuild.cache_ops and renders
their results.

Exit codes: 0 done, 1 `verify` found corrupt objects or entries, 2 no remote configured or the
remote is unreachable (and every other user error).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmbuild.cache_ops import count
from bmbuild.errors import BmbuildError
from bmbuild.toolchain_registry import REGISTRY

if TYPE_CHECKING:
    from bmbuild.cache_ops import Transfer
    from bmbuild.workspace import Workspace

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


def human_age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


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
    from bmbuild import cache_ops
    from bmbuild.store import LocalStore

    workspace = _workspace(args)
    command = args.cache_command
    if command == "push":
        from bmbuild.buildrecords import publish_pushed
        from bmbuild.cache import warn_stderr

        remote = workspace.open_remote()
        result = cache_ops.push(LocalStore(workspace.cache_dir), remote)
        _print_transfer("pushed", "to", remote.url, result)
        records = publish_pushed(workspace.build_dir, remote, result.keys, warn_stderr)
        if records:
            print(f"recorded {count(records, 'build')} of this workspace for `bmbuild diff --remote`")
        return 0
    if command == "pull":
        remote = workspace.open_remote()
        keys = None
        if args.paths:
            from bmbuild.project import prepare

            build = prepare(args.paths, workspace, args.toolchain, check_toolchains=False)
            keys, unknown = cache_ops.recipe_keys(build)
            if unknown:
                print(f"{unknown} stage(s) skipped: their upstream results are in no cache")
        _print_transfer("pulled", "from", remote.url, cache_ops.pull(LocalStore(workspace.cache_dir), remote, keys))
        return 0
    if command == "ls":
        store = cache_ops.open_store(workspace, args.remote)
        _print_entries(store.url, cache_ops.list_entries(store), args.json)
        return 0
    if command == "gc":  # --remote means the same in ls, gc and verify: that store instead of the local one
        store = cache_ops.open_store(workspace, args.remote, write=not args.dry_run)
        result = cache_ops.gc(store, args.max_age, args.max_size, dry_run=args.dry_run)
        print(f"{store.url}: {'would remove' if args.dry_run else 'removed'} {count(result.entries, 'entry')} and "
              f"{count(result.objects, 'object')} ({human_size(result.bytes)}); kept "
              f"{count(result.kept_entries, 'entry')}, {human_size(result.kept_bytes)}")
        return 0
    if command == "verify":
        store = cache_ops.open_store(workspace, args.remote)
        result = cache_ops.verify(store, delete=not args.keep)
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


def _print_entries(url: str, rows: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"store": url, "entries": [row.to_json() for row in rows]}, indent=2))
        return
    now = time.time()
    print(f"{'key':<14} {'recipe':<20} {'stage':<14} {'size':>10} {'age':>6}  summary")
    for row in rows:
        flag = "" if row.complete else "  (incomplete)"
        print(f"{row.key[:12]:<14} {row.recipe[:20]:<20} {row.stage[:14]:<14} {human_size(row.size):>10} "
              f"{human_age(now - row.mtime):>6}  {row.summary}{flag}".rstrip())
    print(f"{count(len(rows), 'entry')}, {human_size(sum(r.size for r in rows))} in {url}")


def _print_transfer(verb: str, direction: str, url: str, result: Transfer) -> None:
    print(f"{verb} {count(result.entries, 'entry')} and {count(result.objects, 'object')} ({human_size(result.bytes)}) "
          f"{direction} {url}; {result.present} already there")
    if result.incomplete:
        print(f"{count(result.incomplete, 'entry')} skipped: an object is missing or corrupt at the source")
    for digest in result.corrupt:
        print(f"  corrupt object {digest} (not transferred)")
    if result.not_found:
        print(f"{result.not_found} stage(s) are in no cache")
