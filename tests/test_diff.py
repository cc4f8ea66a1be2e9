"""`bmbuild diff`: metrics and changed recipe parameters against a git revision or a saved summary.json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from test_cli_output import check_documented


@pytest.fixture
def git_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "bmbuild test")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "test@example.com")


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


def test_diff_against_a_git_revision_builds_it_and_shows_params_and_metrics(workspace, write_recipe, run_bmbuild,
                                                                            git_env):
    write_recipe("tiny")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "baseline")
    write_recipe("tiny", fp32={"cmp_samples": 2, "tolerance": {"cos": 0.95}})  # not committed
    code, out, err = run_bmbuild("run", "recipes")
    assert code == 0, out + err

    code, out, err = run_bmbuild("diff", "HEAD", "--json")
    assert code == 0, err
    data = json.loads(out)
    check_documented("diff", data, ("models",))
    assert data["baseline"].startswith("git HEAD (")
    [model] = data["models"]
    assert model["name"] == "tiny" and model["status"] == {"old": "passed", "new": "passed"}
    assert model["params"] == {"fp32.cmp_samples": {"old": 1, "new": 2},
                               "fp32.tolerance.cos": {"old": 0.99, "new": 0.95}}
    for key in ("fp32.cos", "fp32.sqnr", "size.compile_fp32"):
        values = model["metrics"][key]
        assert values["old"] is not None and values["new"] is not None
        assert values["change"] == pytest.approx(values["new"] - values["old"])
    assert "int8.cos" not in model["metrics"]  # an fp32 recipe has none on either side

    code, out, _ = run_bmbuild("diff")  # HEAD by default, as text
    assert code == 0
    assert "param fp32.cmp_samples" in out and "param fp32.tolerance.cos" in out
    assert Path("recipes/tiny.yaml").read_text().count("cmp_samples: 2")  # the workspace was not touched


def test_diff_against_a_saved_summary(workspace, write_recipe, run_bmbuild):
    write_recipe("tiny")
    assert run_bmbuild("run", "recipes", "--report-dir", "base")[0] == 0
    write_recipe("tiny", fp32={"opt": 2})
    assert run_bmbuild("run", "recipes")[0] == 0

    code, out, err = run_bmbuild("diff", "base/summary.json")
    assert code == 0, err
    assert "baseline: base/summary.json" in out
    assert "param fp32.opt" in out and out.split("param fp32.opt")[1].split()[:2] == ["1", "2"]
    code, out, _ = run_bmbuild("diff", "base", "--json")  # a folder holding one
    assert json.loads(out)["models"][0]["params"] == {"fp32.opt": {"old": 1, "new": 2}}


def test_a_bad_baseline_is_one_clear_error(workspace, write_recipe, run_bmbuild):
    write_recipe("tiny")
    assert run_bmbuild("run", "recipes")[0] == 0
    Path("bad.json").write_text('{"models": [{"no": "name"}]}')
    code, out, err = run_bmbuild("diff", "bad.json")
    assert code == 2 and "not a bmbuild summary.json" in err and "Traceback" not in err
    code, _, err = run_bmbuild("diff", "no-such-rev")
    assert code == 2 and "neither a summary.json nor a git revision" in err
