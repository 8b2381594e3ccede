"""`maskray query`: DuckDB views over a real output written by `maskray infer` (labels replay)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from jobs import query as query_job
from pipeline.dataset import read_instances
from tests.replay import replayed_archive


@pytest.fixture(scope="module")
def output(ray_local, tmp_path_factory):
    return replayed_archive(tmp_path_factory.mktemp("query"), 300, 3, 128, 32)[1]


def test_counts_per_class_and_scene_equal_the_parquet_rows(output, capsys):
    expected = Counter((r["scene_id"], r["class_name"])
                       for r in read_instances(str(output)).to_pylist())
    assert query_job.main([str(output), "select scene_id, class_name, count(*) as n "
                                        "from instances group by all", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {(r["scene_id"], r["class_name"]): int(r["n"]) for r in rows} == dict(expected)


def test_scenes_and_runs_views_and_json_lines(output, capsys):
    assert query_job.main([str(output), "select scene_id, status from scenes order by scene_id",
                           "--format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["status"] for line in lines] == ["ok", "ok"]
    assert query_job.main([str(output), "select status, counts.scenes_ok as ok from runs",
                           "--format", "json"]) == 0
    (run,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert run == {"status": "succeeded", "ok": 2}


def test_parquet_and_csv_files_and_the_terminal_table(output, tmp_path, capsys):
    target = tmp_path / "rows.parquet"
    assert query_job.main([str(output), "select * from instances", "--format", "parquet",
                           "--out", str(target)]) == 0
    assert pq.read_table(target).num_rows == read_instances(str(output)).num_rows
    assert query_job.main([str(output), "select count(*) as n from instances"]) == 0
    assert str(read_instances(str(output)).num_rows) in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(output, tmp_path, capsys):
    assert query_job.main([str(output), "select nope from instances"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskray: error: query failed:") and "nope" in err
    assert len(err.strip().splitlines()) == 1
    assert query_job.main([str(tmp_path / "missing"), "select 1"]) == 2
    assert "no inference output" in capsys.readouterr().err
    assert query_job.main([str(output), "select 1", "--format", "parquet"]) == 2
    assert "--out" in capsys.readouterr().err
