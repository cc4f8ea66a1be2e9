"""One store protocol (bmbuild.store): the same layout and operations on the local cache, a folder
remote, an object store and the local+remote tier; restores link objects into the build folder
where read-only protects them, and copy otherwise; the cache operations are a library.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import build_outputs, sha256, subprocess_env

from bmbuild.cache import ActionEntry, file_digest
from bmbuild.store import LocalStore, Store, action_name, object_name

# root keeps writing read-only files unless CAP_DAC_OVERRIDE is dropped: then it is an ordinary user
NO_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
               "--bounding-set=-dac_override,-dac_read_search"]


def _folder_remote(tmp_path: Path) -> Any:
    from fsspec.implementations.local import LocalFileSystem

    from bmbuild.remote import RemoteStore

    return RemoteStore(LocalFileSystem(), str(tmp_path / "remote"), "folder remote")


def _memory_remote(tmp_path: Path) -> Any:
    from fsspec.implementations.memory import MemoryFileSystem

    from bmbuild.remote import RemoteStore

    return RemoteStore(MemoryFileSystem(), f"/bmbuild-test-{tmp_path.name}", "memory://")


def _tiered(tmp_path: Path) -> Any:
    from bmbuild.remote import TieredStore

    return TieredStore(LocalStore(tmp_path / "local"), _folder_remote(tmp_path), warn=pytest.fail)


STORES: dict[str, Callable[[Path], Any]] = {
    "local": lambda tmp_path: LocalStore(tmp_path / "local"),
    "folder_remote": _folder_remote,
    "memory_remote": _memory_remote,
    "tiered": _tiered,
}


@pytest.mark.parametrize("kind", sorted(STORES))
def test_every_store_speaks_the_same_protocol(kind, tmp_path):
    store = STORES[kind](tmp_path)
    assert isinstance(store, Store)
    src = tmp_path / "model.onnx"
    src.write_bytes(b"model bytes " * 50)
    digest = file_digest(src)
    entry = ActionEntry(key="ab" * 32, outputs={"model.onnx": digest}, recipe="tiny", stage="trace")

    assert not store.has_object(digest) and store.get_action(entry.key) is None
    store.put_file(src, digest)
    store.put_action(entry)

    assert store.has_object(digest) and store.has_all(entry)
    assert store.get_action(entry.key).outputs == {"model.onnx": digest}
    dest = tmp_path / "restored" / "model.onnx"
    assert store.get_file(digest, dest) and dest.read_bytes() == src.read_bytes()
    assert set(store.list_objects()) == {digest}
    assert [(info.key, info.entry.stage) for info in store.list_actions()] == [(entry.key, "trace")]
    store.delete_action(entry.key)
    store.delete_object(digest)
    assert store.list_objects() == {} and store.list_actions() == []
    if kind == "tiered":  # listing and deleting are the local cache's: the remote still has them
        assert store.has_object(digest) and store.get_action(entry.key) is not None
    else:
        assert not store.has_object(digest) and store.get_action(entry.key) is None


def stored_file(store: Any, tmp_path: Path, data: bytes) -> tuple[Path, str]:
    """tmp_path/x.bin holding `data`, put into `store`: its path and digest."""
    src = tmp_path / "x.bin"
    src.write_bytes(data)
    digest = file_digest(src)
    store.put_file(src, digest)
    return src, digest


@pytest.mark.parametrize("kind", ["local", "folder_remote"])
def test_the_layout_is_the_same_everywhere(kind, tmp_path):
    store = STORES[kind](tmp_path)
    src, digest = stored_file(store, tmp_path, b"x")
    store.put_action(ActionEntry(key="cd" * 32, outputs={"x.bin": digest}))

    root = tmp_path / ("local" if kind == "local" else "remote")
    assert (root / object_name(digest)) == root / "objects" / digest[:2] / digest
    assert sha256(root / object_name(digest)) == digest
    assert json.loads((root / action_name("cd" * 32)).read_text())["outputs"] == {"x.bin": digest}


@pytest.mark.parametrize("kind", ["local", "folder_remote"])
def test_a_corrupt_object_is_never_restored_and_is_dropped(kind, tmp_path):
    store = STORES[kind](tmp_path)
    src, digest = stored_file(store, tmp_path, b"the real bytes")
    stored = tmp_path / ("local" if kind == "local" else "remote") / object_name(digest)
    stored.chmod(0o644)
    stored.write_bytes(b"the fake bytes")  # same size

    dest = tmp_path / "out" / "x.bin"
    assert store.get_file(digest, dest, link=True) is False
    assert not dest.exists() and not store.has_object(digest)


# --- restoring links ------------------------------------------------------------------------------
def _unprivileged() -> list[str]:
    """A command prefix under which read-only files cannot be written (skips where none exists)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    probe = subprocess.run([*NO_OVERRIDE, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {probe.stderr!r}")
    return NO_OVERRIDE


def _run(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, *args], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


def _objects_by_inode(cache: Path) -> dict[int, str]:
    return {p.stat().st_ino: p.name for p in (cache / "objects").rglob("*") if p.is_file()}


def test_restored_outputs_are_links_a_write_to_them_cannot_change_the_cache(workspace, cache_dir, write_recipe,
                                                                           outcomes):
    prefix = _unprivileged()
    write_recipe("tiny")
    done = _run(prefix, "-m", "bmbuild", "run", "recipes/tiny.yaml", "--plain")
    assert done.returncode == 0, done.stdout + done.stderr
    built = build_outputs(workspace, "tiny")
    shutil.rmtree(workspace / "build")

    done = _run(prefix, "-m", "bmbuild", "run", "recipes/tiny.yaml", "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert set(outcomes("tiny").values()) == {"restored"}
    assert build_outputs(workspace, "tiny") == built
    objects = _objects_by_inode(cache_dir)
    restored = [p for p in (workspace / "build" / "tiny").rglob("*")
                if p.is_file() and p.parent.name in ("trace", "compile_fp32") and not p.name.startswith(".")]
    assert restored and all(objects.get(p.stat().st_ino) == sha256(p) for p in restored)  # linked, not copied
    assert all(p.stat().st_mode & 0o222 == 0 for p in restored)

    # a user (or a later stage) writing to a restored output: refused, the cached object stays intact
    target = restored[0]
    write = _run(prefix, "-c", f"open({str(target)!r}, 'ab').write(b'edited')")
    assert write.returncode != 0 and "PermissionError" in write.stderr
    assert all(sha256(p) == name for p in (cache_dir / "objects").rglob("*") if p.is_file() for name in [p.name])
    done = _run(prefix, "-m", "bmbuild", "run", "recipes/tiny.yaml", "--plain")
    assert done.returncode == 0 and set(outcomes("tiny").values()) == {"up-to-date"}, done.stdout + done.stderr


def test_an_executed_output_becomes_the_object_without_a_copy(workspace, cache_dir, write_recipe, outcomes):
    prefix = _unprivileged()
    write_recipe("tiny")
    done = _run(prefix, "-m", "bmbuild", "run", "recipes/tiny.yaml", "--plain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(outcomes("tiny").values()) == {"executed"}
    objects = _objects_by_inode(cache_dir)
    outputs = [p for p in (workspace / "build" / "tiny" / "trace").iterdir() if not p.name.startswith(".")]
    assert outputs and all(objects.get(p.stat().st_ino) == sha256(p) for p in outputs)
    log = workspace / "build" / "tiny" / "logs" / "trace.log"
    assert log.stat().st_ino not in objects  # logs are appended to later: always copied


def test_where_read_only_does_not_stop_writes_restores_copy(tmp_path, monkeypatch):
    """root with CAP_DAC_OVERRIDE writes read-only files: a link would let an edit change the cache."""
    store = LocalStore(tmp_path / "store")
    src = tmp_path / "model.onnx"
    src.write_bytes(b"weights" * 100)
    digest = file_digest(src)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: True)  # as for root: writable whatever the mode
    store.put_file(src, digest, link=True)
    dest = tmp_path / "build" / "model.onnx"

    assert store.get_file(digest, dest, link=True)

    obj = store.object_file(digest)
    assert dest.stat().st_ino != obj.stat().st_ino and src.stat().st_ino != obj.stat().st_ino
    dest.chmod(0o644)
    dest.write_bytes(b"edited by the user")
    assert file_digest(obj) == digest


def test_linking_falls_back_to_a_copy_across_filesystems(tmp_path, monkeypatch):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev or not os.access(shm, os.W_OK):
        pytest.skip("no second filesystem to restore into")
    store = LocalStore(tmp_path / "store")
    src = tmp_path / "model.onnx"
    src.write_bytes(b"weights" * 100)
    digest = file_digest(src)
    store.put_file(src, digest)
    links: list[int] = []
    real_link = os.link

    def link(source: Any, dest: Any, **kwargs: Any) -> None:
        try:
            real_link(source, dest, **kwargs)
        except OSError as exc:
            links.append(exc.errno)
            raise

    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)  # as for an ordinary user
    monkeypatch.setattr(os, "link", link)
    folder = Path(shm / f"bmbuild-test-{os.getpid()}-{tmp_path.name}")
    try:
        dest = folder / "model.onnx"
        assert store.get_file(digest, dest, link=True)
        assert links == [errno.EXDEV]
        assert dest.read_bytes() == src.read_bytes() and dest.stat().st_nlink == 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the cache operations are a library -----------------------------------------------------------
def test_push_pull_verify_and_gc_are_library_calls(tmp_path):
    from bmbuild import cache_ops

    local = LocalStore(tmp_path / "local")
    remote = _folder_remote(tmp_path)
    src, digest = stored_file(local, tmp_path, b"x" * 1000)
    local.put_action(ActionEntry(key="ef" * 32, outputs={"x.bin": digest}))

    pushed = cache_ops.push(local, remote)
    assert (pushed.entries, pushed.objects, pushed.bytes) == (1, 1, 1000)
    fresh = LocalStore(tmp_path / "fresh")
    pulled = cache_ops.pull(fresh, remote)
    assert (pulled.entries, pulled.objects) == (1, 1) and fresh.has_all(fresh.get_action("ef" * 32))
    assert cache_ops.verify(fresh) and cache_ops.verify(fresh).objects == 1
    assert [row.key for row in cache_ops.list_entries(remote)] == ["ef" * 32]
    collected = cache_ops.gc(fresh, max_size=0)
    assert (collected.entries, collected.objects) == (1, 1) and fresh.list_objects() == {}


def test_an_output_linked_to_another_file_is_copied_never_made_read_only(tmp_path, monkeypatch):
    """A stage output that is a symlink to, or another name of, a user's file: linking it into
    the store would make the user's file read-only and part of the cache."""
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)  # as for an ordinary user
    store = LocalStore(tmp_path / "store")
    users = tmp_path / "weights.pt"
    users.write_bytes(b"the user's weights")
    out = tmp_path / "out"
    out.mkdir()
    (out / "by_symlink.pt").symlink_to(users)
    os.link(users, out / "by_hardlink.pt")
    digest = file_digest(users)

    for name in ("by_symlink.pt", "by_hardlink.pt"):
        store.put_file(out / name, digest, link=True)
        store.delete_object(digest)

    assert users.stat().st_mode & 0o200 and users.stat().st_nlink == 2  # still writable, not in the store
    store.put_file(out / "by_symlink.pt", digest, link=True)
    assert store.object_file(digest).stat().st_ino != users.stat().st_ino
