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
