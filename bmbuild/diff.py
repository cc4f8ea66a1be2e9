"""`bmbuild diff`: per model, the metrics and the recipe parameters that changed against a baseline.

Like `dvc metrics diff` + `dvc params diff`. Both sides are report summaries (bmbuild.report.collect):
the current one from this workspace's build folder, the baseline a saved `summary.json`, a git
revision, or (`--remote`) the remote cache's last build of each recipe (bmbuild.buildrecords). A revision is built in a temporary copy of the repository at that commit, with this
workspace's action cache: a revision built before (here, or by CI through a shared cache) is only
restored, nothing runs again. Files git does not track are not in that copy.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bmbuild.errors import BmbuildError

# (key, label, digits): the metrics compared, read from a summary's model entry
METRICS = (
    ("fp32.cos", "fp32 cos", 6), ("fp32.sqnr", "fp32 SQNR dB", 1),
    ("int8.cos", "int8 cos", 6), ("int8.sqnr", "int8 SQNR dB", 2), ("int8.top1", "int8 top-1 agree", 4),
    ("accuracy.fp32", "accuracy fp32", 4), ("accuracy.int8", "accuracy int8", 4),
    ("size.compile_fp32", "fp32 model bytes", 0), ("size.compile_int8", "int8 model bytes", 0),
)


def model_metrics(model: dict[str, Any]) -> dict[str, float | None]:
    """The compared metrics of one summary model entry (None where it has none)."""
    out: dict[str, float | None] = {}
    for key, _label, _digits in METRICS:
        section, name = key.split(".")
        if section == "size":
            stage = next((s for s in model.get("stages") or [] if isinstance(s, dict) and s.get("stage") == name), None)
            value = stage.get("output_bytes") if stage and stage.get("outcome") != "failed" else None
        else:
            value = (model.get(section) or {}).get(name) if isinstance(model.get(section) or {}, dict) else None
        out[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return out


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"int8": {"tolerance": {"cos": 0.9}}} -> {"int8.tolerance.cos": 0.9}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def diff_models(base: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """One model's changes: status, each metric (old, new, change), each changed parameter."""
    old, new = model_metrics(base), model_metrics(current)
    metrics = {}
    for key, _label, _digits in METRICS:
        if old[key] is None and new[key] is None:
            continue
        change = new[key] - old[key] if old[key] is not None and new[key] is not None else None  # type: ignore[operator]
        metrics[key] = {"old": old[key], "new": new[key], "change": change}
    old_params, new_params = flatten(base.get("params") or {}), flatten(current.get("params") or {})
    params = {key: {"old": old_params.get(key), "new": new_params.get(key)}
              for key in sorted(set(old_params) | set(new_params)) if old_params.get(key) != new_params.get(key)}
    return {"name": current.get("name") or base.get("name"), "status": {"old": base.get("status"),
                                                                       "new": current.get("status")},
            "metrics": metrics, "params": params}


def diff_summaries(base: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model of either side (current ones first); a model on one side only has None on the other."""
    old = {m["name"]: m for m in base.get("models", [])}
    new = {m["name"]: m for m in current.get("models", [])}
    return [diff_models(old.get(name, {"name": name}), new.get(name, {"name": name}))
            for name in dict.fromkeys([*new, *old])]


# --- baselines ----------------------------------------------------------------------------
def load_summary(path: Path) -> dict[str, Any]:
    """A saved summary.json (untrusted: checked for the shape used here)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BmbuildError(f"{path}: not a readable summary.json ({exc})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in models):
        raise BmbuildError(f"{path}: not a bmbuild summary.json (no list of models with names); "
                           "write one with `bmbuild report` or `bmbuild run --report-dir`")
    return data


def _git(root: Path, *args: str, binary: bool = False) -> Any:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=not binary)
    if result.returncode != 0:
        err = result.stderr if not binary else result.stderr.decode(errors="replace")
        raise BmbuildError(f"git {' '.join(args)}: {err.strip() or 'failed'}")
    return result.stdout


def git_commit(root: Path, rev: str) -> str | None:
    """The commit `rev` names in the repository holding `root`; None when it names none (or no git)."""
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                                capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def summary_at_revision(workspace: Any, commit: str, recipes: list[Path]) -> dict[str, Any]:
    """Build `recipes` (files of this workspace) as they were at `commit`, with this workspace's cache."""
    top = Path(_git(workspace.root, "rev-parse", "--show-toplevel").strip()).resolve()
    with tempfile.TemporaryDirectory(prefix="bmbuild-diff-") as tmp:
        tree = Path(tmp) / "tree"
        with tarfile.open(fileobj=io.BytesIO(_git(top, "archive", "--format=tar", commit, binary=True))) as tar:
            tar.extractall(tree, filter="data")
        cwd = tree / workspace.root.resolve().relative_to(top)
        wanted = [str(cwd / p.resolve().relative_to(workspace.root.resolve())) for p in recipes]
        present = [p for p in wanted if Path(p).is_file()]
        if not present:
            return {"models": []}
        env = dict(os.environ, BMBUILD_CACHE_DIR=str(workspace.cache_dir),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH")])))
        report = Path(tmp) / "report"
        result = subprocess.run([sys.executable, "-m", "bmbuild", "run", *present, "-k", "--plain", "-q",
                                 "--report-dir", str(report)], cwd=cwd, env=env, capture_output=True, text=True)
        if not (report / "summary.json").is_file():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise BmbuildError(f"building the recipes at {commit[:12]} wrote no summary:\n{tail}")
        return load_summary(report / "summary.json")


def baseline(spec: str, workspace: Any, recipes: list[Path]) -> tuple[str, dict[str, Any]]:
    """(description, summary) of a saved summary.json or a git revision."""
    path = Path(spec)
    if path.is_dir() and (path / "summary.json").is_file():
        path = path / "summary.json"
    if path.is_file():
        return str(path), load_summary(path)
    commit = git_commit(workspace.root, spec)
    if commit is None:
        raise BmbuildError(f"{spec!r} is neither a summary.json nor a git revision of {workspace.root}")
    return f"git {spec} ({commit[:12]})", summary_at_revision(workspace, commit, recipes)


# --- output -------------------------------------------------------------------------------
def fmt_value(value: Any, digits: int) -> str:
    """A metric or parameter value as `diff` and the report's baseline table print it."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return json.dumps(value) if not isinstance(value, str) else value


def render(rows: list[dict[str, Any]], show_all: bool = False) -> list[str]:
    """Text lines: per model, what changed (every metric with --all)."""
    digits = {key: d for key, _label, d in METRICS}
    labels = {key: label for key, label, _d in METRICS}
    lines = []
    for row in rows:
        status = row["status"]
        head = f"{row['name']}: {status['old'] or 'absent'} -> {status['new'] or 'absent'}" \
            if status["old"] != status["new"] else f"{row['name']}: {status['new']}"
        body = []
        for key, values in row["metrics"].items():
            if not show_all and fmt_value(values["old"], digits[key]) == fmt_value(values["new"], digits[key]):
                continue
            change = "" if values["change"] is None else f"{values['change']:+.{digits[key]}f}"
            body.append(f"  {labels[key]:<22} {fmt_value(values['old'], digits[key]):>14} "
                        f"{fmt_value(values['new'], digits[key]):>14}  {change}".rstrip())
        for key, values in row["params"].items():
            body.append(f"  param {key:<16} {fmt_value(values['old'], 6):>14} {fmt_value(values['new'], 6):>14}")
        lines.append(head + ("" if body else "  (no change)"))
        if body:
            lines.append(f"  {'':<22} {'baseline':>14} {'current':>14}  change")
            lines += body
    return lines
