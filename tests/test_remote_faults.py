"""Remote caches that lie or hang (issue 8, items 10 and 12).

- A remote object of the right size but the wrong content is replaced by `cache push` and by the
  push after a stage: both compare digests, not sizes.
- A remote that accepts connections and never answers is given up after the configured timeout:
  a build warns once and goes on with the local cache, `cache push|pull` exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import run_subprocess

from bmbuild.cache import ActionEntry, LocalStore, file_digest
from bmbuild.errors import BmbuildError
from bmbuild.remote import RemoteStore, RemoteTimeout, RemoteUnreachable, TieredStore, local_view, open_remote


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rot_keeping_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def remote_objects(remote: Path) -> dict[str, Path]:
    return {path.name: path for path in (remote / "objects").rglob("*") if path.is_file()}


# --- same-size corruption is repaired by pushes ---------------------------------------------------
def test_cache_push_replaces_a_same_size_corrupt_remote_object(workspace, write_recipe, run_bmbuild, tmp_path):
    remote = tmp_path / "remote"
    recipe = write_recipe("tiny")
    code, out, err = run_bmbuild("run", recipe, "--plain", "--remote-cache", remote)
    assert code == 0, out + err
    objects = remote_objects(remote)
    digest, path = sorted(objects.items())[0]
    size = path.stat().st_size
    rot_keeping_size(path)
    assert path.stat().st_size == size and sha256(path.read_bytes()) != digest

    code, out, err = run_bmbuild("cache", "push", "--remote-cache", remote)

    assert code == 0, out + err
    assert sha256(path.read_bytes()) == digest
    assert "1 object" in out  # only the corrupt one went up again
    assert all(sha256(p.read_bytes()) == name for name, p in remote_objects(remote).items())
    code, out, err = run_bmbuild("cache", "push", "--remote-cache", remote)  # nothing left to repair
    assert code == 0 and "0 objects" in out, out + err


def test_the_push_after_a_stage_replaces_a_same_size_corrupt_remote_object(tmp_path):
    local = LocalStore(tmp_path / "local")
    remote = local_view(tmp_path / "remote")
    src = tmp_path / "model.onnx"
    src.write_bytes(b"the model bytes " * 100)
    digest = file_digest(src)
    local.put_file(src, digest)
    stored = Path(remote.object_path(digest))
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"x" * src.stat().st_size)  # same size, wrong content: left by a bad upload
    entry = ActionEntry(key="a" * 64, outputs={"model.onnx": digest})
    warnings: list[str] = []

    assert TieredStore(local, remote, warnings.append).push(entry)

    assert file_digest(stored) == digest
    assert remote.get_action(entry.key) is not None and warnings == []


# --- a remote that never answers ------------------------------------------------------------------
class SilentFS:
    """An fsspec-like filesystem whose calls block until released, like a server that never answers."""

    protocol = "silent"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        def hang(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.release.wait()
            raise FileNotFoundError(args[0] if args else name)
        return hang


def test_every_remote_operation_is_bounded_by_the_timeout(tmp_path):
    fs = SilentFS()
    remote = RemoteStore(fs, "/cache", "silent://cache", timeout=0.2)
    warnings: list[str] = []
    store = TieredStore(LocalStore(tmp_path / "local"), remote, warnings.append)
    try:
        with pytest.raises(RemoteTimeout, match="no answer within 0.2s"):
            remote.get_action("a" * 64)
        with pytest.raises(RemoteUnreachable, match="cannot be read: RemoteTimeout: no answer"):
            remote.probe()
        with pytest.raises(RemoteTimeout):
            remote.hash_object("b" * 64)
        with pytest.raises(RemoteTimeout):
            remote.fetch_object("b" * 64, tmp_path / "dest")
        with pytest.raises(RemoteTimeout):
            remote.put_object(tmp_path / "dest", "b" * 64)

        assert store.get_action("a" * 64) is None  # the build goes on with the local cache ...
        assert store.get_action("c" * 64) is None
        assert not store.has_object("d" * 64)
        assert len(warnings) == 1 and "unreachable" in warnings[0] and "no answer" in warnings[0]
        calls = fs.calls
        assert store.get_action("e" * 64) is None and fs.calls == calls  # ... without asking again
    finally:
        fs.release.set()


def test_remote_timeout_comes_from_the_environment_or_bmbuild_yaml(workspace, monkeypatch):
    from bmbuild.remote import remote_timeout
    from bmbuild.workspace import Workspace

    (workspace / "bmbuild.yaml").write_text("remote_cache_timeout: 7.5\n")
    monkeypatch.delenv("BMBUILD_REMOTE_TIMEOUT", raising=False)
    config = Workspace.at().config
    assert remote_timeout(config.remote_cache_timeout) == 7.5
    monkeypatch.setenv("BMBUILD_REMOTE_TIMEOUT", "2")
    assert remote_timeout(config.remote_cache_timeout) == 2.0
    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv("BMBUILD_REMOTE_TIMEOUT", bad)
        with pytest.raises(BmbuildError, match="BMBUILD_REMOTE_TIMEOUT must be a positive number"):
            remote_timeout(config.remote_cache_timeout)

    pytest.importorskip("s3fs")
    store = open_remote("s3://bucket/cache", {"config_kwargs": {"read_timeout": 9}}, timeout=3)
    config_kwargs = store.fs.config_kwargs  # the user's read timeout wins, the rest is bounded
    assert config_kwargs["read_timeout"] == 9 and config_kwargs["connect_timeout"] == 3
    assert config_kwargs["retries"] == {"max_attempts": 1} and store.fs.retries <= 2


@pytest.fixture
def silent_endpoint() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server that accepts connections and never answers; yields its URL and the connections."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            held.append(conn)  # never read, never answered, kept open

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", held
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def test_an_s3_endpoint_that_never_answers_warns_once_and_cache_commands_exit_2(
        workspace, write_recipe, monkeypatch, silent_endpoint):
    pytest.importorskip("s3fs")
    endpoint, held = silent_endpoint
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                        "BMBUILD_REMOTE_TIMEOUT": "2",
                        "BMBUILD_REMOTE_OPTIONS": json.dumps({"client_kwargs": {"endpoint_url": endpoint}})}.items():
        monkeypatch.setenv(name, value)
    recipe = write_recipe("tiny")
    url = "s3://silent/cache"

    done = run_subprocess("run", recipe, "--plain", "--remote-cache", url, cwd=workspace, timeout=180)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 executed" in done.stdout
    # on a loaded machine opening the filesystem may already take the whole timeout: either way one warning
    assert done.stderr.count("warning:") == 1, done.stderr
    assert "unreachable" in done.stderr or "cannot be opened" in done.stderr, done.stderr
    assert "no answer within 2s" in done.stderr
    # it did connect (the server accepted and stayed silent), unless opening the filesystem (importing
    # s3fs) already took the whole timeout on a loaded machine
    assert held or "cannot be opened" in done.stderr, done.stderr
    for command in ("pull", "push"):
        done = run_subprocess("cache", command, "--remote-cache", url, cwd=workspace, timeout=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"remote cache {url} cannot be" in done.stderr and "no answer within 2s" in done.stderr
        assert "Traceback" not in done.stderr
