"""A golden test of the key components (issue 9 item 4): every stage of a fixture recipe under
every registered toolchain, computed by the pure planner from plain values. How to regenerate the
golden file on purpose: tests/golden/README.md."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from bmbuild.cache import action_key, json_bytes
from bmbuild.executor import KEY_ENV
from bmbuild.graph import input_name, recipe_nodes
from bmbuild.planner import key_components, stage_inputs
from bmbuild.recipe import load_recipe
from bmbuild.stages import all_stages
from bmbuild.toolchains.base import REGISTRY, load_toolchain

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_FILE = GOLDEN / "key_components.json"
VERSIONS = {"pinned": "by tests/test_key_golden.py"}  # real versions differ per machine


def placeholder(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def fixture_recipe(tmp_path: Path) -> Any:
    folder = tmp_path / "fixture"
    shutil.copytree(GOLDEN / "fixture", folder)
    for data in ("calib.npz", "eval.npz"):  # their contents are placeholders in the keys
        (folder / data).write_bytes(b"")
    return load_recipe(folder / "golden.yaml")


def components_of(loaded: Any) -> dict[str, dict[str, Any]]:
    """toolchain -> stage -> {"components", "key"}, from plain values only."""
    result: dict[str, dict[str, Any]] = {}
    for name in REGISTRY:
        toolchain = load_toolchain(name)
        result[name] = {}
        for node in recipe_nodes(loaded, name, all_stages()):
            stage = node.stage
            params, files = stage_inputs(stage, loaded, toolchain if stage.uses_toolchain else None)
            inputs = {input_name(path, loaded): placeholder(input_name(path, loaded)) for path in files}
            upstream = {dep.stage.name: {f"{dep.stage.name}.out": placeholder(dep.stage.name)} for dep in node.deps}
            tc = {"name": name if stage.uses_toolchain else "torch", "versions": VERSIONS}
            components = key_components(stage.name, stage.version, tc, params, inputs, upstream,
                                        dict.fromkeys(KEY_ENV))
            result[name][stage.name] = {"components": components, "key": action_key(components)}
    return json.loads(json_bytes(result))  # as stored: JSON types, sorted keys


def golden_problems(current: dict[str, Any], golden: dict[str, Any]) -> list[str]:
    """What differs between the current key components and the golden file, each with what to do."""
    regenerate = ("BMBUILD_UPDATE_GOLDEN=1 python -m pytest tests/test_key_golden.py, review and commit "
                  "tests/golden/key_components.json (tests/golden/README.md)")
    problems = [f"toolchain {name!r} is registered but has no golden key components yet: regenerate them with "
                f"{regenerate}" for name in sorted(set(current) - set(golden))]
    problems += [f"toolchain {name!r} has golden key components but is not registered any more: regenerate with "
                 f"{regenerate}" for name in sorted(set(golden) - set(current))]
    for toolchain in sorted(set(golden) & set(current)):
        for stage in sorted(set(golden[toolchain]) | set(current[toolchain])):
            if current[toolchain].get(stage) != golden[toolchain].get(stage):
                problems.append(f"the key of {stage} under {toolchain} changed; if on purpose, regenerate with "
                                f"{regenerate}")
    return problems


def test_key_components_of_every_stage_and_toolchain_are_pinned(tmp_path):
    current = components_of(fixture_recipe(tmp_path))
    if os.environ.get("BMBUILD_UPDATE_GOLDEN"):
        GOLDEN_FILE.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN_FILE.read_text())
    problems = golden_problems(current, golden)
    assert not problems, "\n".join(problems)


def test_key_components_are_a_pure_function_of_plain_values():
    args = ("calibrate", "4", {"name": "reference", "versions": {"onnx": "1"}}, {"method": "kl", "bins": 512},
            {"calib.npz": "a" * 64}, {"compile_fp32": {"m.onnx": "b" * 64}}, {"BMBUILD_KEY_SALT": None})
    first = key_components(*args)
    assert key_components(*args) == first
    assert first["upstream"] == {"compile_fp32": placeholder_tree({"m.onnx": "b" * 64})}
    changed = key_components(*args[:5], {"compile_fp32": {"m.onnx": "c" * 64}}, args[6])
    assert action_key(changed) != action_key(first)
    assert action_key(key_components(*args[:6], {"BMBUILD_KEY_SALT": "x"})) != action_key(first)


def placeholder_tree(files: dict[str, str]) -> str:
    from bmbuild.cache import tree_digest

    return tree_digest(files)
