"""A seeded recipe fuzzer: valid recipes, workspace configs and defaults files, damaged at random.

Each case runs `bmbuild validate` in-process (bmbuild.cli.main) and the library call behind it.
Whatever the damage, the answer is exit 0 or 2, never a traceback or another exception, each
error line starts with `file:line:` and names a key unless the text is not YAML at all, and a
case never hangs (a hang guard stops a case after HANG_SECONDS).

BMBUILD_FUZZ_CASES (default 400) and BMBUILD_FUZZ_SEED (default 0) choose the run; a failure
prints the seed and the damaged text, so one case can be replayed.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import os
import random
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

CASES = int(os.environ.get("BMBUILD_FUZZ_CASES", "400"))
SEED = int(os.environ.get("BMBUILD_FUZZ_SEED", "0"))
HANG_SECONDS = 30  # a hang guard, not a speed test: a case takes milliseconds
CLI_EVERY = 4  # every case runs the library; every 4th also the whole CLI (argparse costs more than a case)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # only writes the fuzzer's inputs

SOURCE = {"framework": "pytorch", "model": "tiny_models.py:tiny_cnn", "kwargs": {"channels": 4}}
BASES: list[dict[str, Any]] = [
    {"name": "fp32", "toolchain": "reference", "source": SOURCE, "shapes": [[1, 3, 8, 8]],
     "fp32": {"opt": 1, "cmp_samples": 1, "tolerance": {"cos": 0.99, "euclid": 0.9}}},
    {"name": "int8", "toolchain": "reference", "source": SOURCE, "shapes": [[1, 3, 8, 8]], "prec": "INT8",
     "batch_sizes": [1, 2], "inputs": [{"name": "x", "dtype": "float32"}],
     "calibration": {"data": "calib", "samples": 8, "method": "kl", "bins": 256,
                     "preprocess": {"resize": 8, "center_crop": [8, 8], "mean": [1, 2, 3], "scale": 0.5}},
     "int8": {"fp32_layers": ["conv1"], "tolerance": {"cos": 0.8}},
     "eval": {"data": "eval.npz", "metric": "top1", "max_drop": 2.0, "limit": 4}},
    {"name": "matrix", "source": SOURCE, "shapes": [[1, 3, 8, 8]],
     "variants": {"fp32.opt": [0, 2], "prec": ["FP32"]}},
    {"name": "listed", "source": {"framework": "onnx", "model": "tiny.onnx"}, "shapes": [[2, 3, 8, 8]],
     "variants": [{"fp32.opt": 0, "suffix": "o0"}, {"fp32.dyn": True}]},
]
CONFIG = {"build_dir": "out", "jobs": 2, "vars": {"data": "/tmp/data"}, "remote_cache_options": {"a": {"b": 1}}}
DEFAULTS = {"toolchain": "reference", "fp32": {"cmp_samples": 2}, "int8": {"fp32_layers+": ["fc"]}}

KEYS = ["name", "source", "model", "kwargs", "shapes", "fp32", "int8", "opt", "prec", "variants", "calibration",
        "data", "tolerance", "cos", "suffix", "fp32_layers+", "<<", "vars", "jobs", "", " ", "näme", "a.b",
        "x" * 300, "new\nline", "nul\0key", "${root}", "1", "true", "~", "-", "?", "*", "&a"]
STRINGS = ["", " ", "a", "FP32", "INT8", "pytorch", "onnx", "tiny_models.py:tiny_cnn", "tiny_models.py:",
           ":", "a:b:c", "nowhere.py:net", "new\nline.py:net", "/etc/passwd", "../../../etc", "x" * 1000, "n" * 101,
           "nul\0byte", "line\nbreak", "tab\there", "ünïcödé 漢字 🙂", "\u202eevil", "\x01\x7f\x1b[31m",
           "${nope}", "${root}/x", "${", "$${x}", "%s%n", "'quote\"", "\\", "- item", "key: value",
           "{a: 1}", "[1, 2]", "*alias", "&anchor", "!tag", "#comment", "\ufeffbom", "2024-01-31", "0x1F",
           "1e999", ".nan", "-.inf", "0o17", "1_000", "12:30:00", "yes", "No", "null", "~"]
NUMBERS = [0, 1, -1, 2, 3, 7, 255, 2**31, 2**63, -2**63, 2**64 + 1, 10**300, -(10**50), 0.5, -0.0,
           1e308, float("inf"), float("-inf"), float("nan"), 1e-320]
SPECIAL = list(":{}[],&*!|>'\"%@`#-?\t\n ") + ["\0", "\r", "\x85", "\u2028", "\ufeff", "\\", "<<: "]
TAGS = ["!foo ", "!!python/object/apply:os.system ", "!!python/name:os.system ", "!!binary ", "!!int ",
        "!!float ", "!!bool ", "!!null ", "!!str ", "!!set ", "!!omap ", "!!timestamp ", "!!map ",
        "!!seq ", "! ", "!<tag:yaml.org,2002:str> ", "!<!x> ", "!!merge "]

# document-level messages: the text is not YAML (or not a mapping), so there is no key to name
NO_KEY = ("invalid YAML", "not UTF-8", "a recipe must be a mapping", "a defaults file must be a mapping",
          "a workspace config must be a mapping", "syntax error in model file")
ERROR_LINE = re.compile(r"^(?P<file>/[^\n]*?\.(?:yaml|yml|py)):(?P<line>\d+): ")


# --- random values and mutations ------------------------------------------------------------

def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if kind < 0.3:
        return rng.choice(STRINGS)
    if kind < 0.55:
        return rng.choice(NUMBERS)
    if kind < 0.65:
        return rng.choice([True, False, None])
    if kind < 0.8 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind < 0.95 and depth < 3:
        return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    deep: Any = rng.choice(STRINGS)
    for _ in range(rng.randint(1, 120)):
        deep = [deep] if rng.random() < 0.5 else {"k": deep}
    return deep


def containers(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(data, (dict, list)):
        yield path, data
        items = data.items() if isinstance(data, dict) else enumerate(data)
        for key, value in items:
            yield from containers(value, path + (key,))


def mutate_data(rng: random.Random, data: Any) -> str:
    """Change `data` in place; returns the mutation's name."""
    found = list(containers(data))
    if not found:
        return "none"
    _, target = rng.choice(found)
    op = rng.choice(["delete", "insert", "replace", "rename", "empty", "duplicate"])
    if isinstance(target, dict):
        keys = list(target)
        if op == "delete" and keys:
            del target[rng.choice(keys)]
        elif op == "replace" and keys:
            target[rng.choice(keys)] = random_value(rng)
        elif op == "rename" and keys:
            key = rng.choice(keys)
            value = target.pop(key)
            text = str(key)
            cut = rng.randrange(len(text) + 1)
            target[rng.choice([text[:cut] + text[cut + 1:], text[:cut] + text[cut:cut + 1] * 2 + text[cut + 1:],
                               text.upper(), rng.choice(KEYS)])] = value
        elif op == "empty" and keys:
            target[rng.choice(keys)] = rng.choice([{}, [], "", None])
        else:
            op = "insert"
            target[rng.choice(KEYS)] = random_value(rng)
    else:
        if op == "delete" and target:
            del target[rng.randrange(len(target))]
        elif op == "replace" and target:
            target[rng.randrange(len(target))] = random_value(rng)
        elif op == "duplicate" and target:
            target.extend(target[:1] * rng.randint(1, 50))
        else:
            op = "insert"
            target.insert(rng.randrange(len(target) + 1), random_value(rng))
    return op


