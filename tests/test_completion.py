"""`bmbuild completion bash|zsh`: the script completes subcommands, options, choices, in a real shell."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import bmbuild_command, subprocess_env


def script(shell: str) -> str:
    result = subprocess.run(bmbuild_command("completion", shell), capture_output=True, text=True,
                            env=subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


COMPLETE = 'c() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); COMPREPLY=(); _bmbuild_complete; ' \
           'echo "${COMPREPLY[*]}"; }\n'
CASES = {  # words typed (the last one being completed) -> completions
    ("bmbuild", "ru"): "run",
    ("bmbuild", "-q", "pl"): "plan",
    ("bmbuild", "run", "--tool"): "--toolchain",
    ("bmbuild", "run", "--toolchain", ""): "auto reference nntc tpu-mlir tvm",
    ("bmbuild", "cache", "p"): "push pull",
    ("bmbuild", "completion", ""): "bash zsh",
    ("bmbuild", "diff", "--a"): "--all",
}


# zsh calls the function the way bashcompinit's _bash_complete does: through its `compgen -F` (sh
# emulation, ksharrays), then keeps the words starting with the one typed (what compadd does)
ZSH_COMPLETE = 'c() { local -a words out; words=("$@"); COMP_WORDS=("$@"); COMP_CWORD=$(( ${#words} - 1 )); ' \
               'local CURRENT=${#words}; out=( ${(f)"$(compgen -F _bmbuild_complete -- ${words[-1]})"} ); ' \
               'out=( ${(M)out:#${words[-1]}*} ); print -r -- "${(j: :)out}"; }\n'


def run_cases(shell: list[str], text: str, complete: str = COMPLETE) -> dict[tuple[str, ...], str]:
    calls = "".join(f"c {' '.join(repr(w) for w in words)}\n" for words in CASES)
    result = subprocess.run([*shell], input=text + complete + calls, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(zip(CASES, result.stdout.splitlines()))


def test_bash_completion_knows_commands_options_and_choices() -> None:
    assert run_cases(["bash"], script("bash")) == CASES


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)")
def test_zsh_completion_through_bashcompinit() -> None:
    assert run_cases(["zsh", "-f"], script("zsh"), ZSH_COMPLETE) == CASES

