"""Local state that is broken or lies: the stat DB, bit rot that keeps size and mtime, a build
folder shared by two workspaces.

- A garbage, truncated or wrongly shaped `.bmbuild/stat.sqlite3` is reported once, discarded and
  recreated; rows of the wrong types are misses (issue 8, item 8).
- The stat signature includes ctime, so a byte flipped in place with the mtime set back is seen;
  `bmbuild status --verify` re-hashes every published output, whatever the stat cache says (item 9).
- Two workspaces passing the same `--build-dir` take turns (item 11).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import bmbuild_command, build_outputs, subprocess_env

from bmbuild.cache import StatCache

MANIFEST = ".bmbuild-manifest.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_byte_keeping_size_and_mtime(path: Path, offset: int = -1) -> None:
    """What bit rot looks like from the outside: same size, same mtime, same inode."""
    st = path.stat()
    time.sleep(0.01)  # timestamps are coarse (a few ms): make the write's ctime differ from the last one
    with open(path, "r+b") as handle:
        handle.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def stat_tables(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as db:
        return [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]


# --- the stat cache itself ----------------------------------------------------------------------
def test_stat_cache_notices_a_byte_flipped_with_size_and_mtime_kept(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights-0123456789")
    cache = StatCache(tmp_path / "stat.sqlite3")
    try:
        assert cache.digest(path) == sha256(b"weights-0123456789")
        flip_byte_keeping_size_and_mtime(path)
        assert cache.digest(path) == sha256(path.read_bytes()) != sha256(b"weights-0123456789")
    finally:
        cache.close()


def _valid_db(tmp_path: Path) -> bytes:
    """The bytes of a real stat DB with a few rows in it."""
    folder = tmp_path / "valid"
    folder.mkdir()
    cache = StatCache(folder / "stat.sqlite3")
    for i in range(50):
        (folder / f"f{i}").write_bytes(b"x" * i)
        cache.digest(folder / f"f{i}")
    cache._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.close()
    return (folder / "stat.sqlite3").read_bytes()


def _table_of_the_wrong_shape(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE stat (name TEXT, value BLOB)")  # v1's name, another shape


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "wrong table", "folder"])
def test_a_broken_stat_db_is_discarded_with_one_warning(tmp_path, capsys, damage):
    db_path = tmp_path / "state" / "stat.sqlite3"
    db_path.parent.mkdir()
    if damage == "random bytes":
        db_path.write_bytes(os.urandom(5000))
    elif damage == "truncated":
        db_path.write_bytes(_valid_db(tmp_path)[:6000])
    elif damage == "wrong table":
        _table_of_the_wrong_shape(db_path)
    else:
        (db_path / "sub").mkdir(parents=True)
    path = tmp_path / "f.bin"
    path.write_bytes(b"content")
    capsys.readouterr()

    cache = StatCache(db_path)
    try:
        assert cache.digest(path) == sha256(b"content")
        assert cache.digest(path) == sha256(b"content")
        assert cache.files_hashed == 1  # the recreated DB works as a cache
    finally:
        cache.close()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and str(db_path) in err and "discarded" in err, err
    assert db_path.is_file() and "stat" not in stat_tables(db_path)

    again = StatCache(db_path)  # healthy now: no second warning, the digest is remembered
    try:
        assert again.digest(path) == sha256(b"content") and again.files_hashed == 0
    finally:
        again.close()
    assert capsys.readouterr().err == ""


def test_a_db_broken_while_in_use_is_recreated(tmp_path, capsys):
    db_path = tmp_path / "stat.sqlite3"
    path = tmp_path / "f.bin"
    path.write_bytes(b"content")
    cache = StatCache(db_path)
    try:
        cache._db.execute("DROP TABLE file_stat")  # as if another process had broken it
        assert cache.digest(path) == sha256(b"content")
        assert cache.digest(path) == sha256(b"content")
    finally:
        cache.close()
    assert capsys.readouterr().err.count("warning:") == 1


@pytest.mark.parametrize("row", [{"digest": 42}, {"digest": "not a digest"}, {"digest": None},
                                 {"digest": "A" * 64}, {"size": "abc"}])
def test_stat_rows_of_the_wrong_type_are_misses(tmp_path, row):
    db_path = tmp_path / "stat.sqlite3"
    path = tmp_path / "f.bin"
    path.write_bytes(b"content")
    cache = StatCache(db_path)
    cache.digest(path)
    cache.close()
    with sqlite3.connect(db_path) as db:
        (table,) = stat_tables(db_path)
        column, value = next(iter(row.items()))
        db.execute(f"UPDATE {table} SET {column}=?", (value,))

    cache = StatCache(db_path)
    try:
        assert cache.digest(path) == sha256(b"content")
    finally:
        cache.close()


def test_a_v1_stat_db_is_upgraded_without_a_warning(tmp_path, capsys):
    db_path = tmp_path / "stat.sqlite3"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE stat (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                   " inode INTEGER, digest TEXT)")
    path = tmp_path / "f.bin"
    path.write_bytes(b"content")
    cache = StatCache(db_path)
    try:
        assert cache.digest(path) == sha256(b"content")
    finally:
        cache.close()
    assert capsys.readouterr().err == ""
    assert stat_tables(db_path) == ["file_stat"]


# --- through the command line -------------------------------------------------------------------
def test_a_garbage_stat_db_warns_once_and_the_run_goes_on(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    db_path = workspace / ".bmbuild" / "stat.sqlite3"
    for suffix in ("-wal", "-shm"):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)
    db_path.write_bytes(os.urandom(3000))

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}
    assert err.count("warning:") == 1 and "stat.sqlite3" in err, err

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and "nothing to do" in out and "warning" not in err, out + err


def test_bit_rot_keeping_size_and_mtime_is_restored_by_the_next_run(workspace, write_recipe, run_bmbuild,
                                                                    outcomes):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    expected = build_outputs(workspace, "tiny")
    onnx = workspace / "build" / "tiny" / "compile_fp32" / "tiny.onnx"
    flip_byte_keeping_size_and_mtime(onnx)

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "restored"}
    assert build_outputs(workspace, "tiny") == expected


def _fool_the_stat_cache(db_path: Path, path: Path, digest: str) -> None:
    """Bit rot below the filesystem: the content changed, the remembered signature still matches."""
    st = path.stat()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE file_stat SET size=?, mtime_ns=?, ctime_ns=?, inode=?, digest=? WHERE path=?",
                   (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest, str(path.resolve())))
        assert db.total_changes == 1


def test_status_verify_rehashes_every_output_and_the_next_run_restores(workspace, write_recipe, run_bmbuild,
                                                                      outcomes):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    expected = build_outputs(workspace, "tiny")
    code, out, err = run_bmbuild("status", recipe, "--verify")
    assert code == 0, out + err
    published = sum(len(json.loads((workspace / "build" / "tiny" / stage / MANIFEST).read_text())["outputs"])
                    for stage in ("trace", "compile_fp32"))
    assert f"verified {published} published output(s): 0 corrupt" in out, out

    onnx = workspace / "build" / "tiny" / "compile_fp32" / "tiny.onnx"
    good = sha256(onnx.read_bytes())
    flip_byte_keeping_size_and_mtime(onnx, offset=10)
    bad = sha256(onnx.read_bytes())
    _fool_the_stat_cache(workspace / ".bmbuild" / "stat.sqlite3", onnx, good)
    code, out, err = run_bmbuild("status", recipe)
    assert code == 0 and "tiny:compile_fp32" in out and "stale" not in out, out  # the stat cache is fooled

    code, out, err = run_bmbuild("status", recipe, "--verify")
    assert code == 1, out + err
    assert f"corrupt: {onnx}: expected {good}, found {bad}" in out, out
    assert "1 corrupt" in out and "stale" in out

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "restored"}
    assert build_outputs(workspace, "tiny") == expected
    assert run_bmbuild("status", recipe, "--verify")[0] == 0


def test_status_verify_reports_a_missing_output(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    pt = workspace / "build" / "tiny" / "trace" / "tiny.pt"
    digest = sha256(pt.read_bytes())
    pt.unlink()
    code, out, err = run_bmbuild("status", recipe, "--verify")
    assert code == 1, out + err
    assert f"corrupt: {pt}: expected {digest}, found nothing (missing)" in out, out


# --- two workspaces, one build folder -----------------------------------------------------------
def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workspaces_sharing_a_build_dir_take_turns(workspace, write_recipe, tmp_path):
    marker, release = tmp_path / "started", tmp_path / "release"
    write_recipe("tiny", source={"kwargs": {"marker": str(marker), "wait_for": str(release)}})
    other = tmp_path / "other"
    (other / "recipes").mkdir(parents=True)
    for name in ("tiny.yaml", "tiny_models.py"):
        (other / "recipes" / name).write_bytes((workspace / "recipes" / name).read_bytes())
    shared = tmp_path / "shared-build"
    logs = {name: (tmp_path / f"{name}.out", tmp_path / f"{name}.err") for name in ("first", "second")}

    def start(root: Path, name: str) -> subprocess.Popen:
        out, err = logs[name]
        return subprocess.Popen(bmbuild_command("run", "recipes/tiny.yaml", "--plain", "--build-dir", shared),
                                cwd=root, env=subprocess_env(), stdout=open(out, "w"), stderr=open(err, "w"))

    first = start(workspace, "first")
    second = None
    try:
        _wait_for(marker.exists, 60, "the first run's trace stage to start", first)
        temps = list((shared / "tiny" / ".tmp").iterdir())
        assert temps  # the first run's private folders
        second = start(other, "second")
        _wait_for(lambda: "waiting for another bmbuild" in logs["second"][1].read_text()
                  or not all(p.exists() for p in temps), 60, "the second run to wait", second)
        assert all(p.exists() for p in temps)  # not cleared by the second run
        assert second.poll() is None  # still waiting while the first holds the build folder
        release.write_text("go")
        assert first.wait(timeout=120) == 0, logs["first"][0].read_text() + logs["first"][1].read_text()
        assert second.wait(timeout=120) == 0, logs["second"][0].read_text() + logs["second"][1].read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "2 executed" in logs["first"][0].read_text()
    assert f"waiting for another bmbuild process using the build folder {shared}" in logs["second"][1].read_text()
    assert (shared / "tiny" / "compile_fp32" / MANIFEST).is_file()
