"""The committed JSON schema of recipes is the one the pydantic models generate."""

from __future__ import annotations

import json

from conftest import ROOT

SCHEMA = ROOT / "schemas" / "recipe.schema.json"


def test_committed_schema_is_current():
    from bmbuild.project import schema_text

    expected = schema_text()
    assert SCHEMA.is_file(), f"{SCHEMA} is missing: run `bmbuild schema`"
    assert SCHEMA.read_text() == expected, f"{SCHEMA} is stale: run `bmbuild schema`"


def test_schema_describes_the_recipe_keys():
    schema = json.loads(SCHEMA.read_text())
    assert {"name", "source", "shapes", "fp32"} <= set(schema["properties"])
    assert set(schema["required"]) >= {"name", "source", "shapes"}


def test_schema_check_command(tmp_path, run_bmbuild):
    target = tmp_path / "schema.json"
    code, out, err = run_bmbuild("schema", "--check", "-o", target)
    assert code == 2 and "stale: run `bmbuild schema`" in err
    code, out, _ = run_bmbuild("schema", "-o", target)
    assert code == 0 and target.read_text() == SCHEMA.read_text()
    code, out, _ = run_bmbuild("schema", "--check", "-o", target)
    assert code == 0 and "is current" in out
