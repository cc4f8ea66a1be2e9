"""Machine-readable and adjustable output: --json (documented in docs/json.md), -q/-v, --color."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import ROOT

DOCS = (ROOT / "docs" / "json.md").read_text()


def documented(section: str) -> set[str]:
    """The `names` written in one `## section` of docs/json.md (plus the shared intro)."""
    intro = DOCS.split("\n## ")[0]
    body = next(part for part in DOCS.split("\n## ")[1:] if part.startswith(section + "\n"))
    quoted = re.findall(r"`([^`]+)`", intro + body)  # `name` or `{name, name}`
    return {name for text in quoted for name in re.findall(r"[A-Za-z_][A-Za-z_-]*", text)}


def check_documented(section: str, data: dict, item_lists: tuple[str, ...] = ()) -> None:
    names = documented(section)
    assert data["schema_version"] == 1 and data["command"] == section
    assert set(data) <= names, set(data) - names
    for key in item_lists:
        for item in data[key]:
            assert set(item) <= names, (key, set(item) - names)


def test_json_documents_are_parseable_and_documented(workspace, write_recipe, write_text_recipe, run_bmbuild):
    write_recipe("tiny")
    code, out, err = run_bmbuild("run", "recipes", "--json")
    assert code == 0, err
    run = json.loads(out)  # stdout holds the document only; progress went to stderr
    assert "executed" in err and "tiny:trace" in err
    check_documented("run", run, ("models", "stages"))
    assert run["ok"] and run["counts"]["executed"] == 2
    assert [s["outcome"] for s in run["stages"]] == ["executed", "executed"]
    model = run["models"][0]
    assert model["name"] == "tiny" and model["files"] and all(Path(f).is_file() for f in model["files"])

    code, out, _ = run_bmbuild("plan", "recipes", "--json")
    plan = json.loads(out)
    check_documented("plan", plan, ("stages",))
    assert plan["pending"] == 0 and {s["status"] for s in plan["stages"]} == {"up-to-date"}

    code, out, _ = run_bmbuild("status", "recipes", "--json", "--verify")
    status = json.loads(out)
    check_documented("status", status, ("stages",))
    assert status["verify"]["checked"] >= 2 and status["verify"]["corrupt"] == []
    assert {s["state"] for s in status["stages"]} == {"up-to-date"}

    code, out, _ = run_bmbuild("toolchains", "--json")
    toolchains = json.loads(out)
    check_documented("toolchains", toolchains, ("toolchains",))
    assert {"name": "reference", "usable": True} .items() <= next(
        t for t in toolchains["toolchains"] if t["name"] == "reference").items()
    assert set(toolchains["auto"]) == {"BM1684", "BM1684X"}

    write_text_recipe("broken.yaml", "name: broken\nsource: {framework: pytorch, model: tiny_models.py:tiny_cnn}\n"
                                     "shapes: [[1, 3, 8, 8]]\nfp32: {opt: 7}\n")
    code, out, _ = run_bmbuild("validate", "recipes", "--json")
    validate = json.loads(out)
    check_documented("validate", validate, ("recipes", "errors"))
    assert code == 2 and validate["exit_code"] == 2 and not validate["ok"]
    assert [r["name"] for r in validate["recipes"]] == ["tiny"]
    assert validate["errors"] == [{"message": "Input should be 0, 1 or 2 (got 7)", "file": str(Path("recipes/broken.yaml")),
                                   "line": 4, "key": "fp32.opt", "hint": None}]


def test_a_command_that_stops_with_an_error_still_prints_one_json_document(workspace, write_recipe, run_bmbuild):
    write_recipe("tiny", fp32={"opt": 7})
    code, out, err = run_bmbuild("plan", "recipes", "--json")
    data = json.loads(out)
    assert code == 2 and data["exit_code"] == 2 and data["ok"] is False and data["command"] == "plan"
    assert data["errors"][0]["key"] == "fp32.opt" and data["errors"][0]["line"] == 13
    assert "error:" in err


def test_validate_prints_ok_lines_next_to_the_errors(workspace, write_recipe, run_bmbuild):
    write_recipe("good")
    write_recipe("bad", shapes=[[0, 3]])
    code, out, err = run_bmbuild("validate", "recipes")
    assert code == 2
    assert re.search(r"ok\s+recipes/good.yaml\s+\(good\)", out)
    assert "bad.yaml" in err and "shapes" in err
    assert "1 recipe(s) valid, 1 error(s)" in out


def test_quiet_and_verbose_runs(workspace, write_recipe, run_bmbuild):
    write_recipe("tiny")
    code, out, _ = run_bmbuild("run", "recipes", "-v")
    assert code == 0
    assert "why: no output yet" in out and re.search(r"log: .*logs/trace\.log", out)
    assert "models: build/tiny/compile_fp32/" in out  # the summary says where the models are
    code, out, _ = run_bmbuild("-q", "run", "recipes", "--force")
    assert code == 0 and "executed" not in out.replace("2 executed", "") and "bmbuild 0.1" not in out
    assert out.strip().splitlines()[-1].startswith("2 executed")
    code, out, _ = run_bmbuild("plan", "recipes", "-q")
    assert out.strip() == "0 of 2 stage(s) would run or be restored"


def test_color_option(workspace, write_recipe, run_bmbuild):
    write_recipe("tiny")
    _, out, _ = run_bmbuild("run", "recipes", "--color", "always")
    assert "\x1b[" in out  # into a pipe, colours only when asked
    _, out, _ = run_bmbuild("run", "recipes", "--color", "never", "--force")
    assert "\x1b[" not in out and "executed" in out
    _, out, _ = run_bmbuild("run", "recipes")
    assert "\x1b[" not in out
