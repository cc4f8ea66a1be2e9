"""JSON schemas of the files a user writes (recipes, defaults.yaml, bmbuild.yaml), for editors and CI.

Generated from the pydantic models, then adjusted to what the loader accepts beyond them:
- values may be `${name}` variables (replaced by strings before validation, so a number, a
  boolean or one of several strings may be written as a variable; not one of several numbers
  such as fp32.opt, which the string does not match);
- a list may be appended to with `key+:` (compose.py);
- a recipe may rely on defaults.yaml for any key but `name`, so nothing else is required;
- only standard `format`s, so validators in strict mode (ajv) accept the schemas.
`tests/test_schema.py` checks the committed files are current and validates examples with
independent validators.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
VARIABLE = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*\}",
            "description": "A ${name} variable (bmbuild.yaml vars, ${root}, ${recipe_dir}), replaced before validation."}
VARIABLE_REF = {"$ref": "#/$defs/Variable"}
STANDARD_FORMATS = frozenset({
    "date-time", "date", "time", "duration", "email", "idn-email", "hostname", "idn-hostname", "ipv4", "ipv6",
    "uri", "uri-reference", "iri", "iri-reference", "uuid", "uri-template", "json-pointer",
    "relative-json-pointer", "regex"})
MOVED_UP = ("description", "default", "title")  # stay on a property when its schema is wrapped


def recipe_schema() -> dict[str, Any]:
    from bmbuild.recipe import Recipe

    schema = _user_file_schema(Recipe.model_json_schema(), "bmbuild recipe")
    schema["required"] = ["name"]
    schema["description"] = ("One model and how to build it. Keys other than name may come from defaults.yaml "
                             "files in the recipe's folder and above.")
    return schema


def defaults_schema() -> dict[str, Any]:
    """A defaults.yaml: any recipe key but `name`, merged under every recipe at and below its folder."""
    from bmbuild.recipe import Recipe

    schema = _user_file_schema(Recipe.model_json_schema(), "bmbuild defaults.yaml")
    for key in ("name", "name+"):
        schema["properties"].pop(key, None)
    schema["description"] = ("Recipe keys shared by every recipe in this folder and below; the nearest file wins, "
                             "the recipe wins over all (mappings merge key by key, lists are replaced unless "
                             "written key+).")
    return schema


def workspace_schema() -> dict[str, Any]:
    from bmbuild.workspace import WorkspaceConfig

    return _user_file_schema(WorkspaceConfig.model_json_schema(), "bmbuild.yaml")


SCHEMAS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "recipe": ("recipe.schema.json", recipe_schema),
    "defaults": ("defaults.schema.json", defaults_schema),
    "bmbuild": ("bmbuild.schema.json", workspace_schema),
}


def schema_text(kind: str = "recipe") -> str:
    return json.dumps(SCHEMAS[kind][1](), indent=2, sort_keys=True) + "\n"


def schema_files(folder: Path) -> dict[Path, str]:
    """Every schema file below `folder` and its content."""
    return {folder / name: schema_text(kind) for kind, (name, _) in SCHEMAS.items()}


def _user_file_schema(schema: dict[str, Any], title: str) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = title
    definitions = schema.setdefault("$defs", {})
    for name, node in [("", schema), *definitions.items()]:
        _adjust_object(node)
    _drop_unknown_formats(schema)
    definitions["Variable"] = dict(VARIABLE)
    return schema


def _adjust_object(node: dict[str, Any]) -> None:
    """Variables, `key+` appends and no required keys, on an object schema and the objects in it."""
    node.pop("required", None)
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return
    for name in list(properties):
        properties[name] = _with_variables(properties[name])
        if _is_list(properties[name]) and node.get("additionalProperties") is False:
            appended = copy.deepcopy(properties[name])
            appended.pop("default", None)
            appended.pop("title", None)
            appended["description"] = f"Appended to the {name} list inherited from defaults.yaml."
            properties[f"{name}+"] = appended


def _with_variables(node: Any) -> Any:
    """`node` accepting a ${variable} wherever it takes a number, a boolean or a restricted string."""
    if not isinstance(node, dict) or "$ref" in node:
        return node
    if "anyOf" in node:
        members = [_with_variables(m) for m in node["anyOf"]]
        restricted = [m for m in node["anyOf"] if _restricted(m)]
        node["anyOf"] = [m for m in members if m not in restricted] + [_strip(m) for m in restricted]
        if restricted:
            node["anyOf"].append(VARIABLE_REF)
        return node
    if node.get("type") == "object":
        _adjust_object(node)
        if isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = _with_variables(node["additionalProperties"])
        return node
    if node.get("type") == "array":
        if isinstance(node.get("items"), dict):
            node["items"] = _with_variables(node["items"])
        if isinstance(node.get("prefixItems"), list):
            node["prefixItems"] = [_with_variables(item) for item in node["prefixItems"]]
        return node
    if _restricted(node):
        outer = {key: node[key] for key in MOVED_UP if key in node}
        return {**outer, "anyOf": [_strip(node), VARIABLE_REF]}
    return node


def _restricted(node: Any) -> bool:
    """A value a ${variable} string would not match as is, but its replacement can: a number or a
    boolean (the string is converted), a restricted string. Not an enumeration of numbers: the
    loader compares those with the string and rejects it."""
    if not isinstance(node, dict) or "$ref" in node or "anyOf" in node:
        return False
    choices = node.get("enum", [node["const"]] if "const" in node else [])
    if any(not isinstance(choice, str) for choice in choices):
        return False
    return node.get("type") in ("integer", "number", "boolean") or bool(choices) or any(
        key in node for key in ("pattern", "maxLength", "minLength"))


def _strip(node: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in node.items() if key not in MOVED_UP}


def _is_list(node: dict[str, Any]) -> bool:
    return node.get("type") == "array" or any(
        isinstance(m, dict) and m.get("type") == "array" for m in node.get("anyOf", ()))


def _drop_unknown_formats(node: Any) -> None:
    """pydantic writes `format: path`; strict validators reject formats they do not know."""
    if isinstance(node, dict):
        if isinstance(node.get("format"), str) and node["format"] not in STANDARD_FORMATS:
            del node["format"]
        for value in node.values():
            _drop_unknown_formats(value)
    elif isinstance(node, list):
        for value in node:
            _drop_unknown_formats(value)
