"""The remote cache: a shared folder and a real S3 protocol server (moto) behind `--remote-cache`.

Every test builds the tiny 2-conv recipe in workspace A and then looks at what a *fresh clone*
(workspace B, its own empty local cache) gets from the remote: outcomes come from report.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import build_outputs, read_report, subprocess_env

STAGES = ("trace", "compile_fp32")


# --- helpers ------------------------------------------------------------------------------
def fresh_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, label: str) -> Path:
    """A copy of workspace A's recipes with its own empty local cache; the cwd from now on."""
    source = tmp_path / "ws" / "recipes"
    root = tmp_path / label
    shutil.copytree(source, root / "recipes")
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(tmp_path / f"cache-{label}"))
    monkeypatch.chdir(root)
    return root


def outcomes_of(name: str = "tiny") -> dict[str, str]:
    return {stage: data["outcome"] for stage, data in read_report(name)["stages"].items()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_entries(remote: Path) -> dict[str, dict[str, Any]]:
    """stage -> entry JSON of every action entry in a folder remote."""
    entries = {}
    for path in (remote / "actions").rglob("*.json"):
        data = json.loads(path.read_text())
        entries[data["stage"]] = data
    return entries


def entry_digests(entry: dict[str, Any]) -> list[str]:
    return list(entry["outputs"].values()) + ([entry["log_digest"]] if entry.get("log_digest") else [])


def assert_folder_remote_consistent(remote: Path) -> None:
    """No object under a final name with the wrong content; no entry missing an object."""
    for path in (remote / "objects").rglob("*"):
        if path.is_file():
            assert sha256(path.read_bytes()) == path.name, f"partial or corrupt object {path}"
    for stage, entry in folder_entries(remote).items():
        for digest in entry_digests(entry):
            assert (remote / "objects" / digest[:2] / digest).is_file(), f"{stage} entry without object {digest}"


def assert_outputs_match_manifests(root: Path, name: str = "tiny") -> None:
    outputs = build_outputs(root, name)
    for stage in STAGES:
        manifest = json.loads((root / "build" / name / stage / ".bmbuild-manifest.json").read_text())
        for rel, digest in manifest["outputs"].items():
            assert outputs[f"{stage}/{rel}"] == digest


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return tmp_path / "remote"


@pytest.fixture
def built(workspace: Path, write_recipe, run_bmbuild, remote: Path) -> Path:
    """Workspace A, built with the folder remote: both stages executed and pushed."""
    recipe = write_recipe("tiny")
    code, out, err = run_bmbuild("run", recipe, "--plain", "--remote-cache", remote)
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "executed", "compile_fp32": "executed"}
    assert set(folder_entries(remote)) == set(STAGES)
    return recipe


# --- a shared folder ----------------------------------------------------------------------
def test_fresh_clone_restores_everything_from_the_remote(tmp_path, monkeypatch, workspace, built, remote,
                                                          run_bmbuild):
    expected = build_outputs(workspace, "tiny")
    entries = folder_entries(remote)
    assert entries["trace"]["recipe"] == "tiny" and entries["compile_fp32"]["stage"] == "compile_fp32"

    clone = fresh_clone(tmp_path, monkeypatch, "clone")
    (clone / "bmbuild.yaml").write_text("remote_cache: ../remote\n")  # relative to the workspace root
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain")

    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "restored"}
    assert build_outputs(clone, "tiny") == expected
    assert "warning" not in err

    # what came from the remote is now in the clone's local cache: it works without the remote
    shutil.rmtree(remote)
    shutil.rmtree(clone / "build")
    (clone / "bmbuild.yaml").unlink()
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain")
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "restored"}
    assert build_outputs(clone, "tiny") == expected


def test_a_corrupt_remote_object_is_never_used(tmp_path, monkeypatch, workspace, built, remote, run_bmbuild):
    onnx_digest = next(d for rel, d in folder_entries(remote)["compile_fp32"]["outputs"].items()
                       if rel.endswith(".onnx"))
    obj = remote / "objects" / onnx_digest[:2] / onnx_digest
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    obj.write_bytes(bytes(data))

    clone = fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain", "--remote-cache", remote)

    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "executed"}
    assert "does not match its digest" in err
    assert_outputs_match_manifests(clone)
    # the clone's run replaced the corrupt object: the remote is whole again
    assert_folder_remote_consistent(remote)
    third = fresh_clone(tmp_path, monkeypatch, "third")
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain", "--remote-cache", remote)
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "restored"}
    assert_outputs_match_manifests(third)


