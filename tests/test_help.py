"""Honest help: every option explains itself, the top-level help shows examples and exit codes,
options mean one thing across commands, and a missing extra names the pip install."""

from __future__ import annotations

import argparse
import importlib.util
import re

import pytest

from bmbuild.cli import build_parser


def walk(parser: argparse.ArgumentParser, path: str = "bmbuild"):
    """(command path, parser, action) for every argument of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, child in action.choices.items():
                yield path, parser, ("subcommand", name, name in helped)
                yield from walk(child, f"{path} {name}")
        else:
            yield path, parser, action


def test_every_option_and_subcommand_has_help():
    missing = []
    for path, _, action in walk(build_parser()):
        if isinstance(action, tuple):
            if not action[2]:
                missing.append(f"{path} {action[1]}")
        elif action.dest != "help" and not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_top_level_help_has_examples_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "bmbuild run recipes/resnet.yaml" in text
    codes = re.findall(r"^\s+([0-3])\s+\S", text.split("exit codes:")[1], re.MULTILINE)
    assert codes == ["0", "1", "2", "3"]


def test_clean_has_no_cache_option_it_would_ignore(run_bmbuild, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["clean", "--cache-dir", "x"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --cache-dir" in capsys.readouterr().err


def test_remote_means_the_remote_instead_of_the_local_cache_everywhere(workspace, write_recipe, run_bmbuild,
                                                                      tmp_path):
    helps = {path: action.help for path, _, action in walk(build_parser())
             if not isinstance(action, tuple) and "--remote" in action.option_strings}
    assert set(helps) == {"bmbuild cache ls", "bmbuild cache gc", "bmbuild cache verify", "bmbuild diff", "bmbuild report"}
    assert all("instead of the local one" in text for text in helps.values()), helps
    write_recipe("tiny")
    remote = tmp_path / "remote"
    assert run_bmbuild("run", "recipes", "--remote-cache", remote)[0] == 0
    code, out, err = run_bmbuild("cache", "gc", "--max-size", "0", "--remote", "--remote-cache", remote)
    assert code == 0, err
    assert not list((remote / "actions").rglob("*.json"))
    code, out, _ = run_bmbuild("cache", "ls", "--json")
    assert '"stage": "compile_fp32"' in out  # the local cache was left alone


def test_a_missing_reference_extra_names_the_pip_install(monkeypatch, run_bmbuild):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    code, out, _ = run_bmbuild("toolchains")
    assert code == 0
    assert "python packages missing: onnx (install the reference toolchain with `pip install 'bmbuild[reference]'`)" \
        in out
