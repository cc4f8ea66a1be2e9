"""What keeps a no-op cheap (issue 12): versions read once, libyaml with the same line numbers,
and up-to-date nodes settled before doit, which then schedules only what may have to run."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from bmbuild import engine
from bmbuild.toolchains import base
from bmbuild.yamlsource import load_yaml

TRICKY = """\
# a comment first
name: tiny   # trailing comment
base: &base
  opt: 1
  dyn: false
fp32:
  <<: *base
  tolerance: {cos: 0.9,
              euclid: 0.8}
shapes:
  - [1, 3, 8, 8]
  -
    - 2
    - 3
description: >
  folded text
  over lines
notes: |
  literal
  block
"last": 'quoted'
"""


def test_package_version_reads_metadata_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def version(name: str) -> str:
        calls.append(name)
        if name == "nothing-here":
            raise metadata.PackageNotFoundError(name)
        return "1.2.3"

    base._package_version.cache_clear()
    monkeypatch.setattr(metadata, "version", version)
    try:
        assert [base.package_version("torch") for _ in range(5)] == ["1.2.3"] * 5
        assert [base.package_version("nothing-here") for _ in range(3)] == ["absent"] * 3
        assert calls == ["torch", "nothing-here"]
        # another search path may hold other distributions: asked again
        monkeypatch.setattr(sys, "path", [*sys.path, "/elsewhere"])
        assert base.package_version("torch") == "1.2.3"
        assert calls == ["torch", "nothing-here", "torch"]
    finally:
        base._package_version.cache_clear()


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_recipes_are_parsed_by_libyaml_with_the_same_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from yaml._yaml import CParser

    from bmbuild import yamlsource

    file = tmp_path / "r.yaml"
    file.write_text(TRICKY)
    with monkeypatch.context() as pure:  # PyYAML's Python loader: the reference
        pure.setattr(yamlsource, "_FastLoader", yamlsource._Loader)
        expected_data, expected_map = load_yaml(file)
    used: list[type] = []
    real = yamlsource._FastLoader

    class Spy(real):  # type: ignore[valid-type,misc]
        def __init__(self, stream: str, name: Path):
            used.append(real)
            super().__init__(stream, name)

    monkeypatch.setattr(yamlsource, "_FastLoader", Spy)
    data, smap = load_yaml(file)
    assert used == [real] and issubclass(real, CParser)
    assert data == expected_data
    assert smap.lines == expected_map.lines
    assert smap.lines[("fp32", "tolerance", "euclid")] == 9
    assert smap.lines[("shapes", 1, 1)] == 14
    assert smap.lines[("last",)] == 21


class DoitSpy:
    """Stands in for DoitMain: records which tasks each run is given, then runs the real one."""

    def __init__(self, real: type):
        self.real = real
        self.calls: list[list[str]] = []

    def __call__(self, loader, **kwargs):
        spy = self

        class Wrapped:
            def run(self, argv):
                spy.calls.append(sorted(task.name for task in loader.load_tasks(None, [])))
                return spy.real(loader, **kwargs).run(argv)

        return Wrapped()


def test_doit_gets_only_the_nodes_that_may_have_to_run(workspace, write_recipe, run_bmbuild, outcomes, monkeypatch):
    a, b = write_recipe("a"), write_recipe("b")
    assert run_bmbuild("run", workspace / "recipes", "--plain")[0] == 0
    spy = DoitSpy(engine.DoitMain)
    monkeypatch.setattr(engine, "DoitMain", spy)

    code, out, err = run_bmbuild("run", workspace / "recipes", "--plain")
    assert code == 0, out + err
    assert "nothing to do: 4 stage(s) up to date" in out
    assert spy.calls == []  # a no-op never starts doit

    write_recipe("b", fp32={"opt": 2})  # compile_fp32 of b only
    code, out, err = run_bmbuild("run", workspace / "recipes", "--plain")
    assert code == 0, out + err
    assert spy.calls == [["b:compile_fp32"]]
    assert outcomes("a") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}
    assert outcomes("b") == {"trace": "up-to-date", "compile_fp32": "executed"}

    write_recipe("a", source={"kwargs": {"channels": 6}})  # a's trace, then its compile after it
    code, out, err = run_bmbuild("run", a, b, "--plain")
    assert code == 0, out + err
    assert spy.calls[-1] == ["a:compile_fp32", "a:trace"]
    assert outcomes("a") == {"trace": "executed", "compile_fp32": "executed"}
    assert outcomes("b") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}


def test_a_repeated_noop_leaves_the_reports_alone(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    assert run_bmbuild("run", recipe, "--plain")[0] == 0  # outcomes change to up-to-date: rewritten
    report = workspace / "build" / "tiny" / "report.json"
    before = report.stat()
    (workspace / ".bmbuild" / "noop-snapshot.json").unlink(missing_ok=True)  # the full check runs

    code, out, _ = run_bmbuild("run", recipe, "--plain")

    assert code == 0 and "nothing to do" in out
    after = report.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}
