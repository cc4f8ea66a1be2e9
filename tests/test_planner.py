"""The pure planner (issue 9 item 4): one rule for "which upstream outputs are known", used by
plan/status, cache pull and the engine's up-to-date pass; keys computed from plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from bmbuild.planner import Expected


@dataclass(eq=False)
class FakeNode:
    """What the walk reads of a node: its id, its stage's name and its upstream nodes."""

    name: str
    deps: list["FakeNode"] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"r:{self.name}"

    @property
    def stage(self) -> SimpleNamespace:
        return SimpleNamespace(name=self.name)


def test_upstream_outputs_are_known_only_through_settled_nodes():
    trace = FakeNode("trace")
    fp32 = FakeNode("compile_fp32", [trace])
    calibrate = FakeNode("calibrate", [fp32])
    quantize = FakeNode("quantize", [fp32, calibrate])
    expected = Expected()
    assert expected.pending(trace) is None and expected.upstream(trace) == {}
    assert expected.pending(fp32) is trace
    expected.record(trace, {"m.pt": "a" * 64})
    assert expected.pending(fp32) is None
    assert expected.upstream(fp32) == {"trace": {"m.pt": "a" * 64}}
    expected.record(fp32, {"m.onnx": "b" * 64})
    expected.record(calibrate, None)  # runs: its outputs are unknown until then
    assert expected.pending(quantize) is calibrate
    expected.record(calibrate, {"t": "c" * 64})
    assert expected.upstream(quantize) == {"compile_fp32": {"m.onnx": "b" * 64}, "calibrate": {"t": "c" * 64}}


def test_plan_and_cache_pull_compute_the_same_keys(workspace, write_recipe, run_bmbuild, tmp_path, monkeypatch):
    """Both walk the graph with the planner: after a change of compile_fp32's parameter, the keys
    `cache pull <recipe>` asks for are those the executor decides on, node for node."""
    from bmbuild.cache_ops import recipe_keys
    from bmbuild.executor import Executor
    from bmbuild.project import plan, prepare
    from bmbuild.workspace import Workspace

    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe)[0] == 0
    recipe = write_recipe("tiny", fp32={"opt": 2})
    monkeypatch.setenv("BMBUILD_REMOTE_CACHE", str(tmp_path / "remote"))
    build = prepare([str(recipe)], Workspace.at())
    rows = {row.node.stage.name: row.status.value for row in plan(build)}
    assert rows == {"trace": "up-to-date", "compile_fp32": "run"}
    keys, unknown = recipe_keys(build)
    executor = Executor(build.workspace)
    try:
        decided = [executor.decide(node).key for node in build.nodes]
    finally:
        executor.stat.close()
    assert unknown == 0 and keys == decided
