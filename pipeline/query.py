"""SQL over an inference output with DuckDB: the output's datasets as views.

    instances  one row per object instance (instances/model=<id>/*.parquet, hive partitioned:
               a `model` column beside `model_id`)
    scenes     one row per scene and model (scenes/model=<id>/*.parquet)
    runs       one row per run record (runs/<run_id>.json: config, counts, times, status)

Only committed parts are read (staging lives in `_staging/`). A dataset with no file yet has no
view, so a query naming it fails with DuckDB's "Table ... does not exist" - the error says which.
An s3:// output is read through DuckDB's httpfs (pipeline/storage.py: offline extension package,
endpoint and credentials from the storage settings and the AWS chain).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipeline import storage
from pipeline.errors import UsageError

VIEWS = {
    "instances": "read_parquet('{root}/instances/**/*.parquet', hive_partitioning = true)",
    "scenes": "read_parquet('{root}/scenes/**/*.parquet', hive_partitioning = true)",
    "runs": "read_json('{root}/runs/*.json', union_by_name = true, format = 'auto')",
}
PATTERNS = {"instances": "instances/**/*.parquet", "scenes": "scenes/**/*.parquet",
            "runs": "runs/*.json"}


def connect(output: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per dataset the output at `output` holds."""
    output = str(output)
    if storage.is_remote(output):
        fs, path = storage.filesystem(output)
        base, con = output.rstrip("/"), storage.duckdb_connect()
        with storage.translating_errors(output):
            present = {name: bool(fs.glob(f"{path}/{pattern}")) for name, pattern in PATTERNS.items()}
    else:
        root = Path(output)
        if not root.is_dir():
            raise UsageError(f"no inference output at {output}")
        base, con = str(root.resolve()), duckdb.connect()
        present = {name: any(root.glob(pattern)) for name, pattern in PATTERNS.items()}
    found = []
    for name, source in VIEWS.items():
        if present[name]:
            quoted = base.replace("'", "''")
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {source.format(root=quoted)}")
            found.append(name)
    if not found:
        raise UsageError(f"{output} holds no instances/, scenes/ or runs/ yet: not an output of "
                         f"`maskray infer`")
    return con


def run_query(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyRelation:
    """`sql` on `con`; a DuckDB error (syntax, unknown column or table) becomes one clear line."""
    try:
        relation = con.sql(sql)
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {str(exc).splitlines()[0]}") from None
    if relation is None:
        raise UsageError("the query returned no table (use a SELECT)")
    return relation
