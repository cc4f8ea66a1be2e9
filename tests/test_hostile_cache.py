"""Hostile or broken state read back from a cache, a remote, a manifest or the doit DB.

A poisoned entry may name absolute or `..` paths; it must never make bmbuild create, overwrite or
delete a file outside its own folders. Valid JSON of the wrong shape, a garbage DB or an object
replaced by a folder must not crash every later run. Either way: one warning, the bad state is
ignored (or rebuilt) and the stage simply runs. Outcomes come from report.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from bmbuild.cache import ActionEntry, LocalStore, file_digest

from conftest import build_outputs
from test_remote_cache import fresh_clone, s3, s3_endpoint  # noqa: F401  (fixtures)

UP_TO_DATE = {"trace": "up-to-date", "compile_fp32": "up-to-date"}
RESTORED = {"trace": "restored", "compile_fp32": "restored"}
# outside the stage folder: 5 levels up from build/tiny/.tmp/<stage-temp> is the test's tmp_path
ESCAPE_UP = "../" * 5


class Targets:
    """Files a poisoned entry aims at, outside every workspace and cache of the test."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path
        self.victim = tmp_path / "victim.txt"
        self.victim.write_text("precious, must survive")
        self.escape = tmp_path / "escaped.txt"

    def assert_untouched(self) -> None:
        assert self.victim.read_text() == "precious, must survive", "a cache entry deleted or changed a victim"
        assert not self.escape.exists(), "a cache entry created a file outside the workspace"
        assert not any(p.name.startswith("escaped") for p in self.root.rglob("*")), \
            "a cache entry created a file under an escaping name"


def _first_output(entry: dict[str, Any]) -> tuple[str, str]:
    return next(iter(sorted(entry["outputs"].items())))


def _with_outputs(entry: dict[str, Any], outputs: Any) -> dict[str, Any]:
    return {**entry, "outputs": outputs}


def _rename_first(entry: dict[str, Any], name: str) -> dict[str, Any]:
    rel, digest = _first_output(entry)
    outputs = {k: v for k, v in entry["outputs"].items() if k != rel}
    return _with_outputs(entry, {**outputs, name: digest})


def _redigest_first(entry: dict[str, Any], digest: Any) -> dict[str, Any]:
    rel, _ = _first_output(entry)
    return _with_outputs(entry, {**entry["outputs"], rel: digest})


# name -> how to poison an entry (its JSON, the targets); every one of these fooled or crashed bmbuild
POISONS: dict[str, Callable[[dict[str, Any], Targets], Any]] = {
    "absolute_digest": lambda e, t: _redigest_first(e, str(t.victim)),
    "relative_digest": lambda e, t: _redigest_first(e, "../victim.txt"),
    "absolute_log_digest": lambda e, t: {**e, "log_digest": str(t.victim)},
    "dotdot_output": lambda e, t: _rename_first(e, ESCAPE_UP + "escaped.txt"),
    "inner_dotdot_output": lambda e, t: _rename_first(e, "sub/../" + ESCAPE_UP + "escaped.txt"),
    "absolute_output": lambda e, t: _rename_first(e, str(t.escape)),
    "nul_output": lambda e, t: _rename_first(e, "escaped\x00.pt"),
    "backslash_output": lambda e, t: _rename_first(e, "..\\..\\escaped.txt"),
    "manifest_output": lambda e, t: _rename_first(e, ".bmbuild-manifest.json"),
    "nested_under_a_file": lambda e, t: _with_outputs(e, {**e["outputs"],
                                                          _first_output(e)[0] + "/inner": _first_output(e)[1]}),
    "outputs_list": lambda e, t: _with_outputs(e, []),
    "outputs_null": lambda e, t: _with_outputs(e, None),
    "outputs_empty": lambda e, t: _with_outputs(e, {}),
    "output_digest_int": lambda e, t: _redigest_first(e, 1),
    "metrics_str": lambda e, t: {**e, "metrics": "x"},
    "seconds_str": lambda e, t: {**e, "seconds": "x"},
    "terminal_escape_in_summary": lambda e, t: {**e, "summary": "ok\x1b]0;pwned\x07\x1b[2J"},
    "key_of_another_action": lambda e, t: {**e, "key": "0" * 64},
    "a_list": lambda e, t: [e],
}
REMOTE_POISONS = ("absolute_digest", "relative_digest", "dotdot_output", "absolute_output", "nul_output",
                  "outputs_list", "key_of_another_action")


# --- helpers ------------------------------------------------------------------------------
def entry_file(store_root: Path, stage: str) -> Path:
    """The action entry file of `stage` in a local cache or folder remote."""
    for path in (store_root / "actions").rglob("*.json"):
        if json.loads(path.read_text()).get("stage") == stage:
            return path
    raise AssertionError(f"no entry for {stage} in {store_root}")


def poison(path: Path, name: str, targets: Targets) -> None:
    path.chmod(0o644)
    path.write_text(json.dumps(POISONS[name](json.loads(path.read_text()), targets)))