def _value_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if re.match(r"^\s*[-\w.+]+: \S", line) or line.lstrip().startswith("- ")]


def _before_value(line: str, insert: str) -> str:
    at = line.find(": ") + 2 if ": " in line else line.find("- ") + 2
    return line[:at] + insert + line[at:]


def mutate_text(rng: random.Random, text: str) -> str:
    """YAML-level damage: syntax, indentation, aliases, tags, nesting, bombs, documents."""
    lines = text.splitlines() or [""]
    op = rng.randrange(14)
    values = _value_lines(lines)
    if op == 0:  # a special character somewhere
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(SPECIAL) + text[at:]
    if op == 1 and len(text) > 2:  # a span cut out
        at = rng.randrange(len(text))
        return text[:at] + text[at + rng.randint(1, 20):]
    if op == 2:  # a line dropped, repeated or moved
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        choice = rng.randrange(3)
        if choice == 0:
            del lines[i]
        elif choice == 1:
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
    elif op == 3:  # indentation
        i = rng.randrange(len(lines))
        lines[i] = (" " * rng.randint(1, 3) + lines[i]) if rng.random() < 0.5 else lines[i][rng.randint(1, 3):]
    elif op == 4 and len(values) >= 2:  # an anchor and a later alias to it
        i, j = sorted(rng.sample(values, 2))
        lines[i] = _before_value(lines[i], "&a ")
        lines[j] = _before_value(lines[j], "*a") if rng.random() < 0.7 else lines[j] + " *a"
        lines[j] = lines[j].split("*a")[0] + "*a"
    elif op == 5:  # a value that holds itself
        lines.append(rng.choice(["fp32: &r [*r]", "fp32: &r {x: *r}", "int8: &r {<<: *r}",
                                 "source: &r {kwargs: {a: [*r]}}", "shapes: *undefined", "a: &x 1\nb: &x 2"]))
    elif op == 6 and values:  # a tag
        i = rng.choice(values)
        lines[i] = _before_value(lines[i], rng.choice(TAGS))
    elif op == 7:  # deep nesting, flow or block
        depth = rng.choice([10, 63, 64, 65, 66, 100, 500, 3000])
        if rng.random() < 0.5:
            opener = rng.choice(["[", "{a: ", "[{b: "])
            closer = {"[": "]", "{a: ": "}", "[{b: ": "}]"}[opener]
            lines.append(f"{rng.choice(KEYS[:12])}: " + opener * depth + "x" + closer * depth)
        else:
            lines.append("deep:")
            lines += ["  " * (k + 1) + "k:" for k in range(min(depth, 200))] + ["  " * 202 + "v: 1"]
    elif op == 8:  # an alias bomb of random fan-out and depth
        fan, levels = rng.randint(2, 10), rng.randint(2, 9)
        lines.append("l0: &l0 [" + ", ".join(["lol"] * fan) + "]")
        lines += [f"l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * fan) + "]" for k in range(1, levels)]
        if rng.random() < 0.5:
            lines.append(f"int8: {{fp32_layers: *l{levels - 1}}}")
    elif op == 9 and values:  # a merge key
        i = rng.choice(values)
        lines[i] = _before_value(lines[i], "&m ")
        lines.append(rng.choice(["fp32:\n  <<: *m", "fp32: {<<: [*m, *m]}", "int8: {<<: *m, opt: 1}",
                                 "fp32: {<<: 3}"]))
    elif op == 10:  # more documents, or directives
        lines.append(rng.choice(["---", "--- \nname: again", "...", "%YAML 1.1\n---", "%TAG ! tag:x,2000:\n---"]))
    elif op == 11:  # line endings and tabs
        text = rng.choice([text.replace("\n", "\r\n"), text.replace("\n", "\r"), text.replace("  ", "\t"),
                           "\ufeff" + text, text + "\0", text.replace("\n", "\u2028")])
        return text
    elif op == 12:  # an odd key
        lines.insert(rng.randrange(len(lines) + 1),
                     rng.choice(["? [a, b]\n: 1", "? {a: 1}\n: 1", "~: 1", "1.5: x", "true: x", "2024-01-01: x",
                                 "[a]: 1", "'': 1", "\"\\0\": 1", "\"\\u0085\": 1", "? |\n  block\n: 1"]))
    else:  # a huge or odd scalar
        if values:
            i = rng.choice(values)
            lines[i] = lines[i][: lines[i].find(":") + 1 if ":" in lines[i] else 0] + " " + rng.choice(
                ["9" * rng.choice([10, 4300, 4301, 20000]), "0x" + "f" * 5000, "1" + "0" * 400 + ".5",
                 "\"" + "\\u00e9" * 1000 + "\"", "|\n  multi\n  line", ">-\n  folded", "\"\\x00\"", "'a\n\n  b'"])
    return "\n".join(lines) + "\n"


def mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    """Byte-level damage: flips, NULs, invalid UTF-8, truncation."""
    if not raw:
        return rng.choice([b"\0", b"\xff", b""])
    op = rng.randrange(5)
    at = rng.randrange(len(raw))
    if op == 0:
        return raw[:at] + bytes([raw[at] ^ (1 << rng.randrange(8))]) + raw[at + 1:]
    if op == 1:
        return raw[:at] + rng.choice([b"\0", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xe2\x80"]) + raw[at:]
    if op == 2:
        return raw[:at]
    if op == 3:
        return raw[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + raw[at:]
    return raw.replace(b"\n", b"\n\0", 1)


# --- one case ---------------------------------------------------------------------------------

@dataclass
class Case:
    seed: int
    target: Path
    steps: list[str]
    raw: bytes


def write_data_files(folder: Path) -> None:
    """The files the bases name, real enough for `validate`'s checks of them (bmbuild.preflight):
    24 images (8 calibration + 16 held-out samples), an evaluation set, a one-input ONNX model."""
    import numpy as np
    import onnx
    from PIL import Image

    (folder / "calib").mkdir()
    for i in range(24):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "calib" / f"{i:02d}.png")
    np.savez(folder / "eval.npz", x=np.zeros((4, 3, 8, 8), np.float32), y=np.zeros(4, np.int64))
    io = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])
          for name in ("input", "output")]
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input"], ["output"])], "tiny", io[:1], io[1:])
    onnx.save(onnx.helper.make_model(graph), str(folder / "tiny.onnx"))


