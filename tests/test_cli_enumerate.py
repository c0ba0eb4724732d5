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


def one_line_error(proc, start):
    assert proc.returncode == 2, (proc.returncode, proc.stdout)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(start), proc.stderr
    assert proc.stdout == ""


def test_a_glob_that_cannot_match_is_an_error():
    one_line_error(prunetax("enumerate", "--filter", "[", check=False),
                   "prunetax enumerate: error: --filter: invalid glob '[': the '[' at position 0 is never closed")
    one_line_error(prunetax("enumerate", "--filter", "weight-*,typo*", "--count", check=False),
                   "prunetax enumerate: error: --filter: glob 'typo*' matches no metric id or authors' name of "
                   "preset paper (ids look like weight-value-sum-none)")
    one_line_error(prunetax("enumerate", "--filter", "wieght-value-l1-none", check=False),
                   "prunetax enumerate: error: --filter: glob 'wieght-value-l1-none' matches no metric id or "
                   "authors' name of preset paper (did you mean weight-value-l1-none?)")
    one_line_error(prunetax("enumerate", "--filter", "gfbs", check=False),
                   "prunetax enumerate: error: --filter: glob 'gfbs' matches no metric id or authors' name of "
                   "preset paper (gfbs is a named metric")
    # globs that match keep working, the authors' names too; a match emptied by a component filter is 0
    assert prunetax("enumerate", "--filter", "weight-value-l1*", "--count").stdout.strip() == "5"
    assert prunetax("enumerate", "--filter", "weight-value-l[12]-none", "--count").stdout.strip() == "2"
    assert prunetax("enumerate", "--filter", "weight-average_input-l1_norm-*", "--count").stdout.strip() == "5"
    assert prunetax("enumerate", "--filter", "weight-*", "--input", "activation", "--count").stdout.strip() == "0"


def test_component_filter_errors_name_the_flag():
    one_line_error(prunetax("enumerate", "--reduction", "l1,l3", check=False),
                   "prunetax enumerate: error: --reduction l3: unknown reduction 'l3'; choose one of sum, l1, l2")
    one_line_error(prunetax("enumerate", "--input", ",", check=False),
                   "prunetax enumerate: error: --input is empty; give one or more base input ids")


def test_metric_space_globs():
    import pytest

    from prunetax.enumerate import metric_space
    from prunetax.taxonomy.errors import SpecError

    with pytest.raises(SpecError, match=r"invalid glob 'x\[a'"):
        metric_space("paper", "x[a")            # an invalid glob is an error for every caller
    assert metric_space("paper", "typo*") == []  # not strict: a glob may match nothing (a grid's other presets)
    with pytest.raises(SpecError, match="glob 'typo\\*' matches no metric id"):
        metric_space("paper", "typo*", strict=True)
    assert len(metric_space("paper", "[w]eight-value-l1-none,[!w]*-value-l1-none", strict=True)) == 2
