"""Which YAML files `bmbuild run|validate FOLDER` reads as recipes (recipe.find_recipe_files)."""

from __future__ import annotations

from pathlib import Path

import yaml

NOT_A_RECIPE = "name: torch-op\nsource: {framework: caffe}\nfunc: add(Tensor self) -> Tensor\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_folder_search_skips_tool_trees_and_unrelated_yaml(workspace, write_recipe, run_bmbuild):
    write_recipe("good")
    # what a workspace root holds besides recipes: all would be broken recipes if read as such
    write(workspace / ".venv/lib/python3.11/site-packages/torch/ops.yaml", NOT_A_RECIPE)
    write(workspace / "venv2/pyvenv.cfg", "home = /usr/bin\n")
    write(workspace / "venv2/lib/data.yaml", NOT_A_RECIPE)
    write(workspace / "build/good/trace/config.yaml", NOT_A_RECIPE)
    write(workspace / "node_modules/pkg/x.yml", NOT_A_RECIPE)
    write(workspace / "tools/site-packages/y.yaml", NOT_A_RECIPE)
    write(workspace / ".github/workflows/ci.yml", "name: CI\non: push\n")
    write(workspace / "mkdocs.yml", "site_name: docs\nnav: []\n")
    write(workspace / "ci.yaml", "name: CI\njobs: {}\n")  # a name alone does not make a recipe
    code, out, err = run_bmbuild("validate", ".", "-v")
    assert code == 0, err
    assert "ok  recipes/good.yaml  (good)" in out and "1 recipe(s) valid" in out
    assert "skipped  ci.yaml" in out and "skipped  mkdocs.yml" in out


def test_recipes_that_take_their_source_from_defaults_are_found(workspace, write_recipe, run_bmbuild):
    write_recipe("seed")  # copies tiny_models.py into recipes/
    write(workspace / "recipes/zoo/defaults.yaml", yaml.safe_dump(
        {"toolchain": "reference", "source": {"framework": "pytorch", "model": "../tiny_models.py:tiny_cnn"},
         "shapes": [[1, 3, 8, 8]]}))
    write(workspace / "recipes/zoo/small.yaml", "name: small\n")
    write(workspace / "recipes/zoo/notes.yaml", "title: not a recipe\n")
    code, out, err = run_bmbuild("validate", "recipes")
    assert code == 0, err
    assert "(small)" in out and "(seed)" in out and "2 recipe(s) valid" in out


def test_a_file_named_on_the_command_line_is_always_a_recipe(workspace, run_bmbuild):
    write(workspace / "ci.yaml", "name: CI\njobs: {}\n")
    code, _, err = run_bmbuild("validate", "ci.yaml")
    assert code == 2 and "ci.yaml" in err and "source" in err


def test_no_recipe_below_a_folder_says_what_was_skipped(workspace, run_bmbuild):
    write(workspace / "recipes/ci.yaml", "name: CI\njobs: {}\n")
    code, _, err = run_bmbuild("validate", "recipes")
    assert code == 2 and "no recipes found" in err and "1 YAML file(s) without a top-level source:" in err


def test_keep_going_reports_a_broken_recipe_and_builds_the_others(workspace, write_recipe, outcomes, run_bmbuild):
    write_recipe("good")
    write_recipe("broken", fp32={"opt": 7})
    code, out, err = run_bmbuild("run", "recipes")
    assert code == 2 and "broken.yaml" in err and not (workspace / "build/good").exists()
    code, out, err = run_bmbuild("run", "recipes", "-k")
    assert code == 2
    assert "broken.yaml:" in out and "fp32.opt" in out and "1 broken recipe(s) left out" in out
    assert outcomes("good") == {"trace": "executed", "compile_fp32": "executed"}


def test_a_flow_style_recipe_is_found_below_a_folder(tmp_path):
    """JSON is YAML: a recipe written as one flow mapping is a recipe like any other."""
    from bmbuild.recipe import find_recipe_files

    (tmp_path / "json_recipe.yaml").write_text('{"name": "x", "source": {"model": "m.py:f"}}\n')
    (tmp_path / "ci.yaml").write_text("jobs: {build: {name: b}}\n")
    skipped: list = []
    assert find_recipe_files([tmp_path], skipped) == [tmp_path / "json_recipe.yaml"]
    assert skipped == [tmp_path / "ci.yaml"]
