"""Model-zoo conveniences: bmbuild.yaml, inherited defaults, ${var} variables, variants, shards."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from bmbuild.project import in_shard
from bmbuild.recipe import load_recipes


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_nearest_wins_lists_replace_or_append(workspace, write_text_recipe):
    write(workspace / "recipes" / "defaults.yaml",
          "prec: FP32\nbatch_sizes: [1]\nfp32: {opt: 2, cmp_samples: 1}\n"
          "source: {framework: pytorch, model: tiny_models.py:tiny_cnn}\nshapes: [[1, 3, 8, 8]]\n")
    write(workspace / "recipes" / "cls" / "defaults.yaml", "fp32: {opt: 0}\n")
    write_text_recipe("a.yaml", "name: a\nbatch_sizes+: [4]\n", folder="recipes/cls")
    write_text_recipe("b.yaml", "name: b\nbatch_sizes: [8]\nfp32: {opt: 1}\n", folder="recipes/cls")
    recipes = {r.name: r.recipe for r in load_recipes([workspace / "recipes" / "cls"], workspace)}
    assert recipes["a"].resolved_batch_sizes == [1, 4]          # appended
    assert recipes["b"].resolved_batch_sizes == [8]             # replaced
    assert recipes["a"].fp32.opt == 0 and recipes["b"].fp32.opt == 1   # nearest wins, recipe wins
    assert recipes["a"].fp32.cmp_samples == 1                   # inherited from the farther file
    # the model path written in recipes/defaults.yaml is relative to that file, not to cls/
    model = (workspace / "recipes" / "cls" / recipes["a"].source.model_file).resolve()
    assert model == (workspace / "recipes" / "tiny_models.py").resolve()


def test_error_in_defaults_names_the_defaults_file(workspace, write_text_recipe, run_bmbuild):
    defaults = write(workspace / "recipes" / "defaults.yaml", "prec: FP32\nfp32:\n  opt: 9\n")
    write_text_recipe("a.yaml", "name: a\nsource: {framework: pytorch, model: tiny_models.py:tiny_cnn}\n"
                                "shapes: [[1, 3, 8, 8]]\n")
    code, _, err = run_bmbuild("validate", "recipes")
    assert code == 2
    assert f"{defaults}:3: fp32.opt:" in err


def test_workspace_variables_and_settings(workspace, write_text_recipe, run_bmbuild):
    write(workspace / "bmbuild.yaml", "build_dir: out\njobs: 2\nvars: {models: recipes}\n")
    write_text_recipe("a.yaml", "name: a\ntoolchain: reference\n"
                                "source: {framework: pytorch, model: '${root}/${models}/tiny_models.py:tiny_cnn'}\n"
                                "shapes: [[1, 3, 8, 8]]\nfp32: {cmp_samples: 1}\n")
    code, out, _ = run_bmbuild("run", "recipes/a.yaml", "--plain")
    assert code == 0, out
    assert (workspace / "out" / "a" / "compile_fp32" / "a.onnx").is_file()
    assert not (workspace / "build").exists()


def test_unknown_variable_is_a_recipe_error(workspace, write_text_recipe, run_bmbuild):
    path = write_text_recipe("a.yaml", "name: a\nsource:\n  framework: pytorch\n  model: ${nope}/m.py:f\n"
                                       "shapes: [[1, 3, 8, 8]]\n")
    code, _, err = run_bmbuild("validate", str(path))
    assert code == 2
    assert f"{path}:4: source.model: unknown variable ${{nope}}" in err
    assert "Traceback" not in err


def test_variants_matrix_and_show(workspace, write_text_recipe, run_bmbuild):
    path = write_text_recipe("v.yaml", "name: v\nsource: {framework: pytorch, model: tiny_models.py:tiny_cnn}\n"
                                       "shapes: [[1, 3, 8, 8]]\n"
                                       "variants: {fp32.opt: [0, 2], batch_sizes: [[1], [2, 4]]}\n")
    recipes = {r.name: r.recipe for r in load_recipes([path], workspace)}
    assert sorted(recipes) == ["v_0_v0", "v_0_v1", "v_2_v0", "v_2_v1"]
    assert recipes["v_2_v1"].fp32.opt == 2 and recipes["v_2_v1"].resolved_batch_sizes == [2, 4]
    code, out, _ = run_bmbuild("show", str(path))
    assert code == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["name"] for d in docs] == ["v_0_v0", "v_0_v1", "v_2_v0", "v_2_v1"]
    assert docs[0]["fp32"]["opt"] == 0 and "variants" not in docs[0]


def test_explicit_variants_with_suffix(workspace, write_text_recipe):
    path = write_text_recipe("v.yaml", "name: v\nsource: {framework: pytorch, model: tiny_models.py:tiny_cnn}\n"
                                       "shapes: [[1, 3, 8, 8]]\nvariants:\n"
                                       "  - {suffix: small, shapes: [[1, 3, 8, 8]]}\n"
                                       "  - {suffix: big, shapes: [[1, 3, 16, 16]]}\n")
    recipes = {r.name: r.recipe for r in load_recipes([path], workspace)}
    assert recipes["v_big"].shapes == [[1, 3, 16, 16]] and recipes["v_small"].shapes == [[1, 3, 8, 8]]


def test_shards_partition_the_recipes_stably():
    names = [f"model_{i}" for i in range(200)]
    shards = [{n for n in names if in_shard(n, (i, 4))} for i in range(1, 5)]
    assert set().union(*shards) == set(names)
    assert sum(len(s) for s in shards) == len(names)           # disjoint
    assert all(30 <= len(s) <= 70 for s in shards)               # roughly balanced
    # adding recipes never moves an existing one to another shard
    more = [{n for n in names + ["extra"] if in_shard(n, (i, 4))} - {"extra"} for i in range(1, 5)]
    assert more == shards


def test_two_shards_build_everything_exactly_once(workspace, write_recipe, run_bmbuild, outcomes):
    names = [f"m{i}" for i in range(6)]
    for name in names:
        write_recipe(name)
    executed: dict[str, int] = {}
    for shard in ("1/2", "2/2"):
        code, out, _ = run_bmbuild("run", "recipes", "--plain", "--shard", shard)
        assert code == 0, out
    for name in names:
        stages = outcomes(name)
        assert stages == {"trace": "executed", "compile_fp32": "executed"}
        executed[name] = 1
    assert len(executed) == len(names)


def test_shards_on_separate_machines_share_a_remote_and_a_clone_restores_all(
        workspace, write_recipe, run_bmbuild, outcomes, monkeypatch, tmp_path):
    """CI: two runners (own local caches) + one shared remote folder; then a fresh clone."""
    names = [f"m{i}" for i in range(6)]
    for name in names:
        write_recipe(name)
    remote = tmp_path / "remote"
    for shard in ("1/2", "2/2"):
        monkeypatch.setenv("BMBUILD_CACHE_DIR", str(tmp_path / f"runner{shard[0]}"))
        code, out, _ = run_bmbuild("run", "recipes", "--plain", "--shard", shard, "--remote-cache", remote)
        assert code == 0, out
    assert all(outcomes(n) == {"trace": "executed", "compile_fp32": "executed"} for n in names)
    clone = tmp_path / "clone"
    shutil.copytree(workspace / "recipes", clone / "recipes")
    monkeypatch.chdir(clone)
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(tmp_path / "laptop"))
    code, out, _ = run_bmbuild("run", "recipes", "--plain", "--remote-cache", remote)
    assert code == 0, out
    assert all(outcomes(n, clone) == {"trace": "restored", "compile_fp32": "restored"} for n in names)


def test_graph_lists_every_stage_with_its_dependencies(workspace, write_recipe, run_bmbuild):
    write_recipe("a")
    code, out, _ = run_bmbuild("graph", "recipes", "--format", "dot")
    assert code == 0
    assert '"a:trace" -> "a:compile_fp32";' in out and out.startswith("digraph bmbuild {")
    code, out, _ = run_bmbuild("graph", "recipes")
    assert "a:compile_fp32" in out and "needs trace" in out
