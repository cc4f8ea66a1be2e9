"""Progress inside long stages: timestamped plain lines and log lines at coarse steps (in this
process with -j 1, from a worker process with -j 2), and rows per running stage on a terminal
(through rich's recording console)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import Int8Workspace, ws8  # noqa: E402,F401

from bmbuild.console import BuildConsole  # noqa: E402
from bmbuild.executor import NodeRecord, Outcome  # noqa: E402
from bmbuild.progress import StageProgress, read_progress  # noqa: E402

CLOCK = r"\[\d\d:\d\d:\d\d\]"


def log_progress(ws: Int8Workspace, stage: str) -> list[str]:
    """The '# progress:' lines of a stage's log, without their elapsed times."""
    text = (ws.root / "build" / "tiny8" / "logs" / f"{stage}.log").read_text()
    return [re.sub(r" after [\d.]+s$", "", line) for line in text.splitlines() if line.startswith("# progress:")]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_plain_output_and_stage_log_show_progress_at_coarse_steps(ws8: Int8Workspace, jobs: str) -> None:  # noqa: F811
    recipe = ws8.recipe(calibration={"samples": 16}, int8={"cmp_samples": 8})
    code, out, err = ws8.build(recipe, "-j", jobs)
    assert code == 0, out + err
    assert re.search(rf"^  running    tiny8:calibrate  {CLOCK}$", out, re.M), out
    # -j 2: the stage ran in a worker process and its progress travelled to this one
    assert re.search(rf"^  progress   tiny8:calibrate  16/16 calibration samples \(100%\) [\d.]+s  {CLOCK}$",
                     out, re.M), out
    assert re.search(rf"^  progress   tiny8:compile_int8  8/8 int8 vs fp32 samples \(100%\) [\d.]+s  {CLOCK}$",
                     out, re.M), out
    # the log: the first sample, then each quarter (batch size 1: one call per sample)
    assert log_progress(ws8, "calibrate") == [
        "# progress: 1/16 calibration samples (6%)", "# progress: 4/16 calibration samples (25%)",
        "# progress: 8/16 calibration samples (50%)", "# progress: 12/16 calibration samples (75%)",
        "# progress: 16/16 calibration samples (100%)"]
    assert log_progress(ws8, "compile_int8")[-1] == "# progress: 8/8 int8 vs fp32 samples (100%)"
    assert not list((ws8.root / "build" / "tiny8" / ".tmp").glob("*.progress"))  # the worker's file is gone


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def node(node_id: str) -> SimpleNamespace:
    return SimpleNamespace(id=node_id)


def last_frame(console: BuildConsole) -> list[str]:
    """The live display as last drawn, one line per row."""
    assert console._progress is not None
    console._progress.refresh()
    text = console.console.export_text()
    return text[text.rindex("bmbuild "):].splitlines()


def test_terminal_shows_a_row_per_running_stage_with_its_progress_and_elapsed_time() -> None:
    console = BuildConsole(stream=FakeTerminal())
    console.console.record, console.console.width = True, 110
    console.start(6)
    try:
        for name in ("resnet18:calibrate", "mobilenet:compile_int8", "tiny:trace"):  # -j 3
            console.node_event("run", node(name), None)
        console.node_event("progress", node("resnet18:calibrate"), StageProgress(24, 64, "calibration samples"))
        console.node_event("progress", node("mobilenet:compile_int8"), StageProgress(3, 16, "int8 vs fp32 samples"))
        frame = last_frame(console)
        assert re.match(r"bmbuild +━+ 0/6 stages +\d:\d\d:\d\d$", frame[0])
        assert re.match(r"  running resnet18:calibrate +[━╸╺ ]+ 24/64 calibration samples +\d:\d\d:\d\d$", frame[1])
        assert re.match(r"  running mobilenet:compile_int8 +[━╸╺ ]+ 3/16 int8 vs fp32 samples +\d:\d\d:\d\d$",
                        frame[2])
        assert re.match(r"  running tiny:trace +━+ +\d:\d\d:\d\d$", frame[3])  # no progress reported: elapsed only

        console.node_event("done", node("tiny:trace"), NodeRecord("tiny:trace", "tiny", "trace", Outcome.EXECUTED))
        frame = last_frame(console)
        assert len(frame) == 3 and "1/6 stages" in frame[0] and "tiny:trace" not in "\n".join(frame)
    finally:
        console.stop()


def test_progress_written_by_a_worker_is_untrusted(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    for text in ("", "{", "[1, 2]", '{"done": 5, "total": 2}', '{"done": true, "total": 2}',
                 '{"done": 1, "total": 2, "label": 7}'):
        path.write_text(text)
        assert read_progress(path) is None, text
    path.write_text('{"done": 1, "total": 2, "label": "samples"}')
    assert read_progress(path) == StageProgress(1, 2, "samples")


def test_each_coarse_step_goes_on_however_fast_the_loop_reports() -> None:
    from bmbuild.progress import ProgressReporter

    sent: list[int] = []
    reporter = ProgressReporter(sink=lambda progress: sent.append(progress.done))
    for done in range(1, 17):  # far faster than the throttle's interval
        reporter(done, 16)
    assert [1, 4, 8, 12, 16] == [done for done in sent if done in (1, 4, 8, 12, 16)]
