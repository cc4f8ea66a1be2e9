"""Hostile or broken recipes, workspace configs and defaults files: each is one error line naming
file, line and key, exit code 2, never a traceback, a hang or a crash while expanding it.

tests/fixtures/hostile_recipes/*.yaml each start with `# expect: <line> <key or -> | <fragment>`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile_recipes"
CORPUS = sorted(HOSTILE.glob("*.yaml"))

GOOD = """\
name: tiny
toolchain: reference
source:
  framework: pytorch
  model: tiny_models.py:tiny_cnn
shapes: [[1, 3, 8, 8]]
"""


def _expectation(file: Path) -> tuple[int, str | None, str]:
    header = file.read_bytes().split(b"\n", 1)[0].decode()
    assert header.startswith("# expect: "), f"{file.name}: no expect header"
    where, fragment = header.removeprefix("# expect: ").split(" | ", 1)
    line, key = where.split(" ", 1)
    return int(line), (None if key == "-" else key), fragment


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, out + err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_corpus_covers_every_reported_class():
    names = {file.stem for file in CORPUS}
    assert {"nul_character", "deep_nesting", "recursive_alias", "alias_bomb", "variants_int_key",
            "long_name", "empty", "int8_without_calibration", "unknown_tag", "kwargs_bogus"} <= names


@pytest.mark.parametrize("fixture", CORPUS, ids=[file.stem for file in CORPUS])
def test_hostile_recipe_is_one_clear_error(workspace, run_bmbuild, fixture):
    recipe = workspace / "recipes" / fixture.name
    shutil.copyfile(fixture, recipe)
    line, key, fragment = _expectation(fixture)

    code, out, err = run_bmbuild("validate", recipe)

    assert code == 2 and "Traceback" not in out + err, out + err
    message, *more = err.strip().splitlines()
    assert all(re.match(rf"{re.escape(str(recipe))}:\d+: ", other) for other in more), err
    where = f"error: {recipe}:{line}: "
    assert message.startswith(where + (key or "")), message
    if key is None:  # a document-level error (the text is not YAML): no key to name
        assert message.startswith(where + "invalid YAML") or "UTF-8" in message, message
    assert fragment in message


def test_a_long_name_never_reaches_the_file_system(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("long.yaml", GOOD.replace("name: tiny", "name: " + "n" * 101))
    message = _one_error_line(*run_bmbuild("run", recipe, "--plain"))
    assert message.startswith(f"error: {recipe}:1: name: ") and "at most 100 characters" in message
    assert not (workspace / "build").exists()


def test_a_name_of_100_characters_is_fine(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("long.yaml", GOOD.replace("name: tiny", "name: " + "n" * 100))
    code, out, err = run_bmbuild("validate", recipe)
    assert code == 0, err


def test_anchors_and_merge_keys_still_work(workspace, write_text_recipe, run_bmbuild):
    text = GOOD + "fp32: &common {cmp_samples: 2, opt: 0}\nint8:\n  <<: *common\n  cmp_samples: 5\n"
    recipe = write_text_recipe("anchors.yaml", text)
    from bmbuild.recipe import load_recipe

    loaded = load_recipe(recipe)
    # keys written next to `<<` win over the merged ones; the rest is merged in
    assert (loaded.recipe.int8.cmp_samples, loaded.recipe.int8.opt) == (5, 0)
    assert (loaded.recipe.fp32.cmp_samples, loaded.recipe.fp32.opt) == (2, 0)
    # merged keys point at the line that wrote them (the anchor), explicit ones at their own
    assert loaded.source_map.line_of(("int8", "cmp_samples")) == 10
    assert loaded.source_map.line_of(("int8", "opt")) == 7


def test_merged_key_error_points_at_the_anchor_line(workspace, write_text_recipe, run_bmbuild):
    text = GOOD + "fp32: &common {cmp_samples: 2, seed: 3}\nint8:\n  <<: *common\n"
    recipe = write_text_recipe("anchors.yaml", text)
    message = _one_error_line(*run_bmbuild("validate", recipe))
    assert message.startswith(f"error: {recipe}:7: int8.seed: unknown key"), message


def test_a_bounded_alias_fan_out_is_fine(workspace):
    from bmbuild.yamlsource import load_yaml

    # what real anchors look like: small blocks repeated a few times
    data, _ = load_yaml(_write(workspace / "plain.yaml", "a: &a [l1, l2, l3]\nb: &b [*a, *a, *a]\nc: [*b, *b]\n"))
    assert data["c"] == [[["l1", "l2", "l3"]] * 3] * 2


def test_dates_stay_text(workspace):
    from bmbuild.yamlsource import load_yaml

    data, _ = load_yaml(_write(workspace / "d.yaml", "description: 2024-01-31\n"))
    assert data == {"description": "2024-01-31"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- kwargs the model callable cannot take -------------------------------------------------

def test_kwargs_missing_a_required_parameter(workspace, write_text_recipe, run_bmbuild):
    (workspace / "recipes" / "needs.py").write_text(
        "from tiny_models import tiny_cnn\n\nclass Net:\n    def __init__(self, width, *, depth=0):\n"
        "        pass\n")
    recipe = write_text_recipe("needs.yaml", GOOD.replace("tiny_models.py:tiny_cnn", "needs.py:Net"))
    message = _one_error_line(*run_bmbuild("validate", recipe))
    assert message.startswith(f"error: {recipe}:3: source.kwargs: Net() needs 'width'"), message


def test_kwargs_typo_suggests_the_parameter(workspace, write_text_recipe, run_bmbuild):
    text = GOOD.replace("tiny_cnn\n", "tiny_cnn\n  kwargs:\n    chanels: 8\n")
    recipe = write_text_recipe("typo.yaml", text)
    message = _one_error_line(*run_bmbuild("validate", recipe))
    assert message == (f"error: {recipe}:7: source.kwargs.chanels: tiny_cnn() has no parameter 'chanels' "
                       "(did you mean 'channels'?)")


def test_kwargs_are_not_checked_when_the_file_cannot_tell(workspace, write_text_recipe, run_bmbuild):
    """A decorated def, a **kwargs def or an imported name: validate accepts; the stage checks."""
    (workspace / "recipes" / "open.py").write_text(
        "import functools\nfrom tiny_models import tiny_cnn as imported\n\n"
        "def anything(**kwargs):\n    return None\n\n"
        "@functools.lru_cache\ndef decorated(a=1):\n    return None\n")
    for name in ("anything", "decorated", "imported"):
        recipe = write_text_recipe(f"{name}.yaml", GOOD.replace("name: tiny", f"name: {name}").replace(
            "tiny_models.py:tiny_cnn", f"open.py:{name}\n  kwargs: {{bogus: 1}}"))
        code, out, err = run_bmbuild("validate", recipe)
        assert code == 0, err


def test_kwargs_the_imported_callable_rejects_fail_the_trace_stage_cleanly(workspace, write_text_recipe,
                                                                           run_bmbuild, outcomes):
    (workspace / "recipes" / "alias.py").write_text("from tiny_models import tiny_cnn as net\n")
    recipe = write_text_recipe("alias.yaml", GOOD.replace("tiny_models.py:tiny_cnn",
                                                          "alias.py:net\n  kwargs: {bogus: 1}"))
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 2  # the recipe is wrong, found by the stage: a user error (README, exit codes)
    assert "Traceback" not in out + err
    assert f"tiny:trace failed: {recipe}:6: source.kwargs: net(): got an unexpected keyword argument 'bogus'" \
        in out + err
    assert outcomes("tiny")["trace"] == "failed"


# --- the workspace config and defaults files go through the same loader -------------------------

def test_defaults_file_alias_bomb_names_the_defaults_file(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("ok.yaml", GOOD)
    bomb = (HOSTILE / "alias_bomb.yaml").read_text().split("\n", 7)[7]  # the anchors, no recipe keys
    defaults = _write(workspace / "recipes" / "defaults.yaml", bomb)
    message = _one_error_line(*run_bmbuild("validate", recipe))
    assert message.startswith(f"error: {defaults}:5: e: the document expands to more than"), message


def test_defaults_file_with_a_nul(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("ok.yaml", GOOD)
    defaults = _write(workspace / "recipes" / "defaults.yaml", "fp32:\n  opt: 1\x00\n")
    message = _one_error_line(*run_bmbuild("validate", recipe))
    assert message.startswith(f"error: {defaults}:2: fp32.opt: invalid YAML: character #x0000"), message


@pytest.mark.parametrize("text, line, key, fragment", [
    ("- a\n- b\n", 1, "", "must be a mapping"),
    ("jobs: 2\nbuild_dir: \"out\\0x\"\n", 2, "build_dir: ", "NUL"),
    ("jobs: many\n", 1, "jobs: ", "valid integer"),
    ("vars:\n  data: &d [*d]\n", 2, "vars.data[0]: ", "alias refers to"),
    ("vars: {a: 1}\n", 1, "vars.a: ", "valid string"),
    ("jobs: !!python/name:os.system\n", 1, "jobs: ", "unsupported tag"),
])
def test_bad_workspace_config(workspace, write_text_recipe, run_bmbuild, text, line, key, fragment):
    recipe = write_text_recipe("ok.yaml", GOOD)
    config = _write(workspace / "bmbuild.yaml", text)
    message = _one_error_line(*run_bmbuild("validate", recipe))
    assert message.startswith(f"error: {config}:{line}: {key}"), message
    assert fragment in message


def test_missing_key_with_inherited_defaults_still_names_line_1(workspace, write_text_recipe, run_bmbuild):
    _write(workspace / "recipes" / "defaults.yaml", "toolchain: reference\n")
    recipe = write_text_recipe("nosource.yaml", "name: tiny\nshapes: [[1, 3, 8, 8]]\n")
    message = _one_error_line(*run_bmbuild("validate", recipe))
    assert message == f"error: {recipe}:1: source: required key is missing"


def test_kwargs_keys_that_cannot_be_sorted_are_a_recipe_error_in_plan(workspace, run_bmbuild):
    """{1: a, b: c} under kwargs crashed the trace key (sorted JSON) with a TypeError."""
    recipe = workspace / "recipes" / "mixed.yaml"
    shutil.copyfile(HOSTILE / "kwargs_mixed_key_types.yaml", recipe)
    message = _one_error_line(*run_bmbuild("plan", recipe))
    assert message.startswith(f"error: {recipe}:7: source.kwargs.marker[1]: keys here must be strings")


# --- defaults merging: `key+` with nothing to append to, and work linear in the file size ------

def test_append_key_with_nothing_inherited_sets_the_list(workspace, write_text_recipe):
    from bmbuild.recipe import load_recipe

    _write(workspace / "recipes" / "defaults.yaml", "int8: {fp32_layers+: [fc]}\n")
    recipe = write_text_recipe("plus.yaml", GOOD + "batch_sizes+: [1, 2]\n")
    loaded = load_recipe(recipe)
    assert loaded.recipe.int8.fp32_layers == ["fc"]  # was "int8.fp32_layers+: unknown key"
    assert loaded.recipe.batch_sizes == [1, 2]
    assert loaded.source_map.line_of(("batch_sizes", 1)) == 7
    assert loaded.source_map.file_of(("int8", "fp32_layers", 0)) == workspace / "recipes" / "defaults.yaml"


def test_merging_defaults_visits_the_lines_once_per_file_not_once_per_key(workspace, write_text_recipe,
                                                                          monkeypatch):
    """A defaults file of 15 000 keys took 40 s: every key scanned every line of the map."""
    from bmbuild.recipe import load_recipe
    from bmbuild.yamlsource import SourceMap

    scans = []
    for name in ("subtree", "replace_subtree"):
        original = getattr(SourceMap, name)
        monkeypatch.setattr(SourceMap, name, lambda self, *a, _o=original: scans.append(1) or _o(self, *a))
    _write(workspace / "recipes" / "defaults.yaml",
           "fp32: {opt: 2}\nvars_like:\n" + "".join(f"  k{i}: {{v: {i}}}\n" for i in range(500)))
    recipe = write_text_recipe("many.yaml", GOOD)
    with pytest.raises(Exception, match="vars_like: unknown key"):
        load_recipe(recipe)
    assert len(scans) <= 10
