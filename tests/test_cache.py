"""bmbuild/cache.py: the action key (pinned), the stat cache, the content-addressed store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


from bmbuild.cache import ActionEntry, LocalStore, StatCache, action_key, file_digest, json_bytes, tree_digest

from conftest import build_outputs

COMPONENTS = {
    "stage": "compile_fp32",
    "stage_version": "1",
    "toolchain": {"name": "reference", "versions": {"onnx": "1.17.0", "onnxruntime": "1.20.1", "torch": "2.5.1"}},
    "params": {"opt": 1, "dyn": False, "shapes": [[1, 3, 8, 8]], "batch_sizes": [1]},
    "inputs": {"models/net.py": "ab" * 32},
    "upstream": {"trace": "cd" * 32},
    "env": {"BMBUILD_KEY_SALT": None},
}


def test_action_key_is_pinned():
    # If this fails the key changed: every cache entry ever written is invalidated. Bump
    # KEY_VERSION on purpose and update the literal, never by accident.
    assert action_key(COMPONENTS) == "e04b79af6a2e34cea98b11e4b5c3c49ff8cce5695372f6297f5f7e7b99f19108"


def test_action_key_ignores_dict_order_and_sees_every_component():
    reordered = dict(reversed(list(COMPONENTS.items())))
    reordered["params"] = dict(reversed(list(COMPONENTS["params"].items())))
    assert action_key(reordered) == action_key(COMPONENTS)
    for section, value in [("stage", "trace"), ("stage_version", "2"), ("params", {"opt": 2}),
                           ("inputs", {"models/net.py": "ef" * 32}), ("upstream", {}),
                           ("env", {"BMBUILD_KEY_SALT": "x"}), ("toolchain", {"name": "nntc"})]:
        assert action_key({**COMPONENTS, section: value}) != action_key(COMPONENTS), section


def test_json_bytes_is_canonical():
    assert json_bytes({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_tree_digest_depends_on_names_and_contents():
    base = tree_digest({"a.onnx": "1" * 64, "b.onnx": "2" * 64})
    assert tree_digest({"b.onnx": "2" * 64, "a.onnx": "1" * 64}) == base
    assert tree_digest({"a.onnx": "2" * 64, "b.onnx": "1" * 64}) != base
    assert tree_digest({"c.onnx": "1" * 64, "b.onnx": "2" * 64}) != base


def test_file_digest_is_sha256(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 * (1 << 20) + 7)  # several chunks
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()


def test_stat_cache_does_not_reread_unchanged_files(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("x = 1\n")
    cache = StatCache(tmp_path / "stat.sqlite3")
    try:
        first = cache.digest(path)
        assert first == hashlib.sha256(b"x = 1\n").hexdigest()
        assert cache.files_hashed == 1
        assert cache.digest(path) == first
        assert cache.files_hashed == 1  # unchanged: not read again

        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, content unchanged
        assert cache.digest(path) == first
        assert cache.files_hashed == 2  # the signature changed, so it was read once more ...
        assert cache.digest(path) == first
        assert cache.files_hashed == 2  # ... and remembered

        path.write_text("x = 2\n")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
        assert cache.digest(path) == hashlib.sha256(b"x = 2\n").hexdigest()
        assert cache.files_hashed == 3
    finally:
        cache.close()


def test_stat_cache_persists_between_instances(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    first = StatCache(tmp_path / "stat.sqlite3")
    digest = first.digest(path)
    first.close()
    second = StatCache(tmp_path / "stat.sqlite3")
    try:
        assert second.digest(path) == digest
        assert second.files_hashed == 0
    finally:
        second.close()


def test_stat_cache_sees_a_replaced_file_with_the_same_size_and_mtime(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"aaaa")
    st = path.stat()
    cache = StatCache(tmp_path / "stat.sqlite3")
    try:
        assert cache.digest(path) == hashlib.sha256(b"aaaa").hexdigest()
        replacement = tmp_path / "g.bin"
        replacement.write_bytes(b"bbbb")
        os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(replacement, path)  # new inode, same size and mtime
        assert cache.digest(path) == hashlib.sha256(b"bbbb").hexdigest()
    finally:
        cache.close()


def _stored(tmp_path: Path, data: bytes) -> tuple[LocalStore, str]:
    store = LocalStore(tmp_path / "store")
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    digest = file_digest(src)
    store.put_file(src, digest)
    return store, digest


def test_store_roundtrip(tmp_path):
    store, digest = _stored(tmp_path, b"model bytes")
    assert store.has_object(digest)
    dest = tmp_path / "out" / "m.onnx"
    assert store.get_file(digest, dest)
    assert dest.read_bytes() == b"model bytes"
    assert not store.get_file("0" * 64, tmp_path / "missing")


def test_store_drops_a_corrupted_object(tmp_path):
    store, digest = _stored(tmp_path, b"model bytes")
    obj = store.root / "objects" / digest[:2] / digest
    obj.chmod(0o644)
    obj.write_bytes(b"model bytez")  # same size, other content

    dest = tmp_path / "out" / "m.onnx"
    assert store.get_file(digest, dest) is False
    assert not dest.exists()
    assert not obj.exists()
    assert not store.has_object(digest)


def test_store_put_repairs_a_corrupted_object_of_the_same_size(tmp_path):
    store, digest = _stored(tmp_path, b"model bytes")
    obj = store.root / "objects" / digest[:2] / digest
    obj.chmod(0o644)
    obj.write_bytes(b"model bytez")

    store.put_file(tmp_path / "src.bin", digest)  # the stage ran again and stores its output

    assert store.get_file(digest, tmp_path / "out.bin"), \
        "put_file skipped a corrupt object because its size matched"


def test_store_put_rejects_a_source_that_does_not_match_its_digest(tmp_path):
    store = LocalStore(tmp_path / "store")
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    try:
        store.put_file(src, "0" * 64)
    except OSError:
        pass
    else:
        raise AssertionError("put_file accepted content under the wrong digest")
    assert not store.has_object("0" * 64)
    assert not any((store.root / "tmp").iterdir())


def test_action_entries_roundtrip_and_bad_entries_are_misses(tmp_path):
    store, digest = _stored(tmp_path, b"x")
    entry = ActionEntry(key="ab" * 32, outputs={"m.onnx": digest}, summary="s", metrics={"cos": 1.0})
    store.put_action(entry)
    loaded = store.get_action(entry.key)
    assert loaded is not None and loaded.outputs == {"m.onnx": digest} and loaded.metrics == {"cos": 1.0}
    assert store.has_all(loaded)
    assert store.get_action("cd" * 32) is None

    path = store.root / "actions" / entry.key[:2] / f"{entry.key}.json"
    path.write_text("{not json")
    assert store.get_action(entry.key) is None


def _objects(cache: Path) -> list[Path]:
    return [p for p in (cache / "objects").rglob("*") if p.is_file()]


def _corrupt_all(cache: Path) -> int:
    objects = _objects(cache)
    for obj in objects:
        obj.chmod(0o644)
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different content
        obj.write_bytes(bytes(data))
    return len(objects)


def test_run_with_a_corrupted_cache_reexecutes(workspace, cache_dir, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    original = build_outputs(workspace, "tiny")
    assert _corrupt_all(cache_dir) >= 5  # 3 outputs + 2 logs
    shutil.rmtree(workspace / "build")

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "executed", "compile_fp32": "executed"}
    outputs = build_outputs(workspace, "tiny")
    assert set(outputs) == set(original)
    # whatever was published matches its manifest (no corrupt byte made it into build/)
    for stage in ("trace", "compile_fp32"):
        manifest = json.loads((workspace / "build" / "tiny" / stage / ".bmbuild-manifest.json").read_text())
        for rel, digest in manifest["outputs"].items():
            assert outputs[f"{stage}/{rel}"] == digest


def test_corrupted_cache_heals_after_reexecution(workspace, cache_dir, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    _corrupt_all(cache_dir)
    shutil.rmtree(workspace / "build")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0  # re-executes (see above)
    shutil.rmtree(workspace / "build")

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "restored", "compile_fp32": "restored"}
