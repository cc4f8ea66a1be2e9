"""Where a build lives: the workspace root, build/ and .bmbuild/ folders, the cache, the lock."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bmbuild.cache import StatCache
from bmbuild.errors import BmbuildError, RecipeError, WorkspaceBusy
from bmbuild.store import LocalStore

if TYPE_CHECKING:
    from bmbuild.remote import RemoteStore, TieredStore

WORKSPACE_FILES = ("bmbuild.yaml", "bmbuild.yml")
BUILD_LOCK = ".bmbuild-lock"  # in the build folder; `clean` keeps it


def default_cache_dir() -> Path:
    """$BMBUILD_CACHE_DIR, else the user cache dir (~/.cache/bmbuild on Linux)."""
    env = os.environ.get("BMBUILD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("bmbuild"))


def find_root(start: Path) -> Path:
    """The nearest folder at or above `start` holding bmbuild.yaml; else `start` itself."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if any((folder / name).is_file() for name in WORKSPACE_FILES):
            return folder
    return start


class ExecutorConfig(BaseModel):
    """bmbuild.yaml `executor:`: where stages that must run are executed (README "Cluster builds")."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "dask"] = Field("local", description="local: this machine (`-j`); dask: a Dask cluster.")
    scheduler: str | None = Field(None, description="The Dask scheduler's address, e.g. tcp://host:8786.")
    resources: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Dask resources a stage requests, by toolchain or stage name, e.g. {tpu-mlir: {tpu-mlir: 1}} "
                    "(the default when workers declare tpu-mlir); {} requests none.")


class WorkspaceConfig(BaseModel):
    """bmbuild.yaml at the workspace root: where builds and caches go, and shared variables."""

    model_config = ConfigDict(extra="forbid")

    build_dir: Path = Field(Path("build"), description="Build outputs, relative to the workspace root.")
    cache_dir: Path | None = Field(None, description="Local cache (default: $BMBUILD_CACHE_DIR or the user cache dir).")
    remote_cache: str | None = Field(None, description="Shared cache: a folder or an fsspec URL (s3://, gs://, ...).")
    remote_cache_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec storage options for the remote cache, e.g. {client_kwargs: {endpoint_url: ...}} "
                    "for an S3-compatible server; $BMBUILD_REMOTE_OPTIONS (JSON) overrides them.")
    remote_cache_timeout: float = Field(
        30.0, gt=0, description="Seconds a remote cache operation may go without an answer; then a build "
                                "warns and goes on with the local cache, `bmbuild cache` exits 2. "
                                "$BMBUILD_REMOTE_TIMEOUT overrides it.")
    jobs: int = Field(1, ge=1, description="Default for `run -j`.")
    vars: dict[str, str] = Field(default_factory=dict, description="${name} variables for recipes, e.g. dataset roots.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig,
                                     description="Where stages run: {kind: local} or {kind: dask, scheduler: ...}.")
    toolchains: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-toolchain settings, e.g. {tpu-mlir: {path: /opt/tpu-mlir-venv/bin}} for an existing installation.")

    @field_validator("build_dir", "cache_dir", "remote_cache", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\0" in value:
            raise ValueError("a path cannot contain a NUL character")
        return value


def load_config(root: Path) -> WorkspaceConfig:
    """The workspace's bmbuild.yaml (defaults when there is none); errors name file and line."""
    for name in WORKSPACE_FILES:
        file = root / name
        if file.is_file():
            from bmbuild.yamlsource import load_yaml

            data, smap = load_yaml(file)
            if not isinstance(data, dict):
                raise RecipeError("a workspace config must be a mapping of keys to values", file, 1)
            try:
                return WorkspaceConfig.model_validate(data)
            except ValidationError as exc:
                from bmbuild.recipe import validation_errors

                raise validation_errors(exc, data, smap, WorkspaceConfig) from None
    return WorkspaceConfig()


