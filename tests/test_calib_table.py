"""The calibration table text format: reproducible bytes, round trips, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmbuild.calib import read_table, write_table
from bmbuild.errors import DataError

ROWS = {
    "input": (2.6368656, -2.1148427, 2.6355782),
    "/layer1/conv/Conv_output_0": (0.1 + 0.2, -1e-8, 123456.789),
    "resnet.fc:0": (1e-8, 0.0, 0.0),
}


def test_round_trip_and_identical_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.table", tmp_path / "b.table"
    write_table(a, ROWS, {"method": "kl", "samples": "100"})
    write_table(b, ROWS, {"method": "kl", "samples": "100"})
    assert a.read_bytes() == b.read_bytes()
    back = read_table(a)
    assert back == ROWS and list(back) == list(ROWS)
    text = a.read_text()
    assert text.startswith("# bmbuild calibration table\n# method: kl\n# samples: 100\n"
                           "# op_name    threshold    min    max\ninput 2.6368656 ")
    assert not list(tmp_path.glob(".*.tmp"))


def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "t.table"
    write_table(path, ROWS, {"method": "kl"})
    write_table(path, {"x": (1.0, -1.0, 1.0)}, {"method": "mse"})
    assert read_table(path) == {"x": (1.0, -1.0, 1.0)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.table"]


def test_comments_blank_lines_and_vendor_sections_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cali_table"
    path.write_text("# genetated time: 2024-01-01 10:00:00\n# histogram number: 2048\n\n"
                    "###\n# op_name    threshold    min    max\n"
                    "input 2.5 -2.0 2.5\n   \nconv1 1.25\t-0.5 1.5\n"
                    "#int4_th\ninput 1.0 -1.0 1.0\n")
    assert read_table(path) == {"input": (2.5, -2.0, 2.5), "conv1": (1.25, -0.5, 1.5)}


@pytest.mark.parametrize("line", ["input 2.5 -2.0", "input two -2.0 2.5", "input nan -1 1",
                                  "a 1 -1 1\na 2 -2 2", "input 0 -1 1"])
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.table"
    path.write_text("# header\n\n" + line + "\n")
    expected_line = 4 if "\n" in line else 3
    with pytest.raises(DataError, match=f"line {expected_line}") as err:
        read_table(path)
    assert err.value.file == str(path)


def test_unwritable_names_and_values_rejected(tmp_path: Path) -> None:
    for name in ("has space", "", "#x"):
        with pytest.raises(ValueError):
            write_table(tmp_path / "t", {name: (1.0, 0.0, 1.0)})
    with pytest.raises(ValueError):
        write_table(tmp_path / "t", {"x": (float("inf"), 0.0, 1.0)})
    with pytest.raises(ValueError):
        write_table(tmp_path / "t", {"x": (1.0, 0.0, 1.0)}, {"k": "two\nlines"})
    assert not (tmp_path / "t").exists()


def test_table_has_the_permissions_of_a_normal_file(tmp_path: Path) -> None:
    """Issue 11 item 9: the table was written through mkstemp and kept its mode 0600."""
    import os

    old = os.umask(0o022)
    try:
        write_table(tmp_path / "m_cali_table", {"input": (1.0, -1.0, 1.0)})
    finally:
        os.umask(old)
    assert (tmp_path / "m_cali_table").stat().st_mode & 0o777 == 0o644


# --- graph outputs keep their |x| max -----------------------------------------------------------
def test_an_output_clipped_by_kl_gets_its_absmax_and_nothing_else_changes() -> None:
    from bmbuild.calib.table import outputs_unclipped

    rows = {"hidden": (2.0, -1.0, 9.0), "boxes": (60.0, 0.0, 320.0), "scores": (0.5, -0.9, 0.4),
            "exact": (1.0, -1.0, 1.0), "symmetric": (2.0, -2.0 * 128 / 127, 2.0)}
    out, raised = outputs_unclipped(rows, ["boxes", "scores", "exact", "symmetric", "not_a_tensor"])
    assert raised == ["boxes", "scores"]
    assert out["boxes"] == (320.0, 0.0, 320.0) and out["scores"] == (0.9, -0.9, 0.4)
    assert out["hidden"] == rows["hidden"]  # not an output: kl's cut stays
    assert out["exact"] == rows["exact"] and out["symmetric"] == rows["symmetric"]
    assert list(out) == list(rows)


def test_a_tpu_mlir_table_is_unclipped_line_by_line(tmp_path: Path) -> None:
    from bmbuild.calib.table import unclip_outputs_in_text

    text = ("# mlir version: v1.30.2\r\n###\r\n# op_name    threshold    min    max\r\n"
            "input 1.0000080 0.0000000 1.0000080\r\n/head/Conv_output_0_Conv 7.5 -9.5 9.4\r\n"
            "output_Gemm 7.5034552 -9.4738913 9.4240189\r\n\r\n#asym_op\r\noutput_Gemm\r\n")
    new, raised = unclip_outputs_in_text(text, ["output_Gemm"])
    assert raised == ["output_Gemm"]
    assert new == text.replace("output_Gemm 7.5034552 -9.4738913", "output_Gemm 9.4738913 -9.4738913")
    (tmp_path / "t").write_bytes(new.encode())
    assert read_table(tmp_path / "t")["output_Gemm"] == (9.4738913, -9.4738913, 9.4240189)
    assert unclip_outputs_in_text(text, ["input"]) == (text, [])