def outcomes_of(root: Path | None = None) -> dict[str, str]:
    report = json.loads(((root or Path.cwd()) / "build" / "tiny" / "report.json").read_text())
    return {stage: data["outcome"] for stage, data in report["stages"].items()}


def assert_one_warning(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], err
    assert "Traceback" not in err


@pytest.fixture
def built(workspace: Path, write_recipe, run_bmbuild) -> Path:
    recipe = write_recipe("tiny")
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    return recipe


@pytest.fixture
def targets(tmp_path: Path) -> Targets:
    return Targets(tmp_path)


# --- 1: a poisoned entry never escapes ----------------------------------------------------
@pytest.mark.parametrize("name", sorted(POISONS))
def test_a_poisoned_local_entry_is_ignored_and_the_stage_runs(name, workspace, cache_dir, built, targets,
                                                              run_bmbuild):
    expected = build_outputs(workspace, "tiny")
    poison(entry_file(cache_dir, "compile_fp32"), name, targets)
    shutil.rmtree(workspace / "build")

    code, out, err = run_bmbuild("run", built, "--plain")

    targets.assert_untouched()
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "executed"}
    assert build_outputs(workspace, "tiny") == expected
    assert_one_warning(err, "local cache", "ignored")
    # the run replaced the bad entry: from scratch, everything comes from the cache again
    shutil.rmtree(workspace / "build")
    code, out, err = run_bmbuild("run", built, "--plain")
    assert code == 0, out + err
    assert outcomes_of() == RESTORED and "warning" not in err
    targets.assert_untouched()


@pytest.mark.parametrize("name", REMOTE_POISONS)
def test_a_poisoned_folder_remote_entry_is_ignored_and_the_stage_runs(name, tmp_path, monkeypatch, workspace,
                                                                      write_recipe, targets, run_bmbuild):
    remote = tmp_path / "remote"
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain", "--remote-cache", remote)[0] == 0
    expected = build_outputs(workspace, "tiny")
    poison(entry_file(remote, "compile_fp32"), name, targets)

    clone = fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain", "--remote-cache", remote)

    targets.assert_untouched()
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "executed"}
    assert build_outputs(clone, "tiny") == expected
    assert_one_warning(err, f"remote cache {remote}", "ignored")
    # the clone pushed a good entry over the poisoned one
    assert json.loads(entry_file(remote, "compile_fp32").read_text())["outputs"] == \
        json.loads(entry_file(workspace.parent / "cache", "compile_fp32").read_text())["outputs"]

    # `bmbuild cache pull|ls|verify` read the same entries: none of them may follow the poison either
    poison(entry_file(remote, "compile_fp32"), name, targets)
    fresh_clone(tmp_path, monkeypatch, "clone2")
    code, out, err = run_bmbuild("cache", "pull", "--remote-cache", remote)
    assert code == 0, out + err
    assert "pulled 1 entry" in out
    targets.assert_untouched()
    code, out, err = run_bmbuild("cache", "verify", "--remote", "--keep", "--remote-cache", remote)
    assert code == 1 and "unreadable entry" in out, out + err
    targets.assert_untouched()


def test_a_poisoned_s3_entry_is_ignored_and_the_stage_runs(tmp_path, monkeypatch, workspace, write_recipe,
                                                           targets, run_bmbuild, s3):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain", "--remote-cache", s3.url)[0] == 0
    for key, data in s3.keys("actions").items():
        entry = json.loads(data)
        if entry["stage"] == "compile_fp32":
            bad = _redigest_first(_rename_first(entry, ESCAPE_UP + "escaped.txt"), str(targets.victim))
            bad["log_digest"] = str(targets.victim)
            s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}actions/{key[:2]}/{key}",
                                 Body=json.dumps(bad).encode())

    fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain", "--remote-cache", s3.url)

    targets.assert_untouched()
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "executed"}
    assert_one_warning(err, "remote cache s3://", "ignored")


def test_cache_gc_never_follows_a_linked_tmp_folder_out_of_the_remote(tmp_path, workspace, targets, run_bmbuild):
    remote = tmp_path / "remote"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    old_file = elsewhere / "old-notes.txt"
    old_file.write_text("two days old, not a temp file")
    day_ago = old_file.stat().st_mtime - 2 * 86400
    os.utime(old_file, (day_ago, day_ago))
    (remote / "objects").mkdir(parents=True)
    (remote / "tmp").symlink_to(elsewhere)

    code, out, err = run_bmbuild("cache", "gc", "--remote", "--remote-cache", remote)

    assert code == 0, out + err
    assert old_file.read_text() == "two days old, not a temp file"
    targets.assert_untouched()


def test_a_store_never_builds_a_path_from_a_non_digest(tmp_path, targets):
    store = LocalStore(tmp_path / "store")
    for bad in (str(targets.victim), "../victim.txt", "ab", "A" * 64, "0" * 63 + "\x00"):
        with pytest.raises(ValueError):
            store.object_path(bad)
        with pytest.raises(ValueError):
            store.get_file(bad, tmp_path / "out")
    targets.assert_untouched()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(POISONS))
