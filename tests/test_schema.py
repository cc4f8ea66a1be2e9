"""The committed JSON schemas (recipe, defaults.yaml, bmbuild.yaml) are the ones the models generate,
describe every key, accept what the loader accepts (variables, `key+` appends, keys from defaults)
and work in independent validators: check-jsonschema, and ajv in strict mode when node has it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SCHEMAS = ROOT / "schemas"
SCHEMA = SCHEMAS / "recipe.schema.json"
KINDS = {"recipe": "recipe.schema.json", "defaults": "defaults.schema.json", "bmbuild": "bmbuild.schema.json"}
AJV_CHECK = ROOT / "tests" / "tools" / "ajv_check.js"
NODE_MODULES = ROOT / ".venv" / "node_modules"  # `make ajv` installs ajv there

RECIPE_WITH_FEATURES = """\
name: ${family}_small
source: {model: nets.py:small, kwargs: {depth: 2}}
shapes: [[1, 3, "${size}", "${size}"]]
batch_sizes+: [8]
target: ${chip}
fp32: {opset: "${level}", cmp: "${compare}"}
int8: {fp32_layers+: [head], tolerance: {cos: "${cos}"}}
"""
DEFAULTS = """\
toolchain: reference
source: {framework: pytorch, model: models/net.py:net}
shapes: [[1, 3, 224, 224]]
batch_sizes: [1]
fp32: {tolerance: {cos: 0.98}}
"""
WORKSPACE = """\
build_dir: build
cache_dir: .cache/bmbuild
remote_cache: s3://bucket/prefix
remote_cache_options: {client_kwargs: {endpoint_url: "http://minio:9000"}}
jobs: 4
vars: {datasets: /data}
toolchains: {tpu-mlir: {path: /opt/tpu-mlir/bin}}
"""
INVALID = {  # kind -> a document each schema must reject
    "recipe": "name: x\nfp32: {opt: 7}\n",
    "defaults": "name: x\n",
    "bmbuild": "jobs: 0\nunknown: 1\n",
}


def test_committed_schemas_are_current(run_bmbuild, monkeypatch):
    from bmbuild.schemas import schema_text

    for kind, name in KINDS.items():
        assert (SCHEMAS / name).read_text() == schema_text(kind), f"{name} is stale: run `bmbuild schema`"
    monkeypatch.chdir(ROOT)
    code, out, _ = run_bmbuild("schema", "--check")
    assert code == 0 and out.count("is current") == 3


def test_schema_describes_every_key_and_uses_only_standard_formats():
    from bmbuild.schemas import STANDARD_FORMATS

    for name in KINDS.values():
        schema = json.loads((SCHEMAS / name).read_text())
        undescribed, formats = [], []

        def walk(node, path):
            if isinstance(node, dict):
                for key, value in (node.get("properties") or {}).items():
                    if "description" not in value:
                        undescribed.append(f"{path}.{key}")
                if "format" in node and isinstance(node["format"], str):
                    formats.append(node["format"])
                for key, value in node.items():
                    walk(value, f"{path}/{key}")
            elif isinstance(node, list):
                for value in node:
                    walk(value, path)

        walk(schema, name)
        assert undescribed == [], undescribed
        assert set(formats) <= STANDARD_FORMATS
    recipe = json.loads(SCHEMA.read_text())
    assert {"name", "source", "shapes", "fp32", "shapes+", "target", "eval"} <= set(recipe["properties"])
    assert recipe["required"] == ["name"]


def _instances(tmp_path: Path) -> dict[str, list[Path]]:
    """kind -> YAML files the schema must accept: the example recipes and the texts above."""
    files = {"recipe": sorted((ROOT / "recipes").glob("*.yaml")), "defaults": [], "bmbuild": []}
    for kind, text in (("recipe", RECIPE_WITH_FEATURES), ("defaults", DEFAULTS), ("bmbuild", WORKSPACE)):
        path = tmp_path / f"{kind}-example.yaml"
        path.write_text(text)
        files[kind].append(path)
    return files


def _check_jsonschema(schema: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def test_check_jsonschema_accepts_examples_and_rejects_mistakes(tmp_path):
    pytest.importorskip("check_jsonschema", reason="pip install -e '.[test]' installs check-jsonschema")
    for kind, files in _instances(tmp_path).items():
        done = _check_jsonschema(SCHEMAS / KINDS[kind], *files)
        assert done.returncode == 0, done.stdout + done.stderr
        bad = tmp_path / f"{kind}-invalid.yaml"
        bad.write_text(INVALID[kind])
        done = _check_jsonschema(SCHEMAS / KINDS[kind], bad)
        assert done.returncode == 1, done.stdout + done.stderr


def test_the_example_with_variables_and_appends_is_one_the_loader_accepts(workspace, write_recipe, run_bmbuild):
    """What the schema accepts in RECIPE_WITH_FEATURES is real: the loader builds it."""
    write_recipe("seed")
    (workspace / "bmbuild.yaml").write_text(
        "vars: {family: tiny, size: '8', chip: BM1684, level: '12', compare: 'true', cos: '0.9'}\n")
    (workspace / "recipes" / "defaults.yaml").write_text(
        "toolchain: reference\nsource: {framework: pytorch}\nbatch_sizes: [1]\nint8: {fp32_layers: [stem]}\n")
    (workspace / "recipes" / "nets.py").write_text("from tiny_models import tiny_cnn\n\n\ndef small(depth=1):\n"
                                                   "    return tiny_cnn()\n")
    (workspace / "recipes" / "small.yaml").write_text(RECIPE_WITH_FEATURES)
    from bmbuild.recipe import load_recipe_file

    loaded, = load_recipe_file(workspace / "recipes" / "small.yaml", workspace,
                               {"family": "tiny", "size": "8", "chip": "BM1684", "level": "12", "compare": "true",
                                "cos": "0.9"})
    recipe = loaded.recipe
    assert recipe.name == "tiny_small" and recipe.shapes == [[1, 3, 8, 8]] and recipe.batch_sizes == [1, 8]
    assert recipe.fp32.opset == 12 and recipe.int8.fp32_layers == ["stem", "head"] and recipe.int8.tolerance.cos == 0.9


def test_ajv_strict_mode_compiles_the_schemas_and_validates_examples(tmp_path):
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "ajv").is_dir():
        pytest.skip("ajv is not installed (`make ajv` installs it into .venv/node_modules)")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    for kind, files in _instances(tmp_path).items():
        documents = [[file.name, yaml.safe_load(file.read_text())] for file in files]
        done = subprocess.run([node, str(AJV_CHECK), str(SCHEMAS / KINDS[kind])], input=json.dumps(documents),
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("valid ") == len(files)
        done = subprocess.run([node, str(AJV_CHECK), str(SCHEMAS / KINDS[kind])], env=env, timeout=60,
                              input=json.dumps([["bad", yaml.safe_load(INVALID[kind])]]), capture_output=True,
                              text=True)
        assert done.returncode == 1 and "invalid bad" in done.stdout


def test_schema_check_command(tmp_path, run_bmbuild):
    target = tmp_path / "schema.json"
    code, out, err = run_bmbuild("schema", "--check", "-o", target)
    assert code == 2 and "stale: run `bmbuild schema`" in err
    code, out, _ = run_bmbuild("schema", "-o", target)
    assert code == 0 and target.read_text() == SCHEMA.read_text()
    code, out, _ = run_bmbuild("schema", "--check", "-o", target)
    assert code == 0 and "is current" in out


def test_schema_to_stdout(run_bmbuild):
    code, out, _ = run_bmbuild("schema", "-o", "-", "--kind", "bmbuild")
    assert code == 0 and out == (SCHEMAS / "bmbuild.schema.json").read_text()