def make_case(seed: int, root: Path) -> Case:
    """Write a workspace state for `seed`; returns which file was damaged and how."""
    rng = random.Random(seed)
    recipes = root / "recipes"
    for extra in ("defaults.yaml", "sub"):
        path = recipes / extra
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (root / "bmbuild.yaml").unlink(missing_ok=True)
    recipe_dir = recipes / "sub" if rng.random() < 0.3 else recipes
    recipe_dir.mkdir(exist_ok=True)
    if recipe_dir != recipes:
        shutil.copy(recipes / "tiny_models.py", recipe_dir / "tiny_models.py")
        shutil.copytree(recipes / "calib", recipe_dir / "calib")
        for name in ("eval.npz", "tiny.onnx"):
            shutil.copy(recipes / name, recipe_dir / name)
    files: dict[Path, Any] = {recipe_dir / "recipe.yaml": rng.choice(BASES)}
    if rng.random() < 0.25:
        files[recipes / "defaults.yaml"] = DEFAULTS
    if rng.random() < 0.2:
        files[root / "bmbuild.yaml"] = CONFIG
    target = rng.choice(list(files)) if rng.random() < 0.4 else recipe_dir / "recipe.yaml"
    steps: list[str] = []
    raw = b""
    for path, base in files.items():
        data = copy.deepcopy(base)
        if path != target:
            path.write_text(yaml.dump(data, Dumper=DUMPER, sort_keys=False))
            continue
        for _ in range(rng.choice([1, 1, 2, 3, 4])):
            steps.append("data:" + mutate_data(rng, data))
        text = yaml.dump(data, Dumper=DUMPER, sort_keys=False, allow_unicode=rng.random() < 0.5,
                         default_flow_style=rng.choice([False, None, True]), width=rng.choice([80, 10**6]))
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            steps.append("text")
            text = mutate_text(rng, text)
        raw = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.15:
            steps.append("bytes")
            raw = mutate_bytes(rng, raw)
        path.write_bytes(raw)
    return Case(seed, target, steps, raw)


class CaseHang(Exception):
    pass


