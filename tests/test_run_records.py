"""What a run leaves behind (issue 11 item 9): a failed gate is in the stage's log, and a run that
had nothing to do keeps the timings of the run that built the outputs in report.json."""

from __future__ import annotations

import json

from conftest import read_report


def test_a_failed_tolerance_gate_is_written_to_the_stage_log(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny", fp32={"tolerance": {"sqnr": 500.0}})  # identical tensors measure 200 dB at most
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1 and outcomes("tiny")["compile_fp32"] == "failed", out + err
    log = (workspace / "build" / "tiny" / "logs" / "compile_fp32.log").read_text()
    assert "FAILED: tolerance not met:" in log and "sqnr" in log and "< 500" in log.split("FAILED:")[1], log

    # the same gate failing on cached metrics (nothing recompiled) is logged too
    (workspace / "build" / "tiny" / "logs" / "compile_fp32.log").unlink()
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    assert "FAILED: tolerance not met:" in (workspace / "build" / "tiny" / "logs" / "compile_fp32.log").read_text()


def test_a_noop_run_keeps_the_timings_of_the_run_that_built_the_outputs(workspace, write_recipe, run_bmbuild,
                                                                       outcomes):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    built = read_report("tiny")
    assert all(stage["seconds"] > 0 for stage in built["stages"].values())

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0 and "nothing to do" in out, out + err
    again = read_report("tiny")
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}  # what this run did
    for name, stage in again["stages"].items():
        assert stage["seconds"] == built["stages"][name]["seconds"]  # what building them took
        assert stage["timing_from"] == built["generated"]
    # a third no-op still names the run that measured them, not the no-op before it
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    assert {s["timing_from"] for s in read_report("tiny")["stages"].values()} == {built["generated"]}


def test_timings_of_another_key_or_an_unreadable_report_are_not_kept(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    path = workspace / "build" / "tiny" / "report.json"
    report = json.loads(path.read_text())
    report["stages"]["trace"]["key"] = "0" * 64  # not the key of the output there now
    report["stages"]["compile_fp32"]["seconds"] = "slow"  # read back: untrusted
    path.write_text(json.dumps(report))
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    stages = read_report("tiny")["stages"]
    assert stages["trace"]["seconds"] == 0.0 and "timing_from" not in stages["trace"]
    assert stages["compile_fp32"]["seconds"] == 0.0
    path.write_text("{not json")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    assert read_report("tiny")["stages"]["trace"]["outcome"] == "up-to-date"
