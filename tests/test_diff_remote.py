"""`bmbuild diff --remote`: against the remote cache's last build of each recipe (bmbuild.buildrecords),
like `dvc metrics diff` against a remote. Workspace A builds with the remote and so records its
build there; a fresh clone B changes a parameter, builds on its own, and compares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from test_remote_cache import fresh_clone, s3, s3_endpoint  # noqa: F401  (fixtures)

CHANGED = {"fp32": {"cmp_samples": 3, "tolerance": {"cos": 0.95}}}


def record_files(remote: Path) -> list[Path]:
    return sorted((remote / "builds").rglob("*.json"))


def build_elsewhere_and_diff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_bmbuild: Any,
                             url: str) -> dict[str, Any]:
    """Clone B (workspace A's recipes as they are now): built with no remote, then `diff --remote --json`."""
    fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes", "--plain")
    assert code == 0, out + err
    code, out, err = run_bmbuild("diff", "--remote", "--remote-cache", url, "--json")
    assert code == 0, out + err
    return json.loads(out)


def check_diff(data: dict[str, Any], url: str) -> None:
    assert data["baseline"].startswith(f"remote cache {url}, last builds (tiny 20")
    [model] = data["models"]
    assert model["name"] == "tiny" and model["status"] == {"old": "passed", "new": "passed"}
    assert model["params"] == {"fp32.cmp_samples": {"old": 1, "new": 3},
                               "fp32.tolerance.cos": {"old": 0.99, "new": 0.95}}
    for key in ("fp32.cos", "fp32.sqnr", "size.compile_fp32"):
        values = model["metrics"][key]
        assert values["old"] is not None and values["new"] is not None
        assert values["change"] == pytest.approx(values["new"] - values["old"])
    assert model["metrics"]["fp32.sqnr"]["change"] != 0  # three samples compare differently from one


def test_diff_against_the_last_build_on_a_folder_remote(tmp_path, monkeypatch, workspace, write_recipe,
                                                        run_bmbuild):
    remote = tmp_path / "remote"
    write_recipe("tiny")
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--remote-cache", remote)
    assert code == 0, out + err
    [record] = record_files(remote)
    assert json.loads(record.read_text())["model"]["params"]["fp32"]["cmp_samples"] == 1

    write_recipe("tiny", **CHANGED)  # the clone gets this version of the recipe
    data = build_elsewhere_and_diff(tmp_path, monkeypatch, run_bmbuild, str(remote))
    check_diff(data, str(remote))
    assert record_files(remote) == [record]  # the clone built without the remote: the record is A's

    code, out, err = run_bmbuild("diff", "--remote", "--remote-cache", remote)  # as text
    assert code == 0, err
    assert f"baseline: remote cache {remote}, last builds (tiny " in out
    assert "param fp32.cmp_samples" in out and out.split("param fp32.cmp_samples")[1].split()[:2] == ["1", "3"]
    assert "fp32 SQNR dB" in out

    # the report shows the same baseline next to each model
    code, out, err = run_bmbuild("report", "--remote", "--remote-cache", remote, "--out", "now")
    assert code == 0, out + err
    assert f"baseline: remote cache {remote}, last builds (tiny " in out
    row = json.loads(Path("now/summary.json").read_text())["baseline"]["models"]["tiny"]
    assert row["params"] == {"fp32.cmp_samples": {"old": 1, "new": 3}, "fp32.tolerance.cos": {"old": 0.99, "new": 0.95}}
    code, _, err = run_bmbuild("report", "--remote", "--baseline", "HEAD")
    assert code == 2 and "either 'HEAD' or --remote, not both" in err


def test_a_run_that_only_restores_or_fails_leaves_the_record_alone(tmp_path, monkeypatch, workspace, write_recipe,
                                                                   run_bmbuild):
    remote = tmp_path / "remote"
    write_recipe("tiny")
    assert run_bmbuild("run", "recipes", "--plain", "--remote-cache", remote)[0] == 0
    [record] = record_files(remote)
    before = record.read_bytes()
    fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--remote-cache", remote)
    assert code == 0 and "2 restored" in out, out + err
    assert record.read_bytes() == before  # nothing ran: not a new build
    monkeypatch.chdir(workspace)
    write_recipe("tiny", fp32={"cmp_samples": 2, "tolerance": {"sqnr": 500.0}})  # runs, and fails its gate
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--remote-cache", remote)
    assert code == 1 and "tolerance not met" in out, out + err
    assert record.read_bytes() == before  # a failed build is not the last build


def test_cache_push_publishes_the_builds_it_uploads(tmp_path, workspace, write_recipe, run_bmbuild):
    remote = tmp_path / "remote"
    write_recipe("tiny")
    assert run_bmbuild("run", "recipes", "--plain")[0] == 0  # built without the remote
    code, out, err = run_bmbuild("cache", "push", "--remote-cache", remote)
    assert code == 0, out + err
    assert "recorded 1 build of this workspace" in out
    [record] = record_files(remote)
    assert json.loads(record.read_text())["model"]["status"] == "passed"
    record.unlink()
    code, out, _ = run_bmbuild("cache", "push", "--remote-cache", remote)  # nothing new uploaded
    assert code == 0 and "recorded" not in out and record_files(remote) == []


@pytest.mark.parametrize("content", [
    b"\x00\x01 truncated garbage",
    b'{"kind": "bmbuild-build-record", "format": 1, "name": "tiny"}',
    b'{"kind": "bmbuild-build-record", "format": 1, "name": "tiny", "model": {"name": "tiny", "status": "passed", '
    b'"params": {"fp32": "\\u001b[2J\\u001b]0;owned\\u0007"}, "stages": [], "fp32": null, "int8": null, '
    b'"accuracy": null}}',
    b"[" * 100_000,
    b" " * (2 << 20),
], ids=["not-json", "no-model", "terminal-escapes", "deep", "huge"])
def test_a_corrupt_or_hostile_record_is_one_clear_error(tmp_path, workspace, write_recipe, run_bmbuild, content):
    remote = tmp_path / "remote"
    write_recipe("tiny")
    assert run_bmbuild("run", "recipes", "--plain", "--remote-cache", remote)[0] == 0
    [record] = record_files(remote)
    record.write_bytes(content)
    code, out, err = run_bmbuild("diff", "--remote", "--remote-cache", remote)
    assert code == 2, out + err
    assert "the build record of tiny is unreadable" in err and str(record.relative_to(remote)) in err
    assert "Traceback" not in err and "\x1b" not in out + err


def test_diff_remote_needs_a_remote_and_one_baseline(workspace, write_recipe, run_bmbuild, monkeypatch):
    monkeypatch.delenv("BMBUILD_REMOTE_CACHE", raising=False)
    write_recipe("tiny")
    assert run_bmbuild("run", "recipes", "--plain")[0] == 0
    code, _, err = run_bmbuild("diff", "--remote")
    assert code == 2 and "no remote cache" in err
    code, _, err = run_bmbuild("diff", "HEAD", "--remote", "--remote-cache", "x")
    assert code == 2 and "not both" in err


def test_diff_against_the_last_build_on_s3(tmp_path, monkeypatch, workspace, write_recipe, run_bmbuild,
                                          s3):  # noqa: F811  (the fixture)
    write_recipe("tiny")
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--remote-cache", s3.url)
    assert code == 0, out + err
    [record] = s3.keys("builds").values()
    assert json.loads(record)["name"] == "tiny"
    write_recipe("tiny", **CHANGED)
    check_diff(build_elsewhere_and_diff(tmp_path, monkeypatch, run_bmbuild, s3.url), s3.url)
