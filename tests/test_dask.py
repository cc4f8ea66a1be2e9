"""Cluster builds (`--executor dask`) on a real Dask `LocalCluster`: 2 worker processes, 1 thread each.

The scheduler runs in this process, so a scheduler plugin sees every task bmbuild submits: how
often each stage was submitted and started (a stage already in the remote cache never is), on
which worker, with which resources. Outcomes come from report.json, outputs are compared byte by
byte with a local build of the same recipes, and the remote cache is checked for entries whose
objects are missing or corrupt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from conftest import BASE_RECIPE, TINY_MODELS, bmbuild_command, build_outputs, deep_merge, read_report, subprocess_env
from test_kill import _kill_group, _wait_for
from test_remote_cache import assert_folder_remote_consistent, folder_entries, s3, s3_endpoint  # noqa: F401
from test_remote_cache import entry_digests, sha256

pytest.importorskip("distributed")

ZOO = {"alpha": {"seed": 1}, "beta": {"seed": 2, "channels": 6}, "gamma": {"seed": 3, "depth": 1}}
STAGES = ("trace", "compile_fp32")
KILLER = '''
import os, signal
from pathlib import Path
from tiny_models import tiny_cnn


def killer(marker: str, seed: int = 0):
    """The first call kills its own process (a worker dying mid-stage); later calls build the net."""
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return tiny_cnn(seed=seed)
'''


def yaml_text(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


# --- the cluster ----------------------------------------------------------------------------
def task_log(scheduler: Any) -> Any:
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Plugin(TaskLog, SchedulerPlugin):
        pass

    return Plugin(scheduler)


class TaskLog:
    """A scheduler plugin: every bmbuild task that starts processing, with its worker and resources."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self.lock = threading.Lock()
        self.started: list[tuple[str, str, dict[str, float]]] = []  # (node id, worker, resources)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish != "processing" or not str(key).startswith("bmbuild-"):
            return
        task = self.scheduler.tasks[key]
        worker = task.processing_on.address if task.processing_on else ""
        node_id = str(key)[len("bmbuild-"):].rsplit("-", 1)[0]
        with self.lock:
            self.started.append((node_id, worker, dict(task.resource_restrictions or {})))

    def clear(self) -> None:
        with self.lock:
            self.started.clear()

    def counts(self) -> Counter:
        with self.lock:
            return Counter(node_id for node_id, _, _ in self.started)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """2 worker processes, 1 thread each, declaring a `slot` resource; AWS test credentials (moto)
    in their environment, as real workers have their own."""
    from distributed import LocalCluster

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "NO_PROXY": "127.0.0.1,localhost",
           "BMBUILD_TOOLCHAINS_DIR": str(tmp_path_factory.mktemp("toolchains")), "OMP_NUM_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      resources={"slot": 1}, env=env, silence_logs=logging.ERROR) as local:
        local.tasks = task_log(local.scheduler)
        local.scheduler.add_plugin(local.tasks, name="bmbuild-test-tasks")
        yield local


@pytest.fixture
def tasks(cluster: Any) -> TaskLog:
    """The cluster's task log, emptied; the test waits for both workers (a killed one restarts)."""
    from distributed import Client

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)
    cluster.tasks.clear()
    return cluster.tasks


def worker_addresses(cluster: Any) -> set[str]:
    return set(cluster.scheduler.workers)


# --- recipes and builds -----------------------------------------------------------------------
def write_zoo(root: Path, names: tuple[str, ...] = tuple(ZOO)) -> Path:
    folder = root / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TINY_MODELS, folder / "tiny_models.py")
    for name in names:
        data = deep_merge({"name": name, **BASE_RECIPE}, {"source": {"kwargs": ZOO[name]}})
        (folder / f"{name}.yaml").write_text(yaml_text(data))
    return folder


