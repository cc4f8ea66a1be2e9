"""Shared caches: opening a remote (options, timeouts) and the local+remote tier.

    open_remote(url)             the store layout (bmbuild.store.FsStore) on a shared folder,
                                 file://, s3://, gs://, ...; `RemoteStore` is that class
    TieredStore(local, remote)   what the executor gets when a remote cache is configured: reads
                                 fall through local -> remote, finished stages are pushed; it
                                 implements the same `Store` protocol as the stores it joins

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

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable

from bmbuild.cache import ActionEntry, warn_stderr
from bmbuild.errors import BmbuildError
from bmbuild.store import (  # noqa: F401  (re-exported: their home was here)
    ATOMIC_PUT_PROTOCOLS, ActionInfo, BoundedFS, FsStore, LocalStore, ObjectInfo, RemoteTimeout, bounded, describe,
    local_view,
)

RemoteStore = FsStore  # the store layout on a remote filesystem: the one implementation
OPTIONS_ENV = "BMBUILD_REMOTE_OPTIONS"
TIMEOUT_ENV = "BMBUILD_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
S3_PROTOCOLS = ("s3", "s3a")


class RemoteUnreachable(BmbuildError):
    """The remote cache cannot be opened, read or written."""


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


class TieredStore:
    """The executor's store when a remote cache is configured: local first, then the remote.

    - get_action: a complete local entry, else the remote's entry, else the local one.
    - get_file: the local object, else the remote one, downloaded, verified, kept locally;
      once all objects of a remote entry are local, the entry is written locally too.
    - put_action: local, then pushed: the missing objects first, the entry last.
    - listing and deleting: the local cache's (what `bmbuild cache` collects remotely, it opens itself).
    A remote error warns once and turns the remote off for the rest of the run (a failed write
    only turns pushing off); the build always continues with the local cache. With `strict`
    (`bmbuild cache pull`), a remote read error raises RemoteUnreachable instead.
    """

    def __init__(self, local: LocalStore, remote: RemoteStore,
                 warn: Callable[[str], None] | None = None, strict: bool = False):
        self.local = local
        self.remote: RemoteStore | None = remote
        self.url = f"{local.url} + {remote.url}"
        self.strict = strict
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
        if self.strict and not writing and self.remote is not None:
            raise RemoteUnreachable(f"remote cache {self.remote.url} cannot be read: {describe(exc)}") from None
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

    def get_file(self, digest: str, dest: Path, link: bool = False) -> bool:
        if self.local.get_file(digest, dest, link):
            return True
        if not self.pull(digest) or not self.local.get_file(digest, dest, link):
            return False
        self._settle()
        return True

    def put_file(self, src: Path, digest: str, link: bool = False) -> None:
        self.local.put_file(src, digest, link)

    def list_objects(self) -> dict[str, ObjectInfo]:
        return self.local.list_objects()

    def list_actions(self, read: bool = True) -> list[ActionInfo]:
        return self.local.list_actions(read)

    def delete_object(self, digest: str) -> None:
        self.local.delete_object(digest)

    def delete_action(self, key: str) -> None:
        self.local.delete_action(key)

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
                source = self.local.object_file(digest)
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
