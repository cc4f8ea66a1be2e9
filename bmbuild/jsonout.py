"""`--json` output of the commands: one JSON document on stdout, shapes documented in docs/json.md.

Every document carries `schema_version` (bumped only when a field changes meaning or goes away;
new fields may appear at any time) and `command`. Human-readable progress goes to stderr meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

from bmbuild.errors import BmbuildError, RecipeError

SCHEMA_VERSION = 1


def document(command: str, **fields: Any) -> dict[str, Any]:
    """The envelope every `--json` document shares."""
    return {"schema_version": SCHEMA_VERSION, "command": command, **fields}


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=str)


def error_items(exc: BmbuildError) -> list[dict[str, Any]]:
    """An error as a list of {message, file, line, key, hint} (several for RecipeErrors)."""
    if isinstance(exc, RecipeError):
        parts = getattr(exc, "errors", None) or [exc]
        return [{"message": e.message, "file": e.file, "line": e.line, "key": e.key, "hint": e.hint}
                for e in parts]
    return [message_item(str(exc))]


def message_item(message: str) -> dict[str, Any]:
    """An error known only by its text, in the shape of `error_items`."""
    return {"message": message, "file": None, "line": None, "key": None, "hint": None}


def error_document(command: str, exc: BmbuildError) -> dict[str, Any]:
    """What a command prints under `--json` when it stops with an error."""
    return document(command, ok=False, exit_code=exc.exit_code, errors=error_items(exc))