@pytest.fixture(scope="module")
def local_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The zoo built locally (no cluster, no remote): recipe -> output digests."""
    from bmbuild.cli import main

    root = tmp_path_factory.mktemp("local") / "ws"
    write_zoo(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BMBUILD_CACHE_DIR", str(root.parent / "cache"))
        patch.chdir(root)
        assert main(["run", "recipes", "--plain"]) == 0
    return {name: stage_outputs(root, name) for name in ZOO}


def stage_outputs(root: Path, name: str) -> dict[str, str]:
    """Digests of a recipe's stage outputs and each stage's key. The manifests' metrics are left
    out: they measure floating point, which the threads of the process measuring it may change."""
    outputs = {}
    for rel, digest in build_outputs(root, name).items():
        stage, _, file = rel.partition("/")
        if file == ".bmbuild-manifest.json":
            outputs[f"{stage} key"] = json.loads((root / "build" / name / rel).read_text())["key"]
        else:
            outputs[rel] = digest
    return outputs


def outcomes_and_workers(name: str) -> dict[str, tuple[str, str]]:
    return {stage: (data["outcome"], data.get("worker", "")) for stage, data in read_report(name)["stages"].items()}


def running_lines(out: str) -> Counter:
    """node id -> how often the console said it started on a worker."""
    return Counter(line.split()[1] for line in out.splitlines() if line.startswith("  running ") and " on " in line)


def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, label: str, names: tuple[str, ...] = tuple(ZOO)) -> Path:
    """A workspace with the zoo and its own empty local cache; the cwd from now on."""
    root = tmp_path / label
    write_zoo(root, names)
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(tmp_path / f"cache-{label}"))
    monkeypatch.chdir(root)
    return root


# --- builds -----------------------------------------------------------------------------------
def test_zoo_builds_on_the_cluster_once_per_stage_and_matches_a_local_build(
        tmp_path, monkeypatch, cluster, tasks, local_build, run_bmbuild):
    remote = tmp_path / "remote"
    root = clone(tmp_path, monkeypatch, "a")
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--executor", "dask", "--scheduler",
                                 cluster.scheduler_address, "--remote-cache", remote)

    assert code == 0, out + err
    nodes = {f"{name}:{stage}" for name in ZOO for stage in STAGES}
    assert tasks.counts() == {node: 1 for node in nodes}           # each stage ran once across the cluster
    assert running_lines(out) == {node: 1 for node in nodes}       # and the console said where
    workers = worker_addresses(cluster)
    for name in ZOO:
        report = outcomes_and_workers(name)
        assert {stage: outcome for stage, (outcome, _) in report.items()} == dict.fromkeys(STAGES, "executed")
        assert {worker for _, worker in report.values()} <= workers
        assert stage_outputs(root, name) == local_build[name]      # byte-identical to a local build
    started_on = {node: worker for node, worker, _ in tasks.started}
    assert {started_on[f"{name}:{stage}"] for name in ZOO for stage in STAGES} <= workers
    assert "executed   alpha:trace" in out and f"on {started_on['alpha:trace']}" in out
    entries = folder_entries_by_node(remote)
    assert set(entries) == nodes
    assert_folder_remote_consistent(remote)

    # the same workspace again: nothing is submitted
    tasks.clear()
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", remote)
    assert code == 0, out + err
    assert "nothing to do" in out and tasks.counts() == {}

    # a fresh clone: every stage comes from the remote cache, restored here; nothing is submitted
    tasks.clear()
    other = clone(tmp_path, monkeypatch, "b")
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", remote)
    assert code == 0, out + err
    assert tasks.counts() == {} and running_lines(out) == {}
    for name in ZOO:
        assert {stage: o for stage, (o, _) in outcomes_and_workers(name).items()} == dict.fromkeys(STAGES, "restored")
        assert stage_outputs(other, name) == local_build[name]

    # a corrupt object in the shared cache: that stage runs again, on the cluster, and is pushed whole
    onnx = next(d for rel, d in entries["alpha:compile_fp32"]["outputs"].items() if rel.endswith(".onnx"))
    corrupt = remote / "objects" / onnx[:2] / onnx
    corrupt.write_bytes(corrupt.read_bytes()[:-1] + b"!")
    tasks.clear()
    third = clone(tmp_path, monkeypatch, "c")
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", remote)
    assert code == 0, out + err
    assert "does not match its digest" in err
    assert tasks.counts() == {"alpha:compile_fp32": 1}
    assert outcomes_and_workers("alpha")["compile_fp32"] == ("executed", started_on_now(tasks, "alpha:compile_fp32"))
    for name in ZOO:
        assert stage_outputs(third, name) == local_build[name]
    assert_folder_remote_consistent(remote)


def test_a_stage_on_a_worker_shows_its_progress_in_the_clients_plain_output(
        tmp_path, monkeypatch, cluster, tasks, run_bmbuild):
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
    from int8_support import BASE, MODELS, write_npz

    root = tmp_path / "ws"
    (root / "recipes").mkdir(parents=True)
    shutil.copyfile(MODELS, root / "recipes" / MODELS.name)
    write_npz(root / "recipes" / "data" / "calib.npz")
    recipe = deep_merge({"name": "tiny8", **BASE}, {"calibration": {"samples": 16}, "int8": {"cmp_samples": 8}})
    (root / "recipes" / "tiny8.yaml").write_text(yaml_text(recipe))
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(root)

    code, out, err = run_bmbuild("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", tmp_path / "remote")
    assert code == 0, out + err
    assert tasks.counts()["tiny8:calibrate"] == 1 and tasks.counts()["tiny8:compile_int8"] == 1  # on workers
    clock = r"\[\d\d:\d\d:\d\d\]"
    for node, total, label in (("tiny8:calibrate", 16, "calibration samples"),
                               ("tiny8:compile_int8", 8, "int8 vs fp32 samples")):
        lines = out.splitlines()
        running = next(i for i, line in enumerate(lines) if line.startswith(f"  running    {node} on "))
        progress = [(i, int(m.group(1))) for i, line in enumerate(lines)
                    if (m := re.fullmatch(rf"  progress   {node}  (\d+)/{total} {label} \(\d+%\) [\d.]+s  {clock}",
                                          line))]
        assert progress and progress[-1][1] == total, out   # the worker's progress, shown by the client
        assert all(i > running for i, _ in progress), out    # after the line saying where it runs
        assert [done for _, done in progress] == [1, *(total * q // 4 for q in (1, 2, 3, 4))]  # a line per quarter


def started_on_now(tasks: TaskLog, node_id: str) -> str:
    return next(worker for node, worker, _ in tasks.started if node == node_id)


def folder_entries_by_node(remote: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for path in (remote / "actions").rglob("*.json"):
        data = json.loads(path.read_text())
        entries[f"{data['recipe']}:{data['stage']}"] = data
    return entries


def test_zoo_builds_through_s3_with_the_cluster_set_in_bmbuild_yaml(
        tmp_path, monkeypatch, cluster, tasks, local_build, run_bmbuild, s3):  # noqa: F811
    names = ("alpha", "beta")
    root = clone(tmp_path, monkeypatch, "a", names)
    (root / "bmbuild.yaml").write_text(yaml_text({
        "remote_cache": s3.url,
        "executor": {"kind": "dask", "scheduler": cluster.scheduler_address,
                     "resources": {"compile_fp32": {"slot": 1}}}}))
    code, out, err = run_bmbuild("run", "recipes", "--plain")

    assert code == 0, out + err
    nodes = {f"{name}:{stage}" for name in names for stage in STAGES}
    assert tasks.counts() == {node: 1 for node in nodes}
    # resources as configured: compile_fp32 asks for a slot, trace for nothing
    assert {node: resources for node, _, resources in tasks.started} == {
        f"{name}:{stage}": ({"slot": 1} if stage == "compile_fp32" else {}) for name in names for stage in STAGES}
    for name in names:
        assert {stage: o for stage, (o, _) in outcomes_and_workers(name).items()} == dict.fromkeys(STAGES, "executed")
        assert stage_outputs(root, name) == local_build[name]
    assert {(e["recipe"], e["stage"]) for e in s3_entries(s3)} == {tuple(n.split(":")) for n in nodes}
    s3.assert_consistent()


def s3_entries(bucket: Any) -> list[dict[str, Any]]:
    return [json.loads(data) for data in bucket.keys("actions").values()]


def test_a_worker_killed_mid_stage_is_rescheduled_and_nothing_half_written_is_cached(
        tmp_path, monkeypatch, cluster, tasks, run_bmbuild):
    remote = tmp_path / "remote"
    root = clone(tmp_path, monkeypatch, "a", ("alpha",))
    (root / "recipes" / "killer_models.py").write_text(KILLER)
    marker = tmp_path / "killed-once"
    recipe = deep_merge({"name": "victim", **BASE_RECIPE},
                        {"source": {"model": "killer_models.py:killer", "kwargs": {"marker": str(marker)}}})
    (root / "recipes" / "victim.yaml").write_text(yaml_text(recipe))

    code, out, err = run_bmbuild("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", remote)

    assert code == 0, out + err
    assert marker.exists()  # the first attempt did kill its worker
    assert tasks.counts() == {"victim:trace": 2, "victim:compile_fp32": 1, "alpha:trace": 1, "alpha:compile_fp32": 1}
    for name in ("victim", "alpha"):
        assert {stage: o for stage, (o, _) in outcomes_and_workers(name).items()} == dict.fromkeys(STAGES, "executed")
    # the remote holds one complete entry per stage and no object of the killed attempt
    entries = folder_entries_by_node(remote)
    assert set(entries) == {"victim:trace", "victim:compile_fp32", "alpha:trace", "alpha:compile_fp32"}
    assert_folder_remote_consistent(remote)
    referenced = {digest for entry in entries.values() for digest in entry_digests(entry)}
    stored = {path.name for path in (remote / "objects").rglob("*") if path.is_file()}
    assert stored == referenced
    for stage in STAGES:
        manifest = json.loads((root / "build" / "victim" / stage / ".bmbuild-manifest.json").read_text())
        for rel, digest in manifest["outputs"].items():
            assert sha256((root / "build" / "victim" / stage / rel).read_bytes()) == digest


def test_a_toolchain_unusable_on_the_workers_fails_with_their_reason_and_keep_going_builds_the_rest(
        tmp_path, monkeypatch, cluster, tasks, run_bmbuild):
    from test_nntc_toolchain import DOUBLE, activate

    remote = tmp_path / "remote"
    root = clone(tmp_path, monkeypatch, "a", ("alpha",))
    activate(monkeypatch, DOUBLE, tmp_path / "double.jsonl")  # NNTC here, on the client only
    recipe = deep_merge({"name": "vendor", **BASE_RECIPE}, {"toolchain": "nntc"})
    (root / "recipes" / "vendor.yaml").write_text(yaml_text(recipe))

    code, out, err = run_bmbuild("run", "recipes", "--plain", "-k", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", remote)

    assert code == 2, out + err  # an unusable toolchain is the user's setup (errors.py)
    report = outcomes_and_workers("vendor")
    assert report["trace"][0] == "executed"
    outcome, worker = report["compile_fp32"]
    assert outcome == "failed" and worker in worker_addresses(cluster)
    assert f"toolchain 'nntc' is not usable on worker {worker}: Python modules not importable" in out
    assert "bmnetp" in out and "commands not on PATH" in out
    assert {stage: o for stage, (o, _) in outcomes_and_workers("alpha").items()} == dict.fromkeys(STAGES, "executed")
    assert "vendor:compile_fp32" not in folder_entries_by_node(remote)


def test_without_keep_going_a_failure_cancels_what_has_not_started_and_running_stages_finish(
        tmp_path, monkeypatch, cluster, tasks, run_bmbuild):
    remote = tmp_path / "remote"
    root = clone(tmp_path, monkeypatch, "a", ())
    bad_log = root / "build" / "bad" / "logs" / "trace.log"  # written here once bad:trace has failed
    (root / "recipes" / "bad.yaml").write_text(yaml_text(
        deep_merge({"name": "bad", **BASE_RECIPE}, {"source": {"model": "tiny_models.py:branchy"}})))
    (root / "recipes" / "slow.yaml").write_text(yaml_text(
        deep_merge({"name": "slow", **BASE_RECIPE}, {"source": {"kwargs": {"wait_for": str(bad_log),
                                                                            "wait_seconds": 120}}})))

    code, out, err = run_bmbuild("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", remote)

    assert code == 1, out + err  # the traced model differs from eager: a stage ran and failed
    assert outcomes_and_workers("bad")["trace"][0] == "failed"
    assert outcomes_and_workers("bad")["compile_fp32"][0] == "blocked"
    assert {stage: o for stage, (o, _) in outcomes_and_workers("slow").items()} == {"trace": "executed"}
    assert "slow:compile_fp32" not in tasks.counts()  # cancelled before it started
    assert running_lines(out) == {"bad:trace": 1, "slow:trace": 1}  # bad:compile_fp32's task ran nothing
    assert "data-dependent control flow" in out and "slow:compile_fp32" not in out


def test_a_killed_client_corrupts_nothing_and_a_rerun_reuses_what_the_workers_finished(
        tmp_path, monkeypatch, cluster, tasks, run_bmbuild):
    remote = tmp_path / "remote"
    root = clone(tmp_path, monkeypatch, "a", ())
    marker, release = tmp_path / "started", tmp_path / "release"
    recipe = deep_merge({"name": "slow", **BASE_RECIPE},
                        {"source": {"kwargs": {"marker": str(marker), "wait_for": str(release)}}})
    (root / "recipes" / "slow.yaml").write_text(yaml_text(recipe))
    command = bmbuild_command("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                              "--remote-cache", remote)
    proc = subprocess.Popen(command, cwd=root, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(marker.exists, 120, "the trace stage to start on a worker", proc)
    finally:
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    release.write_text("go")  # the orphaned stage finishes on its worker and pushes its entry
    _wait_for(lambda: "slow:trace" in folder_entries_by_node(remote), 120, "the orphaned stage's entry")
    assert not list(root.glob("build/**/.bmbuild-manifest.json"))  # nothing half-done looks complete

    tasks.clear()
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", remote)
    assert code == 0, out + err
    assert outcomes_and_workers("slow")["trace"][0] == "restored"
    assert outcomes_and_workers("slow")["compile_fp32"][0] == "executed"
    assert tasks.counts() == {"slow:compile_fp32": 1}
    assert_folder_remote_consistent(remote)
    assert not list((root / "build" / "slow").glob(".tmp/*"))


# --- a worker's own checks, without a cluster (run_task called here) --------------------------------
def trace_task(root: Path, remote: Path, **expected: Any) -> Any:
    """The task the client would submit for alpha:trace, with `expected` components overridden."""
    from bmbuild.cluster import RemoteSettings, StageTask
    from bmbuild.executor import Executor
    from bmbuild.project import prepare
    from bmbuild.workspace import Workspace

    build = prepare([str(root / "recipes" / "alpha.yaml")], Workspace.at(root))
    node = next(n for n in build.nodes if n.stage.name == "trace")
    executor = Executor(build.workspace)
    components = {k: v for k, v in executor.components(node, {}).items() if k != "upstream"}
    executor.stat.close()
    return StageTask("test", node.loaded, "trace", node.toolchain, {**components, **expected}, {},
                     RemoteSettings(str(remote), {}, 30.0))


def test_a_worker_that_sees_other_inputs_than_the_client_fails_clearly_and_runs_nothing(tmp_path, monkeypatch):
    from bmbuild.cluster import run_task

    root = clone(tmp_path, monkeypatch, "a", ("alpha",))
    task = trace_task(root, tmp_path / "remote", inputs={"tiny_models.py": "0" * 64})
    result = run_task(task)
    assert not result.ok and result.exit_code == 2
    assert "does not see what the client planned with: input tiny_models.py changed" in result.message
    assert not (tmp_path / "remote" / "actions").exists()

    task = trace_task(root, tmp_path / "remote", toolchain={"name": "torch", "versions": {"torch": "0.1"}})
    assert "toolchain changed: {'name': 'torch', 'versions': {'torch': '0.1'}}" in run_task(task).message


def test_a_worker_that_cannot_see_the_workspace_says_so(tmp_path, monkeypatch):
    from bmbuild.cluster import run_task

    root = clone(tmp_path, monkeypatch, "a", ("alpha",))
    task = trace_task(root, tmp_path / "remote")
    (root / "recipes" / "tiny_models.py").rename(root / "elsewhere.py")  # not there for the "worker"
    result = run_task(task)
    assert not result.ok and result.exit_code == 2
    assert f"cannot read {root / 'recipes' / 'tiny_models.py'}" in result.message
    assert "workers must see the workspace" in result.message


# --- mistakes, without a cluster ----------------------------------------------------------------
@pytest.mark.parametrize("args, config, message", [
    (["--executor", "dask"], None, "the dask executor needs a scheduler"),
    (["--executor", "local", "--scheduler", "tcp://127.0.0.1:1"], None, "--scheduler is for --executor dask"),
    (["--scheduler", "tcp://127.0.0.1:1"], None, "the dask executor needs a shared remote cache"),
    ([], {"executor": {"kind": "dask", "scheduler": "tcp://127.0.0.1:1"}}, "needs a shared remote cache"),
    ([], {"executor": {"kind": "cluster"}}, "executor.kind"),
])
def test_a_cluster_build_without_what_it_needs_is_one_clear_error(workspace, write_recipe, run_bmbuild, args,
                                                                   config, message):
    write_recipe("tiny")
    if config is not None:
        (workspace / "bmbuild.yaml").write_text(yaml_text(config))
    code, out, err = run_bmbuild("run", "recipes", "--plain", *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (workspace / "build" / "tiny" / "trace").exists()


def test_resources_a_stage_requests():
    from bmbuild.cluster import stage_resources

    # tpu-mlir stages ask for the tpu-mlir resource, but only when some worker declares it
    assert stage_resources("compile_int8", "tpu-mlir", {}, {"tpu-mlir"}) == {"tpu-mlir": 1}
    assert stage_resources("compile_int8", "tpu-mlir", {}, set()) == {}
    assert stage_resources("trace", None, {}, {"tpu-mlir"}) == {}
    # bmbuild.yaml adds by toolchain and by stage, or turns a default off
    configured = {"reference": {"cpu": 2}, "calibrate": {"memory": 8e9}, "tpu-mlir": {}}
    assert stage_resources("calibrate", "reference", configured, set()) == {"cpu": 2, "memory": 8e9}
    assert stage_resources("compile_int8", "tpu-mlir", configured, {"tpu-mlir"}) == {}


def test_a_resource_no_worker_declares_is_refused_before_anything_is_submitted(
        tmp_path, monkeypatch, cluster, tasks, run_bmbuild):
    root = clone(tmp_path, monkeypatch, "a", ("alpha",))
    (root / "bmbuild.yaml").write_text(yaml_text({"executor": {"resources": {"trace": {"gpu": 1}}}}))
    code, out, err = run_bmbuild("run", "recipes", "--plain", "--scheduler", cluster.scheduler_address,
                                 "--remote-cache", tmp_path / "remote")
    assert code == 2, out + err
    assert "requests gpu, which no worker" in err and "--resources gpu=1" in err
    assert tasks.counts() == {}