@dataclass
class Workspace:
    root: Path
    build_dir: Path
    cache_dir: Path
    config: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    remote_cache: str | None = None

    @classmethod
    def at(cls, root: Path | None = None, build_dir: Path | None = None,
           cache_dir: Path | None = None, remote_cache: str | None = None) -> "Workspace":
        """Command line beats environment beats bmbuild.yaml beats defaults."""
        root = find_root(root or Path.cwd())
        config = load_config(root)
        if remote_cache is None:
            remote_cache = os.environ.get("BMBUILD_REMOTE_CACHE") or None
        if remote_cache is None and config.remote_cache:
            remote_cache = config.remote_cache
            if "://" not in remote_cache and not Path(remote_cache).expanduser().is_absolute():
                remote_cache = str(root / remote_cache)  # a folder named in bmbuild.yaml: from the root
        if cache_dir is None and not os.environ.get("BMBUILD_CACHE_DIR") and config.cache_dir is not None:
            cache_dir = root / config.cache_dir.expanduser()
        return cls(root=root, build_dir=(build_dir or root / config.build_dir).resolve(),
                   cache_dir=(cache_dir or default_cache_dir()).expanduser().resolve(),
                   config=config, remote_cache=remote_cache)

    @property
    def state_dir(self) -> Path:
        return self.root / ".bmbuild"

    def stage_dir(self, recipe: str, stage: str) -> Path:
        return self.build_dir / recipe / stage

    def log_path(self, recipe: str, stage: str) -> Path:
        return self.build_dir / recipe / "logs" / f"{stage}.log"

    def report_path(self, recipe: str) -> Path:
        return self.build_dir / recipe / "report.json"

    def temp_root(self, recipe: str) -> Path:
        return self.build_dir / recipe / ".tmp"

    def new_temp_dir(self, recipe: str, stage: str, create: bool = True) -> Path:
        path = self.temp_root(recipe) / f"{stage}-{uuid.uuid4().hex[:12]}"
        if create:
            path.mkdir(parents=True)
        return path

    def clear_temp(self) -> None:
        """Remove what killed runs left behind (only called while holding the locks: the build
        folder's lock keeps another workspace sharing it from running meanwhile)."""
        if self.build_dir.is_dir():
            for folder in self.build_dir.glob("*/.tmp"):
                shutil.rmtree(folder, ignore_errors=True)

    def store(self) -> "LocalStore | TieredStore":
        """The local store; tiered over the remote cache when one is configured (fsspec is
        imported only then). A remote that cannot be opened is a warning, not an error."""
        local = LocalStore(self.cache_dir)
        if not self.remote_cache:
            return local
        from bmbuild.remote import remote_timeout, tiered

        return tiered(local, self.remote_cache, self.config.remote_cache_options,
                      timeout=remote_timeout(self.config.remote_cache_timeout))

    def open_remote(self) -> "RemoteStore":
        """The remote cache for `bmbuild cache`; raises when none is configured or it cannot be opened."""
        if not self.remote_cache:
            raise BmbuildError("no remote cache: pass --remote-cache URL, set $BMBUILD_REMOTE_CACHE "
                               "or `remote_cache:` in bmbuild.yaml")
        from bmbuild.remote import open_remote, remote_options, remote_timeout

        return open_remote(self.remote_cache, remote_options(self.config.remote_cache_options),
                           remote_timeout(self.config.remote_cache_timeout))

    def stat_cache(self) -> StatCache:
        return StatCache(self.state_dir / "stat.sqlite3")

    @property
    def build_lock_path(self) -> Path:
        """The build folder's lock: two workspaces may pass the same `--build-dir`."""
        return self.build_dir / BUILD_LOCK

    @contextmanager
    def locked(self, wait: bool = True) -> Iterator[None]:
        """Hold the workspace lock and the build folder's: one bmbuild run (or clean) per workspace
        and per build folder at a time. Always taken in this order, so two holders never deadlock."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.build_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BmbuildError(f"cannot create {exc.filename or self.build_dir}: {exc.strerror or exc}") from None
        with _hold(self.state_dir / "lock", f"using the workspace {self.root}", wait), \
                _hold(self.build_lock_path, f"using the build folder {self.build_dir}", wait):
            yield


@contextmanager
def _hold(path: Path, what: str, wait: bool) -> Iterator[None]:
    """Hold the lock file `path`; wait (saying so) or raise WorkspaceBusy when another process has it."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise WorkspaceBusy(f"another bmbuild process is {what} (lock {path})") from None
        print(f"waiting for another bmbuild process {what} ...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