def test_a_truncated_object_or_a_leftover_temp_file_is_never_used(tmp_path, monkeypatch, workspace, built,
                                                                   remote, run_bmbuild):
    trace = folder_entries(remote)["trace"]
    pt_digest = next(d for rel, d in trace["outputs"].items() if rel.endswith(".pt"))
    obj = remote / "objects" / pt_digest[:2] / pt_digest
    whole = obj.read_bytes()
    obj.write_bytes(whole[: len(whole) // 2])  # what a copy cut short would leave
    (remote / "tmp").mkdir(exist_ok=True)
    (remote / "tmp" / f"{pt_digest}.{uuid.uuid4().hex}.tmp").write_bytes(whole[:10])

    clone = fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain", "--remote-cache", remote)

    assert code == 0, out + err
    assert outcomes_of()["trace"] == "executed"
    assert_outputs_match_manifests(clone)
    assert_folder_remote_consistent(remote)


def test_an_interrupted_upload_leaves_no_partial_object_and_no_dangling_entry(
        tmp_path, monkeypatch, workspace, write_recipe, run_bmbuild, remote):
    from fsspec.implementations.local import LocalFileSystem

    real_put_file = LocalFileSystem.put_file
    calls = []

    def put_file_cut_short(self, lpath, rpath, **kwargs):
        calls.append(rpath)
        if len(calls) == 2:  # the second upload dies half-way through the copy
            data = Path(lpath).read_bytes()
            Path(rpath).write_bytes(data[: len(data) // 2])
            raise ConnectionResetError("network cable pulled")
        return real_put_file(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "put_file", put_file_cut_short)
    recipe = write_recipe("tiny")
    code, out, err = run_bmbuild("run", recipe, "--plain", "--remote-cache", remote)

    assert code == 0, out + err  # the build does not depend on the remote
    assert outcomes_of() == {"trace": "executed", "compile_fp32": "executed"}
    assert err.count("cannot be written") == 1, err
    assert_folder_remote_consistent(remote)
    assert folder_entries(remote) == {}  # trace's upload failed; later stages were not pushed
    assert not any((remote / "tmp").iterdir())  # the cut-short temp file was cleaned up

    monkeypatch.setattr(LocalFileSystem, "put_file", real_put_file)
    code, out, err = run_bmbuild("cache", "push", "--remote-cache", remote)
    assert code == 0, out + err
    assert "pushed 2 entries" in out
    assert_folder_remote_consistent(remote)

    fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain", "--remote-cache", remote)
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "restored"}


def test_an_unreachable_remote_warns_once_and_the_build_succeeds(workspace, write_recipe, run_bmbuild, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote's parent folder should be")
    unreachable = blocker / "remote"
    recipe = write_recipe("tiny")

    code, out, err = run_bmbuild("run", recipe, "--plain", "--remote-cache", unreachable)

    assert code == 0, out + err
    assert outcomes_of() == {"trace": "executed", "compile_fp32": "executed"}
    assert err.count("warning:") == 1 and "unreachable" in err, err

    # the explicit transfer commands fail instead, with a clear message
    for command in ("push", "pull"):
        code, out, err = run_bmbuild("cache", command, "--remote-cache", unreachable)
        assert code == 2, out + err
        assert f"remote cache {unreachable} cannot be" in err
        assert "Traceback" not in err


def test_plan_without_a_remote_does_not_import_fsspec(workspace, write_recipe):
    recipe = write_recipe("tiny")
    script = ("import sys; from bmbuild.cli import main; code = main(['plan', sys.argv[1]]); "
              "print('FSSPEC', 'fsspec' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, str(recipe)], cwd=workspace, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FSSPEC False" in done.stdout


# --- a real S3 protocol server ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, for this module's tests."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _s3_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, **options: Any) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BMBUILD_REMOTE_OPTIONS",
                       json.dumps({"client_kwargs": {"endpoint_url": endpoint}, **options}))


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket; `s3.url` is the remote cache URL, `s3.client` a boto3 client."""
    import boto3

    _s3_env(monkeypatch, s3_endpoint)
    bucket = f"bmbuild-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)

    class S3:
        url = f"s3://{bucket}/team-cache"
        prefix = "team-cache/"

        def __init__(self) -> None:
            self.client = client
            self.bucket = bucket

        def keys(self, folder: str) -> dict[str, bytes]:
            """name -> content of every object below `<prefix><folder>/`."""
            listing = client.list_objects_v2(Bucket=bucket, Prefix=self.prefix + folder + "/")
            return {item["Key"].rsplit("/", 1)[-1]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    for item in listing.get("Contents", [])}

        def entries(self) -> dict[str, dict[str, Any]]:
            return {json.loads(data)["stage"]: json.loads(data) for data in self.keys("actions").values()}

        def assert_consistent(self) -> None:
            objects = self.keys("objects")
            for name, data in objects.items():
                assert sha256(data) == name, f"partial or corrupt object {name}"
            for stage, entry in self.entries().items():
                for digest in entry_digests(entry):
                    assert digest in objects, f"{stage} entry without object {digest}"

    return S3()


def test_s3_fresh_clone_restores_everything(tmp_path, monkeypatch, workspace, write_recipe, run_bmbuild, s3):
    recipe = write_recipe("tiny")
    code, out, err = run_bmbuild("run", recipe, "--plain", "--remote-cache", s3.url)
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "executed", "compile_fp32": "executed"}
    assert set(s3.entries()) == set(STAGES)
    s3.assert_consistent()
    expected = build_outputs(workspace, "tiny")

    clone = fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain", "--remote-cache", s3.url)

    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "restored"}
    assert build_outputs(clone, "tiny") == expected
    assert "warning" not in err

    code, out, err = run_bmbuild("cache", "ls", "--remote", "--remote-cache", s3.url)
    assert code == 0, out + err
    lines = [line.split() for line in out.splitlines()[1:-1]]
    assert sorted((line[1], line[2]) for line in lines) == [("tiny", "compile_fp32"), ("tiny", "trace")]
    assert "2 entries" in out


def test_s3_interrupted_push_leaves_no_dangling_entry_and_a_later_push_completes(
        tmp_path, monkeypatch, workspace, write_recipe, run_bmbuild, s3):
    from bmbuild.remote import RemoteStore

    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0  # local only
    real_put_object = RemoteStore.put_object
    uploads = []

    def put_object_failing(self, src, digest):
        uploads.append(digest)
        if len(uploads) == 3:
            raise ConnectionResetError("connection reset by peer")
        return real_put_object(self, src, digest)

    monkeypatch.setattr(RemoteStore, "put_object", put_object_failing)
    code, out, err = run_bmbuild("cache", "push", "--remote-cache", s3.url)

    assert code == 2, out + err
    assert "push to" in err and "connection reset" in err and "Traceback" not in err
    s3.assert_consistent()
    assert len(s3.entries()) < 2  # the entry whose object failed was not written
    assert len(s3.keys("objects")) == 2

    monkeypatch.setattr(RemoteStore, "put_object", real_put_object)
    code, out, err = run_bmbuild("cache", "push", "--remote-cache", s3.url)
    assert code == 0, out + err
    s3.assert_consistent()
    assert set(s3.entries()) == set(STAGES)

    fresh_clone(tmp_path, monkeypatch, "clone")
    code, out, err = run_bmbuild("run", "recipes/tiny.yaml", "--plain", "--remote-cache", s3.url)
    assert code == 0, out + err
    assert outcomes_of() == {"trace": "restored", "compile_fp32": "restored"}


def test_s3_verify_finds_a_corrupt_object_and_gc_empties(tmp_path, monkeypatch, workspace, write_recipe,
                                                         run_bmbuild, s3):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain", "--remote-cache", s3.url)[0] == 0
    digest = sorted(s3.keys("objects"))[0]
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}objects/{digest[:2]}/{digest}", Body=b"rotten")

    code, out, err = run_bmbuild("cache", "verify", "--remote", "--remote-cache", s3.url)
    assert code == 1, out + err
    assert f"corrupt object {digest}" in out
    assert digest not in s3.keys("objects")  # deleted
    code, out, err = run_bmbuild("cache", "verify", "--remote", "--remote-cache", s3.url)
    assert code == 0, out + err

    code, out, err = run_bmbuild("cache", "gc", "--max-size", "0", "--remote", "--remote-cache", s3.url)
    assert code == 0, out + err
    assert s3.keys("actions") == {} and s3.keys("objects") == {}
    assert any(p.is_file() for p in (Path(os.environ["BMBUILD_CACHE_DIR"]) / "objects").rglob("*"))  # --remote: only
    code, out, err = run_bmbuild("cache", "gc", "--max-size", "0")
    assert code == 0, out + err
    assert not any(p.is_file() for p in (Path(os.environ["BMBUILD_CACHE_DIR"]) / "objects").rglob("*"))


def test_s3_unreachable_endpoint_warns_once_and_the_build_succeeds(monkeypatch, workspace, write_recipe,
                                                                   run_bmbuild):
    pytest.importorskip("s3fs")
    _s3_env(monkeypatch, f"http://127.0.0.1:{_free_port()}",  # nothing listens there
            config_kwargs={"connect_timeout": 1, "retries": {"max_attempts": 1}})
    recipe = write_recipe("tiny")

    code, out, err = run_bmbuild("run", recipe, "--plain", "--remote-cache", "s3://nowhere/cache")

    assert code == 0, out + err
    assert outcomes_of() == {"trace": "executed", "compile_fp32": "executed"}
    assert err.count("warning:") == 1 and "unreachable" in err, err
    code, out, err = run_bmbuild("cache", "pull", "--remote-cache", "s3://nowhere/cache")
    assert code == 2 and "cannot be read" in err, out + err
