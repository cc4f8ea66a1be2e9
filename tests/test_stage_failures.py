"""A stage that does not do its job fails with the measured numbers, keeps its log, and stops
only its own model's downstream stages."""

from __future__ import annotations

import re


from conftest import build_outputs, read_report

IMPOSSIBLE = {"tolerance": {"sqnr": 500.0}}  # identical tensors measure at most 200 dB


def test_trace_that_differs_from_eager_fails_with_numbers(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("branchy", source={"model": "tiny_models.py:branchy"})

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 1, out + err
    assert "Traceback" not in out + err
    # without --keep-going doit stops: the downstream stage is reported as blocked
    assert outcomes("branchy")["trace"] == "failed"
    assert outcomes("branchy")["compile_fp32"] == "blocked"
    assert "differs from eager" in out
    match = re.search(r"max abs error ([0-9.eE+-]+)", out)
    assert match and float(match.group(1)) > 0.1, out
    assert "cosine" in out
    log = workspace / "build" / "branchy" / "logs" / "trace.log"
    assert f"full log: {log}" in out
    assert log.is_file() and "differs from eager" in log.read_text()
    report = read_report("branchy")
    assert report["ok"] is False
    assert "differs from eager" in report["stages"]["trace"]["error"]
    assert not (workspace / "build" / "branchy" / "trace").exists()
    assert not (workspace / "build" / "branchy" / "compile_fp32").exists()


def test_failed_stage_is_reported_once(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("branchy", source={"model": "tiny_models.py:branchy"})
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    status_lines = [ln for ln in out.splitlines() if ln.split()[:2] == ["failed", "branchy:trace"]]
    assert len(status_lines) == 1, out


def test_impossible_fp32_tolerance_fails_with_measured_numbers(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny", fp32=IMPOSSIBLE)

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 1, out + err
    assert "Traceback" not in out + err
    assert outcomes("tiny") == {"trace": "executed", "compile_fp32": "failed"}
    assert "tolerance not met" in out
    match = re.search(r"b1/output: SQNR ([0-9.]+) dB < 500\.0 dB", out)
    assert match, out
    measured = read_report("tiny")["stages"]["compile_fp32"]
    assert "SQNR" in measured["error"]
    assert not (workspace / "build" / "tiny" / "compile_fp32").exists()
    assert (workspace / "build" / "tiny" / "logs" / "compile_fp32.log").is_file()

    # the numbers in the message are the ones measured (the log records them too)
    log = (workspace / "build" / "tiny" / "logs" / "compile_fp32.log").read_text()
    sqnr_in_log = float(re.search(r"sqnr=([0-9.]+)dB", log).group(1))
    assert abs(sqnr_in_log - float(match.group(1))) < 0.01


def test_impossible_cosine_and_max_abs(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny", fp32={"tolerance": {"cos": 1.0, "max_abs": 0.0}})
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    assert outcomes("tiny")["compile_fp32"] == "failed"
    assert re.search(r"b1/output: max abs error [0-9.eE+-]+ > 0\.0", out), out


def test_tolerance_is_not_part_of_the_key(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny", fp32=IMPOSSIBLE)
    assert run_bmbuild("run", recipe, "--plain")[0] == 1
    assert outcomes("tiny")["compile_fp32"] == "failed"

    write_recipe("tiny", fp32={"tolerance": {"sqnr": 60.0}})
    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "restored"}
    assert "running" not in out
    assert (workspace / "build" / "tiny" / "compile_fp32" / "tiny.fp32.onnx").is_file()


def test_tightening_a_tolerance_rechecks_without_recompiling(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    before = build_outputs(workspace, "tiny")

    write_recipe("tiny", fp32=IMPOSSIBLE)
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    assert outcomes("tiny")["compile_fp32"] == "failed"
    assert "running    tiny:compile_fp32" not in out
    assert "SQNR" in out

    write_recipe("tiny")
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0
    assert outcomes("tiny")["compile_fp32"] in ("up-to-date", "restored")
    assert build_outputs(workspace, "tiny") == before


def test_keep_going_builds_the_good_recipe(workspace, write_recipe, run_bmbuild, outcomes):
    write_recipe("a_bad", source={"model": "tiny_models.py:branchy"})
    write_recipe("b_good")

    code, out, err = run_bmbuild("run", workspace / "recipes", "--plain", "--keep-going")

    assert code == 1, out + err
    assert outcomes("a_bad") == {"trace": "failed", "compile_fp32": "blocked"}
    assert outcomes("b_good") == {"trace": "executed", "compile_fp32": "executed"}
    assert read_report("b_good")["ok"] is True
    files = build_outputs(workspace, "b_good")
    assert {"trace/b_good.pt", "compile_fp32/b_good.onnx", "compile_fp32/b_good.fp32.onnx"} <= set(files)


def test_without_keep_going_the_good_recipe_is_not_built_after_a_failure(workspace, write_recipe, run_bmbuild):
    write_recipe("a_bad", source={"model": "tiny_models.py:branchy"})
    write_recipe("b_good")
    code, out, _ = run_bmbuild("run", workspace / "recipes", "--plain")
    assert code == 1
    assert not (workspace / "build" / "b_good" / "compile_fp32").exists()


def test_model_factory_exception_fails_with_log_and_no_traceback_on_console(workspace, write_recipe, run_bmbuild,
                                                                             outcomes):
    recipe = write_recipe("tiny", source={"kwargs": {"channels": "four"}})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    assert outcomes("tiny")["trace"] == "failed"
    assert outcomes("tiny")["compile_fp32"] == "blocked"
    assert "TypeError" in out
    log = (workspace / "build" / "tiny" / "logs" / "trace.log").read_text()
    assert "Traceback" in log  # the full traceback is kept in the stage log


def test_failures_in_worker_processes_keep_their_numbers_and_logs(workspace, write_recipe, run_bmbuild, outcomes):
    """-j 2 runs stage work in worker processes: failures must read exactly as in-process."""
    write_recipe("good")
    write_recipe("branchy", source={"model": "tiny_models.py:branchy"})
    write_recipe("crashy", source={"kwargs": {"channels": -1}})  # torch raises inside the factory

    code, out, err = run_bmbuild("run", "recipes", "--plain", "-j", "2", "--keep-going")

    assert code == 1 and "Traceback" not in out + err
    assert outcomes("good") == {"trace": "executed", "compile_fp32": "executed"}
    assert outcomes("branchy") == {"trace": "failed", "compile_fp32": "blocked"}
    assert outcomes("crashy") == {"trace": "failed", "compile_fp32": "blocked"}
    assert "differs from eager" in out and re.search(r"max abs error [0-9.eE+-]+", out)
    crash_log = (workspace / "build" / "crashy" / "logs" / "trace.log").read_text()
    assert "Traceback" in crash_log and "FAILED:" in crash_log  # the traceback stays in the log
    assert (workspace / "build" / "good" / "compile_fp32" / "good.onnx").is_file()


def test_a_huge_error_message_is_cut_on_the_console_and_kept_whole_in_the_log(workspace, write_recipe,
                                                                               run_bmbuild):
    """onnxruntime's 'Required inputs ([...]) are missing' listed 400 tensor names: pages of console."""
    (workspace / "recipes" / "loud.py").write_text(
        "def loud():\n    raise ValueError('missing: ' + ', '.join(f'tensor_{i}__SHAPE' for i in range(400)))\n")
    recipe = write_recipe("loud", source={"model": "loud.py:loud"})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith("loud:trace failed:"))
    assert "tensor_0__SHAPE" in line and "tensor_399__SHAPE" not in out
    assert re.search(r"\.\.\. \(\d+ more characters in the log\)", out)
    assert len(out) < 6000, len(out)
    log = (workspace / "build" / "loud" / "logs" / "trace.log").read_text()
    assert "tensor_399__SHAPE" in log
