"""Habits from other tools: "did you mean", GitHub Actions annotations and job summary, pre-commit."""

from __future__ import annotations

import shlex

import pytest
import yaml

from conftest import ROOT


@pytest.mark.parametrize("argv, suggestion", [(["rn", "x"], "run"), (["cache", "pul"], "pull"),
                                              (["run", "x", "--toolchain", "refrence"], "reference")])
def test_a_mistyped_command_or_choice_gets_did_you_mean(run_bmbuild, capsys, argv, suggestion):
    from bmbuild.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"did you mean '{suggestion}'?" in capsys.readouterr().err


def test_errors_become_github_annotations_on_github_actions(workspace, write_recipe, run_bmbuild, monkeypatch):
    write_recipe("good")
    write_recipe("bad", fp32={"opt": 7})
    code, out, _ = run_bmbuild("validate", "recipes")
    assert code == 2 and "::error" not in out
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, _ = run_bmbuild("validate", "recipes")
    assert "::error file=recipes/bad.yaml,line=13,title=fp32.opt::Input should be 0%2C 1 or 2 (got 7)" not in out
    assert "::error file=recipes/bad.yaml,line=13,title=fp32.opt::Input should be 0, 1 or 2 (got 7)" in out
    code, out, _ = run_bmbuild("plan", "recipes")
    assert code == 2 and "::error file=recipes/bad.yaml,line=13,title=fp32.opt::" in out
    code, out, _ = run_bmbuild("run", "recipes", "-k")
    assert code == 2 and "::error file=recipes/bad.yaml,line=13,title=fp32.opt::" in out


def test_step_summary_goes_to_the_github_job_summary(workspace, write_recipe, run_bmbuild, monkeypatch, tmp_path):
    write_recipe("tiny")
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, _, _ = run_bmbuild("run", "recipes")
    assert code == 0 and summary.read_text() == "earlier step\n"  # only when asked
    code, _, err = run_bmbuild("run", "recipes", "--step-summary")
    text = summary.read_text()
    assert code == 0 and text.startswith("earlier step\n") and "tiny" in text and "|" in text
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    code, _, err = run_bmbuild("run", "recipes", "--step-summary")
    assert code == 0 and "GITHUB_STEP_SUMMARY is not set" in err


def test_pre_commit_hook_runs_validate_on_the_tree(workspace, write_recipe, run_bmbuild):
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "bmbuild-validate")
    assert hook["language"] == "python" and hook["pass_filenames"] is False
    command = shlex.split(hook["entry"]) + hook["args"]
    assert command[0] == "bmbuild"
    write_recipe("tiny")
    (workspace / "ci.yml").write_text("name: CI\non: push\n")  # what a repository holds besides recipes
    code, out, err = run_bmbuild(*command[1:])
    assert code == 0, err
    assert "ok  recipes/tiny.yaml  (tiny)" in out
