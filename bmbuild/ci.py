"""Habits of CI systems: GitHub Actions annotations for errors, the run summary in the job summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TextIO


def on_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def _escape(text: str, property_value: bool = False) -> str:
    """GitHub's workflow-command escaping (a message may span lines)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property_value else text


def annotate(errors: list[dict[str, Any]], stream: TextIO) -> None:
    """`::error file=F,line=L,title=K::message` per error item (jsonout.error_items), so the error shows
    on the file's line in a pull request; items without a file become a plain `::error::`."""
    for error in errors:
        props = []
        if error.get("file"):
            props.append(f"file={_escape(str(error['file']), True)}")
            if error.get("line"):
                props.append(f"line={int(error['line'])}")
        if error.get("key"):
            props.append(f"title={_escape(str(error['key']), True)}")
        message = error["message"] + (f" ({error['hint']})" if error.get("hint") else "")
        print(f"::error {','.join(props)}::{_escape(message)}" if props else f"::error::{_escape(message)}",
              file=stream, flush=True)


def append_step_summary(markdown: str) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY; None when it is not set (not on GitHub Actions)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as stream:
        stream.write(markdown.rstrip("\n") + "\n")
    return Path(target)