@contextlib.contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise CaseHang(f"no answer after {seconds}s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def error_class(message: str) -> str:
    """A message without its variable parts, for the summary."""
    text = re.sub(r" \(.*", "", message)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", text)
    return " ".join(text.split())[:48]


def library_errors(recipe: Path, root: Path) -> list[Any]:
    """What `bmbuild validate` does, as RecipeErrors (empty when valid)."""
    from bmbuild.errors import RecipeError
    from bmbuild.preflight import recipe_problems
    from bmbuild.recipe import RecipeErrors, load_recipes
    from bmbuild.workspace import load_config

    try:
        loaded = load_recipes([recipe], root, load_config(root).vars)
    except RecipeErrors as exc:
        return exc.errors
    except RecipeError as exc:
        return [exc]
    return [problem for item in loaded for problem in recipe_problems(item)]  # the files each names


def check_case(case: Case, root: Path, validate: Callable[[Path], tuple[int, str, str]] | None,
               ) -> tuple[str, list[str]]:
    """('ok' | 'error: <class>', problems) of one case; through the CLI too when `validate` is given."""
    recipe = next((root / "recipes").rglob("recipe.yaml"))
    with hang_guard(HANG_SECONDS):
        errors = library_errors(recipe, root)
        code, out, err = validate(recipe) if validate else (2 if errors else 0, "recipe(s) valid", "")
        problems = check_errors(errors) if errors else check_plan(recipe, root)
    if validate:
        problems += check_cli(code, out, err, errors)
    outcome = "ok" if not errors else "error: " + error_class(errors[0].message)
    return outcome, problems


def check_plan(recipe: Path, root: Path) -> list[str]:
    """A recipe that validates also plans (its action keys hash every value it holds)."""
    from bmbuild.errors import BmbuildError
    from bmbuild.project import plan, prepare
    from bmbuild.workspace import Workspace

    try:
        rows = plan(prepare([str(recipe)], Workspace.at(root), check_toolchains=False))
    except BmbuildError as exc:
        return [f"valid, but plan says: {exc}"]
    return [] if rows else ["valid, but plan has no stages"]


def check_errors(errors: list[Any]) -> list[str]:
    """Each error names a file, a line inside it and (unless the text is not YAML) a key."""
    problems = []
    for error in errors:
        if not error.file or error.line is None or error.line < 1:
            problems.append(f"no file or line: {error}")
        elif Path(error.file).is_file() and error.line > Path(error.file).read_text(errors="replace").count("\n") + 2:
            problems.append(f"line {error.line} past the end of {error.file}: {error}")
        if "\n" in error.render():
            problems.append(f"a message of several lines: {error.render()!r}")
        if not error.key and not error.message.startswith(NO_KEY):
            problems.append(f"no key: {error}")
    return problems


def check_cli(code: int, out: str, err: str, errors: list[Any]) -> list[str]:
    """Exit 0 or 2, no traceback, every error line starting with file:line:."""
    problems = []
    if code not in (0, 2):
        problems.append(f"exit code {code}")
    if "Traceback" in out + err:
        problems.append("a traceback")
    if code == 2:
        lines = err.rstrip("\n").split("\n")
        if not lines[0].startswith("error: "):
            problems.append(f"first line is not an error: {lines[0]!r}")
        lines[0] = lines[0].removeprefix("error: ")
        for line in lines:
            if not ERROR_LINE.match(line):
                problems.append(f"error line without file:line: {line!r}")
    elif "recipe(s) valid" not in out:
        problems.append(f"exit 0 without 'valid': {out!r}")
    if (code == 2) != bool(errors):
        problems.append(f"cli exit {code} but the library raised {len(errors)} error(s)")
    return problems


@pytest.fixture
def cli_validate() -> Callable[[Path], tuple[int, str, str]]:
    from bmbuild.cli import main

    def run(recipe: Path) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", str(recipe)])
        return code, out.getvalue(), err.getvalue()

    return run


def test_fuzzed_recipes_are_valid_or_one_clear_error_each(workspace, cli_validate):
    recipes = workspace / "recipes"
    write_data_files(recipes)
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    for seed in range(SEED, SEED + CASES):
        case = make_case(seed, workspace)
        try:
            outcome, problems = check_case(case, workspace, cli_validate if seed % CLI_EVERY == 0 else None)
        except Exception as exc:  # noqa: BLE001 - anything escaping the library is the finding
            outcome, problems = "crash", [f"{type(exc).__name__}: {exc}"]
        counts[outcome] += 1
        if outcome != "ok":
            counts["error (all classes)"] += 1
        if problems:
            failures.append(f"seed {seed} ({case.target.name}, {' '.join(case.steps)}): {problems}\n"
                            f"  text: {case.raw[:400]!r}")
    summary = "\n".join(f"  {n:5d}  {name}" for name, n in counts.most_common())
    print(f"\nrecipe fuzz: {CASES} cases from seed {SEED} ({CASES // CLI_EVERY} through the CLI)\n{summary}")
    assert not failures, f"{len(failures)} failing case(s):\n" + "\n".join(failures[:10])
    # the fuzzer reaches both sides: damage that is harmless, and damage of many kinds
    assert counts["ok"] >= CASES // 50 and len(counts) >= 12, summary


def test_fuzz_bases_are_valid(workspace):
    """The fuzzer damages valid inputs: each base recipe (with the defaults file and the workspace
    config) validates and plans as it is."""
    recipes = workspace / "recipes"
    write_data_files(recipes)
    (recipes / "defaults.yaml").write_text(yaml.safe_dump(DEFAULTS))
    (workspace / "bmbuild.yaml").write_text(yaml.safe_dump(CONFIG))
    for base in BASES:
        (recipes / "recipe.yaml").write_text(yaml.safe_dump(base))
        assert library_errors(recipes / "recipe.yaml", workspace) == []
        assert check_plan(recipes / "recipe.yaml", workspace) == []