def test_validation_rejects_every_poison(name, targets):
    from bmbuild.cache import BadEntry

    digest = "ab" * 32
    good = {"key": "cd" * 32, "outputs": {"model.pt": digest, "sub/x.onnx": digest}, "log_digest": digest,
            "metrics": {"cos": 1.0}, "summary": "", "seconds": 1.5, "components": {"params": {}}}
    assert ActionEntry.from_json(good, good["key"]).outputs == good["outputs"]
    with pytest.raises(BadEntry):
        ActionEntry.from_json(POISONS[name](good, targets), good["key"])


# --- 8: state of the wrong shape is rebuilt, never a permanent crash ----------------------
MANIFEST_DAMAGE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "outputs_list": lambda m: {**m, "outputs": []},
    "outputs_null": lambda m: {**m, "outputs": None},
    "output_digest_int": lambda m: {**m, "outputs": {rel: 1 for rel in m["outputs"]}},
    "metrics_str": lambda m: {**m, "metrics": "x"},
    "metrics_of_the_wrong_shape": lambda m: {**m, "metrics": {"cmp": "x"}},
    "summary_list": lambda m: {**m, "summary": ["x"]},
    "components_of_the_wrong_shape": lambda m: {**m, "key": "0" * 64, "components": {"params": [1]}},
    "dotdot_output": lambda m: {**m, "outputs": {ESCAPE_UP + "escaped.txt": d for d in m["outputs"].values()}},
}


@pytest.mark.parametrize("name", sorted(MANIFEST_DAMAGE))
def test_a_manifest_of_the_wrong_shape_is_discarded_and_restored(name, workspace, built, targets, run_bmbuild):
    expected = build_outputs(workspace, "tiny")
    manifest = workspace / "build" / "tiny" / "compile_fp32" / ".bmbuild-manifest.json"
    manifest.write_text(json.dumps(MANIFEST_DAMAGE[name](json.loads(manifest.read_text()))))

    code, out, err = run_bmbuild("run", built, "--plain")

    assert code == 0, out + err
    assert outcomes_of() == {"trace": "up-to-date", "compile_fp32": "restored"}
    assert build_outputs(workspace, "tiny") == expected
    assert_one_warning(err, str(manifest), "ignored")
    code, out, err = run_bmbuild("run", built, "--plain")
    assert code == 0 and outcomes_of() == UP_TO_DATE and "warning" not in err, out + err
    targets.assert_untouched()


def test_status_and_plan_survive_a_manifest_of_the_wrong_shape(workspace, built, run_bmbuild):
    manifest = workspace / "build" / "tiny" / "trace" / ".bmbuild-manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "outputs": []}))
    for command in ("status", "plan"):
        code, out, err = run_bmbuild(command, built)
        assert code == 0, out + err
        assert "Traceback" not in err


def test_a_cache_object_or_entry_replaced_by_a_folder_is_replaced(workspace, cache_dir, built, run_bmbuild):
    entry = json.loads(entry_file(cache_dir, "compile_fp32").read_text())
    digest = next(d for rel, d in entry["outputs"].items() if rel.endswith(".onnx"))
    obj = cache_dir / "objects" / digest[:2] / digest
    obj.unlink()
    (obj / "junk").mkdir(parents=True)
    action = entry_file(cache_dir, "compile_fp32")
    action.unlink()
    action.mkdir()
    shutil.rmtree(workspace / "build" / "tiny" / "compile_fp32")

    code, out, err = run_bmbuild("run", built, "--plain")

    assert code == 0, out + err
    assert outcomes_of() == {"trace": "up-to-date", "compile_fp32": "executed"}
    assert "Traceback" not in err
    assert obj.is_file() and file_digest(obj) == digest and action.is_file()
    shutil.rmtree(workspace / "build")
    code, out, err = run_bmbuild("run", built, "--plain")
    assert code == 0 and outcomes_of() == RESTORED, out + err


DB_DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "random_bytes": lambda data: os.urandom(4096),
    "truncated": lambda data: data[: len(data) // 2],
    "header_only": lambda data: data[:100],
    "bad_row": lambda data: data,  # see below: a row whose JSON is garbage
}


@pytest.mark.parametrize("name", sorted(DB_DAMAGE))
def test_a_garbage_doit_db_is_discarded_and_rebuilt(name, workspace, built, run_bmbuild):
    import sqlite3

    db = workspace / ".bmbuild" / "doit.sqlite3"
    assert db.is_file()
    if name == "bad_row":
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE doit SET task_data = ?", (b"\xff{not json",))
        conn.close()
    else:
        db.write_bytes(DB_DAMAGE[name](db.read_bytes()))

    code, out, err = run_bmbuild("run", built, "--plain")

    assert code == 0, out + err
    assert outcomes_of() == UP_TO_DATE
    assert_one_warning(err, str(db), "rebuilt")
    code, out, err = run_bmbuild("run", built, "--plain")
    assert code == 0 and outcomes_of() == UP_TO_DATE and "warning" not in err, out + err
