"""Helpers shared by the sources' assets: owners, tabular metadata, the refusal of rollups
whose landing is out of date, and the materialization result of a rollup with its checks.
"""

from dagster import (
    AssetCheckResult,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from analytics_pipeline.core.checks import NON_NEGATIVE, RECONCILES
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.steps import RollupResult, landed_accounts

OWNERS = ["team:data-platform"]


def table_metadata(rows: list[dict], limit: int = 20) -> MetadataValue:
    """Rows as a Dagster table (typed columns; keys with ``|`` such as partition keys stay
    whole, which a markdown table would split). The column types come from the values."""
    rows = rows[:limit]
    if not rows:
        return MetadataValue.table(records=[], schema=TableSchema(columns=[]))

    def kind(values: list) -> str:
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, bool) for v in present):
            return "bool"
        if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            return "int"
        if present and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in present):
            return "float"
        return "string"

    names = list(rows[0])
    kinds = {c: kind([r.get(c) for r in rows]) for c in names}

    def cell(value, k: str):
        if value is None:
            return None
        return value if k != "string" else str(value)

    return MetadataValue.table(
        records=[TableRecord({c: cell(r.get(c), kinds[c]) for c in names}) for r in rows],
        schema=TableSchema(columns=[TableColumn(c, kinds[c]) for c in names]),
    )


def require_current_landings(
    store, engine, days: list[LocalDay], source: str, only_accounts: list[int] | None = None
) -> None:
    """Fail before writing anything when a partition's landing no longer matches the
    accounts of its timezone, naming every partition to re-extract."""
    problems = [p for d in days
                if (p := landed_accounts(store, engine, d, source, only_accounts)[1])]
    if problems:
        raise Failure(
            description=f"{len(problems)} partition(s) must be re-extracted before their "
            "rollups can run; nothing was written:\n" + "\n".join(problems[:50]),
            metadata={"partitions_to_re_extract": MetadataValue.json(
                [p.split(":", 1)[0] for p in problems])},
        )


def rollup_result(results: list[RollupResult], metadata: dict) -> MaterializeResult:
    """The materialization of a rollup asset over its partitions, with its two checks."""
    mismatches = {r.key: r.mismatches for r in results if r.mismatches}
    negatives = {r.key: r.negative_rows for r in results if r.negative_rows}
    preview = next((r.preview for r in results if r.preview), [])
    return MaterializeResult(
        metadata={
            "partitions": len(results),
            "events_rolled_up": sum(r.rolled_up for r in results),
            "rows_written": sum(r.rows_written for r in results),
            "rows_replaced": sum(r.rows_replaced for r in results),
            **metadata,
            "preview": table_metadata(preview),
        },
        check_results=[
            AssetCheckResult(
                check_name=RECONCILES, passed=not mismatches,
                metadata={"mismatches": MetadataValue.json(mismatches),
                          "partitions_checked": len(results)},
            ),
            AssetCheckResult(
                check_name=NON_NEGATIVE, passed=not negatives,
                metadata={"negative_rows": MetadataValue.json(negatives)},
            ),
        ],
    )
