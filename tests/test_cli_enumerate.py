"""The enumerate and describe commands, run as a user would, in a subprocess."""
import json
import subprocess
import sys

import pyarrow.parquet as pq


def prunetax(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "prunetax", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_counts():
    assert prunetax("enumerate", "--preset", "paper", "--count").stdout.strip() == "308"
    assert prunetax("enumerate", "--preset", "domino", "--count").stdout.strip() == "924"


def test_json_output():
    rows = json.loads(prunetax("enumerate", "--format", "json", "--input", "weight").stdout)
    assert len(rows) == 148
    assert set(rows[0]) == {"id", "authors_name", "base_input", "pointwise", "reduction", "scaling",
                            "structure", "aggregation"}
    assert all(r["base_input"] == "weight" for r in rows)


def test_parquet_and_csv_output(tmp_path):
    out = tmp_path / "x.parquet"
    proc = prunetax("enumerate", "--preset", "paper", "--format", "parquet", "--out", str(out))
    assert "308" in proc.stdout
    table = pq.read_table(out)
    assert table.num_rows == 308
    assert table.column_names == ["id", "authors_name", "base_input", "pointwise", "reduction", "scaling",
                                  "structure", "aggregation"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]  # no temporary file left
    csv_out = tmp_path / "x.csv"
    prunetax("enumerate", "--preset", "domino", "--structure", "domino_io", "--format", "csv", "--out", str(csv_out))
    assert len(csv_out.read_text().strip().splitlines()) == 1 + 308


def test_describe():
    out = prunetax("describe", "activation-taylor-abs_sum-weights_removed-domino_io").stdout
    assert "S(c) = D(c) / d(c)" in out and "sum_{k in C(l)} s_in^k(c)" in out and "-x*g" in out


def test_bad_input_exits_2_with_one_line():
    for args in (["describe", "activation-taylor-l3-none"], ["enumerate", "--reduction", "l3"],
                 ["enumerate", "--preset", "nope"], ["describe", "nonsense"]):
        proc = prunetax(*args, check=False)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    proc = prunetax("describe", "activation-taylor-l3-none", check=False)
    assert "sum, l1, l2, abs_sum, sqr_sum" in proc.stderr
