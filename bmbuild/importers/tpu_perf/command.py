"""The raw command strings of tpu-perf configs, split into a tool, its flags and their values.

tpu-perf runs each string through a shell after `$(var)` expansion, so they are split like a shell
would (`shlex`). Flags are written `--key value`, `--key=value`, `-key=value` (gflags) or bare
switches; a flag's name is compared without its dashes. Whether `--key` takes the next word is
known for the vendor tools' switches; for other flags the next word is a value unless it looks
like a flag itself.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from bmbuild.importers.tpu_perf.tree import ConfigError

FLAG = re.compile(r"^(--?)([A-Za-z_][\w.-]*)(?:=(.*))?$", re.DOTALL)
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SHELL_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "<", "&"}
PYTHONS = re.compile(r"^python(\d+(\.\d+)?)?$")
# Flags that never take a value (tpu-mlir's store_true options, ufw's --cmp).
SWITCHES: dict[str, set[str]] = {
    "model_transform": {"keep_aspect_ratio", "debug", "cache_skip", "dynamic", "onnx_sim_off", "not_split_gather"},
    "model_deploy": {"asymmetric", "quant_input", "quant_output", "not_gen_bmodel", "compare_all", "debug",
                     "disable_layer_group", "fuse_preprocess", "aligned_input", "dynamic", "skip_validation",
                     "merge_weight", "ignore_f16_overflow", "opt_post_processor", "addr_mode_io_alone",
                     "disable_gdma_check", "do_winograd", "cache_skip"},
    "run_calibration": {"sq", "we", "bc", "search", "debug"},
}
# Other spellings of one option (argparse aliases of the tools): flags are handled by the first name.
ALIASES: dict[str, dict[str, str]] = {
    "model_deploy": {"processor": "chip"},
    "run_calibration": {"processor": "chip", "calibration_table": "o"},
}
# Flags whose value may begin with a dash ('-th_method=MSE').
ALWAYS_VALUED = {"try_cali_accuracy_opt", "debug_cmd", "cali_image_preprocess", "fp32_layer_list"}


@dataclass
class Flag:
    name: str
    value: str | None          # None for a bare switch
    written: str               # as in the config
    key: str = ""              # the config key of its command

    def describe(self) -> str:
        """For messages: 'deploy[1] --quantize INT8'."""
        return f"{self.key} {self.written}".strip()


@dataclass
class CommandLine:
    key: str                   # the config key holding it (deploy[1], cali, ...)
    tool: str                  # bmnetp, ufw.cali.cali_model, model_transform, ...
    flags: list[Flag] = field(default_factory=list)
    positionals: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)

    def first(self, name: str) -> Flag | None:
        return next((f for f in self.flags if f.name == name), None)

    def value(self, name: str) -> str | None:
        flag = self.first(name)
        return flag.value if flag else None


def tool_name(words: list[str]) -> tuple[str, int]:
    """('bmnetp', 3) for `python3 -m bmnetp ...`; ('model_transform', 1) for `model_transform.py ...`."""
    head = words[0].rsplit("/", 1)[-1]
    if PYTHONS.match(head) and len(words) > 1:
        if words[1] == "-m" and len(words) > 2:
            return words[2], 3
        if not words[1].startswith("-"):
            return _script(words[1]), 2
    return _script(words[0]), 1


def _script(word: str) -> str:
    return word.rsplit("/", 1)[-1].removesuffix(".py")


def parse_command(text: str, key: str) -> CommandLine:
    """Split one command string; ConfigError when it is not one plain command."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: cannot split the command ({exc})") from None
    env = []
    while words and ENV.match(words[0]):
        env.append(words.pop(0))
    if not words:
        raise ConfigError(f"{key}: empty command")
    operators = [w for w in words if w in SHELL_OPERATORS]
    if operators:
        raise ConfigError(f"{key}: shell syntax ({' '.join(operators)}) is not one command")
    tool, start = tool_name(words)
    command = CommandLine(key, tool, env=env)
    switches = SWITCHES.get(tool, set())
    rest = words[start:]
    i = 0
    while i < len(rest):
        word = rest[i]
        match = FLAG.match(word) if word.startswith("-") else None
        if not match:
            command.positionals.append(word)
            i += 1
            continue
        name, value = match.group(2), match.group(3)
        name = ALIASES.get(tool, {}).get(name, name)
        written = word
        if value is None and name not in switches and i + 1 < len(rest):
            following = rest[i + 1]
            if name in ALWAYS_VALUED or not _looks_like_flag(following):
                value = following
                written = f"{word} {following}"
                i += 1
        command.flags.append(Flag(name, value, written, key))
        i += 1
    return command


def _looks_like_flag(word: str) -> bool:
    return bool(FLAG.match(word)) and not re.match(r"^-\d", word)


def parse_shapes(text: str) -> list[list[int]]:
    """'[1,3,224,224]', '[[1,3,224,224],[1,2]]', '[1,3,640,640];[1,2]' -> [[1, 3, 224, 224], ...]."""
    groups = re.findall(r"\[([^\[\]]*)\]", text)
    if not groups or re.sub(r"[\[\]\s,;\d]", "", text):
        raise ValueError(f"not a list of shapes: {text!r}")
    shapes = []
    for group in groups:
        dims = [d.strip() for d in group.split(",") if d.strip()]
        if not dims or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"not a shape of positive integers: [{group}]")
        shapes.append([int(d) for d in dims])
    return shapes


def parse_bool(text: str | None) -> bool:
    """The spellings the vendor tools take: True/true/1, False/false/0 (a bare switch is true)."""
    if text is None:
        return True
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_floats(text: str, separator: str = ",") -> list[float]:
    return [float(v) for v in text.split(separator) if v.strip()]
