"""A bad recipe gets one clear line naming the file, the line and the key — never a traceback."""

from __future__ import annotations

import pytest

GOOD = """\
name: tiny
toolchain: reference
source:
  framework: pytorch
  model: tiny_models.py:tiny_cnn
shapes: [[1, 3, 8, 8]]
fp32:
  opt: 1
"""


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, out + err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("command", ["run", "plan", "validate"])
def test_typo_key_names_file_line_key_and_suggestion(workspace, write_text_recipe, run_bmbuild, command):
    recipe = write_text_recipe("bad.yaml", GOOD.replace("  opt: 1", "  opts: 1"))

    line = _one_error_line(*run_bmbuild(command, recipe, *(["--plain"] if command == "run" else [])))

    assert f"{recipe}:8:" in line
    assert "fp32.opts" in line
    assert "unknown key" in line
    assert "did you mean 'opt'" in line
    assert not (workspace / "build").exists()


def test_typo_in_nested_flow_mapping(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD.replace("fp32:\n  opt: 1\n", "fp32: {opts: 1}\n"))
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:7:" in line and "fp32.opts" in line and "did you mean 'opt'" in line


def test_wrong_literal_value(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD.replace("  opt: 1", "  opt: 7"))
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:8:" in line
    assert "fp32.opt" in line
    assert "7" in line


def test_wrong_type_in_a_list(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD + "batch_sizes:\n  - 1\n  - one\n")
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:11:" in line
    assert "batch_sizes[1]" in line
    assert "'one'" in line


def test_wrong_type_of_a_section(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD.replace("shapes: [[1, 3, 8, 8]]", "shapes: 224"))
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:6:" in line and "shapes" in line


def test_missing_model_file(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD.replace("tiny_models.py:tiny_cnn", "nowhere.py:tiny_cnn"))
    line = _one_error_line(*run_bmbuild("run", recipe, "--plain"))
    assert f"{recipe}:5:" in line
    assert "source.model" in line
    assert "model file not found" in line and "nowhere.py" in line


def test_missing_callable(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD.replace("tiny_models.py:tiny_cnn", "tiny_models.py:nope"))
    line = _one_error_line(*run_bmbuild("run", recipe, "--plain"))
    assert f"{recipe}:5:" in line
    assert "source.model" in line
    assert "'nope'" in line and "tiny_models.py" in line


def test_invalid_yaml_unclosed_bracket(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD.replace("shapes: [[1, 3, 8, 8]]", "shapes: [[1, 3, 8, 8]"))
    line = _one_error_line(*run_bmbuild("validate", recipe))
    # the parser notices the unclosed bracket where the next key starts
    assert f"{recipe}:7:" in line
    assert "invalid YAML" in line


def test_invalid_yaml_bad_indentation(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD.replace("  model: tiny", "   model: tiny"))
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:5:" in line
    assert "invalid YAML" in line


def test_duplicate_key(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD + "  opt: 2\n")
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:9:" in line
    assert "fp32.opt" in line
    assert "duplicate key" in line


def test_missing_required_key(workspace, write_text_recipe, run_bmbuild):
    text = "name: tiny\ntoolchain: reference\nshapes: [[1, 3, 8, 8]]\n"
    recipe = write_text_recipe("bad.yaml", text)
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:1:" in line
    assert "source" in line and "required key is missing" in line


def test_recipe_that_is_not_a_mapping(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", "- just\n- a list\n")
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:1:" in line and "mapping" in line


def test_validate_folder_reports_only_the_bad_recipe(workspace, write_text_recipe, run_bmbuild):
    write_text_recipe("good.yaml", GOOD)
    bad = write_text_recipe("bad.yaml", GOOD.replace("name: tiny", "name: other").replace("  opt: 1", "  opts: 1"))

    code, out, err = run_bmbuild("validate", workspace / "recipes")

    line = _one_error_line(code, out, err)
    assert f"{bad}:8:" in line and "fp32.opts" in line
    assert "good.yaml" not in err


def test_validate_reports_every_bad_recipe(workspace, write_text_recipe, run_bmbuild):
    first = write_text_recipe("a.yaml", GOOD.replace("name: tiny", "name: a").replace("  opt: 1", "  opts: 1"))
    second = write_text_recipe("b.yaml", GOOD.replace("name: tiny", "name: b").replace("  opt: 1", "  opt: 9"))
    code, out, err = run_bmbuild("validate", workspace / "recipes")
    assert code == 2 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert f"{first}:8:" in err and f"{second}:8:" in err


def test_validate_good_folder(workspace, write_text_recipe, run_bmbuild):
    good = write_text_recipe("good.yaml", GOOD)
    code, out, err = run_bmbuild("validate", workspace / "recipes")
    assert code == 0, err
    assert f"ok  {good}" in out and "1 recipe(s) valid" in out


def test_duplicate_recipe_names(workspace, write_text_recipe, run_bmbuild):
    write_text_recipe("a.yaml", GOOD)
    second = write_text_recipe("b.yaml", GOOD)
    line = _one_error_line(*run_bmbuild("validate", workspace / "recipes"))
    assert f"{second}:1:" in line and "name" in line and "also used by" in line


def test_missing_recipe_path(workspace, run_bmbuild):
    line = _one_error_line(*run_bmbuild("run", "recipes/none.yaml", "--plain"))
    assert "recipes/none.yaml" in line and "no such recipe" in line


def test_recipe_errors_print_no_traceback_in_a_real_process(workspace, write_text_recipe):
    from conftest import run_subprocess

    recipe = write_text_recipe("bad.yaml", GOOD.replace("  opt: 1", "  opts: 1"))
    done = run_subprocess("run", recipe, "--plain", cwd=workspace)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {recipe}:8: fp32.opts: unknown key (did you mean 'opt'?)"]


def test_model_file_syntax_error_names_the_model_file_and_line(workspace, write_text_recipe, run_bmbuild):
    (workspace / "recipes" / "broken.py").write_text("import torch\n\ndef net(:\n    pass\n")
    write_text_recipe("bad.yaml", GOOD.replace("tiny_models.py:tiny_cnn", "broken.py:net"))
    line = _one_error_line(*run_bmbuild("validate", workspace / "recipes" / "bad.yaml"))
    assert f"{workspace / 'recipes' / 'broken.py'}:3:" in line and "syntax error" in line


def test_recipe_that_is_not_utf8(workspace, run_bmbuild):
    recipe = workspace / "recipes" / "latin1.yaml"
    recipe.write_bytes(b"# Gr\xf6\xdfe: 8x8\n" + GOOD.encode())
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}" in line


def test_model_file_with_a_coding_cookie_is_accepted(workspace, write_text_recipe, run_bmbuild):
    (workspace / "recipes" / "latin1_model.py").write_bytes(
        b"# -*- coding: latin-1 -*-\n# Gr\xf6\xdfe\nfrom tiny_models import tiny_cnn\n")
    recipe = write_text_recipe("ok.yaml", GOOD.replace("tiny_models.py:tiny_cnn", "latin1_model.py:tiny_cnn"))
    code, out, err = run_bmbuild("validate", recipe)
    assert code == 0, err
    assert "1 recipe(s) valid" in out


def test_complex_yaml_key(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("bad.yaml", GOOD + "? [a, b]\n: 1\n")
    line = _one_error_line(*run_bmbuild("validate", recipe))
    assert f"{recipe}:9:" in line
