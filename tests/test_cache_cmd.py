"""`bmbuild cache push|pull|ls|gc|verify` on the local cache and a shared-folder remote.

The tiny recipe is built once per module; each test gets a copy of that local cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from conftest import BASE_RECIPE, TINY_MODELS

STAGES = {"trace", "compile_fp32"}


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local cache after one build of the tiny recipe (2 entries, 5 objects)."""
    from bmbuild.cli import main

    base = tmp_path_factory.mktemp("built")
    root = base / "ws"
    (root / "recipes").mkdir(parents=True)
    shutil.copyfile(TINY_MODELS, root / "recipes" / "tiny_models.py")
    (root / "recipes" / "tiny.yaml").write_text(yaml.safe_dump({"name": "tiny", **BASE_RECIPE}, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BMBUILD_CACHE_DIR", str(base / "cache"))
        patch.chdir(root)
        assert main(["run", "recipes/tiny.yaml", "--plain"]) == 0
    return base / "cache"


@pytest.fixture
def cache(workspace: Path, cache_dir: Path, built_cache: Path, write_recipe) -> Path:
    """This test's local cache: a copy of the built one; `recipes/tiny.yaml` is in the workspace."""
    shutil.copytree(built_cache, cache_dir)
    write_recipe("tiny")
    return cache_dir


def entries(cache: Path) -> dict[str, dict]:
    """stage -> entry JSON."""
    found = {}
    for path in (cache / "actions").rglob("*.json"):
        data = json.loads(path.read_text())
        found[data["stage"]] = {**data, "path": path}
    return found


def objects(cache: Path) -> dict[str, Path]:
    return {p.name: p for p in (cache / "objects").rglob("*") if p.is_file()}


def digests(entry: dict) -> set[str]:
    return set(entry["outputs"].values()) | ({entry["log_digest"]} if entry.get("log_digest") else set())


def ls_json(run_bmbuild, *args) -> list[dict]:
    code, out, err = run_bmbuild("cache", "ls", "--json", *args)
    assert code == 0, out + err
    return json.loads(out)["entries"]


def test_ls_lists_entries_with_recipe_stage_size_and_age(cache, run_bmbuild):
    code, out, err = run_bmbuild("cache", "ls")

    assert code == 0, out + err
    rows = [line.split() for line in out.splitlines()[1:-1]]
    assert sorted((row[1], row[2]) for row in rows) == [("tiny", "compile_fp32"), ("tiny", "trace")]
    assert "2 entries" in out.splitlines()[-1]
    listed = ls_json(run_bmbuild)
    assert {row["stage"] for row in listed} == STAGES
    assert all(row["complete"] and row["size"] > 0 and row["recipe"] == "tiny" for row in listed)
    assert {row["key"] for row in listed} == {e["key"] for e in entries(cache).values()}


def test_verify_reports_and_deletes_a_corrupt_object(cache, run_bmbuild):
    digest, path = sorted(objects(cache).items())[0]
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))

    code, out, err = run_bmbuild("cache", "verify", "--keep")
    assert code == 1, out + err
    assert f"corrupt object {digest} (kept)" in out and path.exists()

    code, out, err = run_bmbuild("cache", "verify")
    assert code == 1, out + err
    assert f"corrupt object {digest} (deleted)" in out
    assert not path.exists()

    code, out, err = run_bmbuild("cache", "verify")
    assert code == 0, out + err
    assert "0 corrupt" in out and "1 entry missing objects" in out


def test_verify_deletes_an_unreadable_entry(cache, run_bmbuild):
    path = entries(cache)["trace"]["path"]
    path.write_text("{not json")

    code, out, err = run_bmbuild("cache", "verify")

    assert code == 1, out + err
    assert "unreadable entry" in out
    assert not path.exists()


def test_gc_max_size_zero_empties_the_cache(cache, run_bmbuild):
    code, out, err = run_bmbuild("cache", "gc", "--max-size", "0", "--dry-run")
    assert code == 0, out + err
    assert "would remove 2 entries and 5 objects" in out
    assert len(objects(cache)) == 5

    code, out, err = run_bmbuild("cache", "gc", "--max-size", "0")

    assert code == 0, out + err
    assert "removed 2 entries and 5 objects" in out
    assert entries(cache) == {} and objects(cache) == {}


def test_gc_max_age_drops_old_entries_and_only_their_objects(cache, run_bmbuild):
    found = entries(cache)
    old = time.time() - 10 * 86400
    os.utime(found["trace"]["path"], (old, old))

    code, out, err = run_bmbuild("cache", "gc", "--max-age", "5")

    assert code == 0, out + err
    assert set(entries(cache)) == {"compile_fp32"}
    remaining = set(objects(cache))
    assert remaining == digests(found["compile_fp32"])
    assert not digests(found["trace"]) & remaining


def test_gc_max_size_keeps_the_most_recently_used(cache, run_bmbuild):
    found = entries(cache)
    old = time.time() - 3600
    os.utime(found["trace"]["path"], (old, old))
    size = {row["stage"]: row["size"] for row in ls_json(run_bmbuild)}

    code, out, err = run_bmbuild("cache", "gc", "--max-size", str(size["compile_fp32"]))

    assert code == 0, out + err
    assert set(entries(cache)) == {"compile_fp32"}
    assert set(objects(cache)) == digests(found["compile_fp32"])


def test_a_restore_marks_the_entry_as_used(cache, run_bmbuild, outcomes):
    found = entries(cache)
    old = time.time() - 10 * 86400
    for entry in found.values():
        os.utime(entry["path"], (old, old))

    assert run_bmbuild("run", "recipes/tiny.yaml", "--plain")[0] == 0
    assert outcomes("tiny") == {"trace": "restored", "compile_fp32": "restored"}

    code, out, err = run_bmbuild("cache", "gc", "--max-age", "1")
    assert code == 0, out + err
    assert set(entries(cache)) == STAGES


def test_gc_keeps_young_unreferenced_objects_and_removes_old_ones(cache, run_bmbuild):
    def orphan(content: bytes, age: float) -> Path:
        digest = hashlib.sha256(content).hexdigest()
        path = cache / "objects" / digest[:2] / digest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    young = orphan(b"written by a build that has not written its entry yet", 60)
    old = orphan(b"left by a build that died long ago", 3 * 3600)
    stale_temp = cache / "tmp" / "tmpabc123"
    stale_temp.write_bytes(b"half")
    os.utime(stale_temp, (time.time() - 3 * 3600,) * 2)

    code, out, err = run_bmbuild("cache", "gc")

    assert code == 0, out + err
    assert young.exists() and not old.exists() and not stale_temp.exists()
    assert set(entries(cache)) == STAGES and len(objects(cache)) == 6


def test_push_then_pull_everything_into_a_fresh_cache(tmp_path, monkeypatch, cache, run_bmbuild, outcomes):
    remote = tmp_path / "shared"
    code, out, err = run_bmbuild("cache", "push", "--remote-cache", remote)
    assert code == 0, out + err
    assert "pushed 2 entries and 5 objects" in out
    code, out, err = run_bmbuild("cache", "push", "--remote-cache", remote)
    assert code == 0, out + err
    assert "pushed 0 entries and 0 objects" in out and "2 already there" in out

    fresh = tmp_path / "fresh-cache"
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(fresh))
    code, out, err = run_bmbuild("cache", "pull", "--remote-cache", remote)
    assert code == 0, out + err
    assert "pulled 2 entries and 5 objects" in out
    assert objects(fresh).keys() == objects(cache).keys()

    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain")  # offline: no remote
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "restored", "compile_fp32": "restored"}


def test_pull_by_recipe_pulls_only_its_current_entries(tmp_path, monkeypatch, cache, run_bmbuild):
    from bmbuild.cache import ActionEntry, LocalStore, file_digest

    other = tmp_path / "other.bin"
    other.write_bytes(b"another recipe's output")
    store = LocalStore(cache)
    store.put_file(other, file_digest(other))
    store.put_action(ActionEntry(key="ab" * 32, outputs={"other.bin": file_digest(other)},
                                 recipe="other", stage="trace"))
    remote = tmp_path / "shared"
    assert run_bmbuild("cache", "push", "--remote-cache", remote)[0] == 0

    fresh = tmp_path / "fresh-cache"
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(fresh))
    code, out, err = run_bmbuild("cache", "pull", "recipes/tiny.yaml", "--remote-cache", remote)

    assert code == 0, out + err
    assert "pulled 2 entries" in out
    assert set(entries(fresh)) == STAGES
    code, out, err = run_bmbuild("cache", "pull", "--remote-cache", remote)
    assert code == 0, out + err
    assert "pulled 1 entry" in out and "2 already there" in out


def test_pull_never_stores_a_corrupt_remote_object(tmp_path, monkeypatch, cache, run_bmbuild):
    remote = tmp_path / "shared"
    assert run_bmbuild("cache", "push", "--remote-cache", remote)[0] == 0
    trace = entries(cache)["trace"]
    bad = sorted(trace["outputs"].values())[0]
    (remote / "objects" / bad[:2] / bad).write_bytes(b"truncated")

    fresh = tmp_path / "fresh-cache"
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(fresh))
    code, out, err = run_bmbuild("cache", "pull", "--remote-cache", remote)

    assert code == 0, out + err
    assert f"corrupt object {bad}" in out and "1 entry skipped" in out
    assert set(entries(fresh)) == {"compile_fp32"}
    assert bad not in objects(fresh)
    assert not any((fresh / "tmp").iterdir())


def test_push_and_pull_need_a_remote(cache, run_bmbuild):
    for command in ("push", "pull"):
        code, out, err = run_bmbuild("cache", command)
        assert code == 2
        assert "no remote cache" in err


@pytest.mark.parametrize("text, size", [("0", 0), ("2048", 2048), ("500M", 500 * 10**6), ("1.5G", 1_500_000_000),
                                        ("2GiB", 2 * 2**30), ("10kb", 10_000)])
def test_parse_size(text, size):
    from bmbuild.cache_cmd import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "5X", "-1"])
def test_parse_size_rejects_nonsense(text):
    from bmbuild.cache_cmd import parse_size

    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)
