"""A local PostHog Query API: HogQL over embedded DuckDB, auth, limits and faults, on loopback.

Used by the tests and the demo for sources that query PostHog. It speaks the real
service's shape: ``POST /api/projects/{project_id}/query/`` with ``Authorization: Bearer
{personal_api_key}`` and ``{"query": {"kind": "HogQLQuery", "query": ..., "values": {...}}}``;
answers ``{"results", "columns", "types", "hasMore", "limit", "offset"}``; 100 rows unless
the query has a ``LIMIT``, at most 50,000; errors as PostHog returns them (401, 404, 400
``validation_error``, 429 with ``Retry-After`` after ``rate_limit_per_hour`` queries in a
rolling hour). Faults are queued: 429, 5xx, slow responses.

The query really runs: HogQL is parsed as ClickHouse SQL by sqlglot, its HogQL-only parts
(``{placeholders}``, ``properties.$key``, ``person.properties.key``, ClickHouse functions
DuckDB lacks) are rewritten on the AST, and DuckDB executes the result over the
simulator's ``events``, ``persons`` and ``person_distinct_ids`` tables. Data is loaded in
bulk from Arrow tables or numpy arrays (the benchmark loads tens of millions of events).
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid as uuid_module
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

DEFAULT_LIMIT = 100  # rows a HogQL query returns when it has no LIMIT
MAX_LIMIT = 50_000  # a larger LIMIT is capped to this
RATE_WINDOW = 3600.0  # seconds: the query endpoint's limit is per rolling hour
TABLES = ("events", "persons", "person_distinct_ids")
PERSON_FIELDS = ("id", "properties", "created_at")  # what ``events.person.<field>`` may name

_SCHEMA = """
CREATE TABLE events (uuid UUID NOT NULL, event VARCHAR NOT NULL, distinct_id VARCHAR NOT NULL,
                     person_id VARCHAR, timestamp TIMESTAMPTZ NOT NULL, properties JSON NOT NULL);
CREATE TABLE persons (id VARCHAR NOT NULL, properties JSON NOT NULL,
                      created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE person_distinct_ids (distinct_id VARCHAR NOT NULL, person_id VARCHAR NOT NULL);
"""


@dataclass
class Fault:
    status: int = 500  # 429, 500, 502, 503, or 200 with a delay
    retry_after: int | None = None  # whole seconds, as HTTP says
    delay: float = 0.0


@dataclass
class QueryRecord:
    """One query the endpoint ran (or refused as invalid), for tests and benchmarks."""

    query: str
    values: dict
    rows: int  # rows returned to the client (after the LIMIT)
    elapsed: float  # seconds spent translating and executing
    status: int = 200  # 200, or 400 for a query it could not parse/execute
    sql: str | None = None  # the DuckDB SQL it ran
    error: str | None = None


class HogQLError(ValueError):
    """A query the endpoint refuses: answered 400 ``validation_error``."""


# -- HogQL dialect: ClickHouse plus ``$`` in identifiers and ``{name}`` placeholders ----------


class HogQL(ClickHouse):
    class Tokenizer(ClickHouse.Tokenizer):
        # HogQL identifiers may contain ``$`` (``properties.$browser``); ClickHouse reads it
        # as a heredoc string opener.
        HEREDOC_STRINGS: list = []
        SINGLE_TOKENS = {k: v for k, v in ClickHouse.Tokenizer.SINGLE_TOKENS.items() if k != "$"}

    class Parser(ClickHouse.Parser):
        def _parse_query_parameter(self) -> exp.Expr | None:
            """``{name}`` is a HogQL placeholder; ``{name: Type}`` stays ClickHouse's."""
            index = self._index
            name = self._parse_id_var()
            if name is not None and self._match(TokenType.R_BRACE):
                return self.expression(exp.Placeholder(this=exp.var(name.name)))
            self._retreat(index)
            return super()._parse_query_parameter()


# -- binding values ---------------------------------------------------------------------------


def _literal(value: Any) -> exp.Expr:
    """A ``values`` entry as a sqlglot literal: the generator quotes it, so it stays data."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise HogQLError(f"Cannot use the non-finite number {value} as a value")
        return exp.Literal.number(repr(value))
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, (list, tuple)):
        return exp.Array(expressions=[_literal(v) for v in value])
    raise HogQLError(f"Unsupported value type {type(value).__name__}")


def _bind(tree: exp.Expr, values: Mapping[str, Any]) -> exp.Expr:
    for ph in list(tree.find_all(exp.Placeholder)):
        name = ph.name
        if name not in values:
            raise HogQLError(f"Placeholder {{{name}}} is not available in this context")
        value = values[name]
        parent = ph.parent
        if isinstance(value, (list, tuple)) and isinstance(parent, exp.In) \
                and parent.args.get("field") is ph:
            # ``x IN {ids}``: the list becomes the IN list itself
            parent.set("field", None)
            parent.set("expressions", [_literal(v) for v in value])
        else:
            ph.replace(_literal(value))
    return tree


# -- HogQL fields: properties.x, properties['x'], person.properties.x ---------------------------


def _json_path(keys: list[str]) -> str:
    """A JSON pointer (RFC 6901): any key, ``$`` and ``/`` included, addresses one member."""
    return "".join("/" + k.replace("~", "~0").replace("/", "~1") for k in keys)


def _json_field(column: exp.Expr, keys: list[str]) -> exp.Expr:
    """HogQL property access returns the value as a string, NULL when missing or null."""
    return exp.Anonymous(this="json_extract_string",
                         expressions=[column, exp.Literal.string(_json_path(keys))])


def _field_chain(col: exp.Column) -> tuple[exp.Expr, list[str]]:
    """The whole ``a.b.c['d']`` a column heads, as its outermost node and its names."""
    parts = [p.name for p in col.parts]
    top: exp.Expr = col
    while True:
        parent = top.parent
        if isinstance(parent, exp.Dot) and parent.this is top \
                and isinstance(parent.expression, exp.Identifier):
            parts.append(parent.expression.name)
        elif isinstance(parent, exp.Bracket) and parent.this is top \
                and len(parent.expressions) == 1 and parent.expressions[0].is_string:
            parts.append(parent.expressions[0].this)
        else:
            return top, parts
        top = parent


def _sources(select: exp.Select) -> dict[str, exp.Expr]:
    """Names the FROM and JOIN clauses of one SELECT bind (alias, else table name)."""
    found: dict[str, exp.Expr] = {}
    nodes = []
    if select.args.get("from_"):
        nodes.append(select.args["from_"].this)
    nodes += [j.this for j in select.args.get("joins") or []]
    for node in nodes:
        name = node.alias_or_name
        if name:
            found[name] = node
    return found


def _is_events(node: exp.Expr) -> bool:
    return isinstance(node, exp.Table) and node.name == "events" and not node.args.get("db")


class _FieldResolver:
    """Rewrites HogQL field chains into DuckDB: JSON extraction and the lazy person join."""

    def __init__(self) -> None:
        self._joins: dict[tuple[int, str], str] = {}

    def resolve(self, tree: exp.Expr) -> None:
        for col in list(tree.find_all(exp.Column)):
            if isinstance(col.this, exp.Star) or col.root() is not tree:
                continue
            top, parts = _field_chain(col)
            replacement = self._resolve(col, parts)
            if replacement is not None:
                top.replace(replacement)

    def _resolve(self, col: exp.Column, parts: list[str]) -> exp.Expr | None:
        selects = []
        node = col.find_ancestor(exp.Select)
        while node is not None:
            selects.append(node)
            node = node.find_ancestor(exp.Select)
        qualifier, rest, owner = None, parts, selects[0] if selects else None
        if len(parts) > 1:
            for select in selects:  # innermost first, then enclosing queries
                if parts[0] in _sources(select):
                    qualifier, rest, owner = parts[0], parts[1:], select
                    break
        if rest[0] == "properties" and len(rest) > 1:
            return _json_field(exp.column("properties", table=qualifier), rest[1:])
        if rest[0] == "person" and len(rest) > 1 and owner is not None:
            events = self._events_alias(owner, qualifier)
            if events is None:
                return None
            if rest[1:] == ["id"]:
                return exp.column("person_id", table=events)
            if rest[1] not in PERSON_FIELDS or (rest[1] != "properties" and len(rest) > 2):
                return None
            alias = self._person_join(owner, events)
            if rest[1] == "properties" and len(rest) > 2:
                return _json_field(exp.column("__person_properties", table=alias), rest[2:])
            return exp.column(f"__person_{rest[1]}", table=alias)
        return None

    @staticmethod
    def _events_alias(select: exp.Select, qualifier: str | None) -> str | None:
        sources = _sources(select)
        if qualifier is not None:
            return qualifier if _is_events(sources[qualifier]) else None
        events = [name for name, node in sources.items() if _is_events(node)]
        return events[0] if len(events) == 1 else None

    def _person_join(self, select: exp.Select, events: str) -> str:
        """``events.person`` is a lazy join to ``persons`` on ``person_id``, added once."""
        key = (id(select), events)
        if key not in self._joins:
            alias = f"__person_{len(self._joins) + 1}"
            originals = list(_sources(select))
            if any(isinstance(e, exp.Star) for e in select.expressions):
                # keep ``*`` meaning the query's own tables, not the added join
                stars = [exp.Column(this=exp.Star(), table=exp.to_identifier(name))
                         for name in originals]
                select.set("expressions", [s for e in select.expressions
                                           for s in (stars if isinstance(e, exp.Star) else [e])])
            # the join's columns get names no query uses, so the query's own unqualified
            # names (properties, id) stay unambiguous
            persons = exp.select(*(exp.alias_(f, f"__person_{f}") for f in PERSON_FIELDS)) \
                .from_("persons").subquery(alias)
            on = exp.EQ(this=exp.column("__person_id", table=alias),
                        expression=exp.column("person_id", table=events))
            select.join(persons, on=on, join_type="left", copy=False)
            self._joins[key] = alias
        return self._joins[key]


# -- ClickHouse functions DuckDB lacks ----------------------------------------------------------

TIMESTAMPTZ = "TIMESTAMPTZ"  # every DateTime is an instant; the session zone is UTC
_DATETIME_TYPES = {exp.DType.DATETIME, exp.DType.DATETIME64, exp.DType.TIMESTAMP,
                   exp.DType.TIMESTAMPNTZ, exp.DType.TIMESTAMPLTZ}


def _as_datetime(e: exp.Expr) -> exp.Expr:
    """A string argument where a DateTime is expected is parsed as one (ISO, offsets too)."""
    if isinstance(e, exp.Literal) and e.is_string:
        return exp.cast(e, TIMESTAMPTZ)
    return e


def _to_datetime(args: list[exp.Expr]) -> exp.Expr:
    value = args[0]
    if isinstance(value, exp.Literal) and not value.is_string:
        return exp.func("to_timestamp", value)
    if len(args) > 1 and isinstance(value, exp.Literal) and value.is_string:
        # a wall-clock string read in the given time zone
        return exp.func("timezone", args[1], exp.cast(value, "TIMESTAMP"))
    return exp.cast(value, TIMESTAMPTZ)


def _start_of_week(args: list[exp.Expr]) -> exp.Expr:
    """ClickHouse mode 0 (the default) starts weeks on Sunday, mode 1 on Monday."""
    mode = args[1] if len(args) > 1 else exp.Literal.number(0)
    if not (isinstance(mode, exp.Literal) and mode.this in ("0", "1")):
        raise HogQLError("toStartOfWeek supports modes 0 and 1")
    day = exp.cast(_as_datetime(args[0]), "DATE")
    if mode.this == "1":
        return exp.cast(exp.func("date_trunc", exp.Literal.string("week"), day), "DATE")
    return exp.Sub(this=day, expression=exp.cast(exp.func("dayofweek", day), "INTEGER"))


def _multi_if(args: list[exp.Expr]) -> exp.Expr:
    if len(args) < 3 or len(args) % 2 == 0:
        raise HogQLError("multiIf needs condition/value pairs and an else value")
    case = exp.Case()
    for cond, value in zip(args[:-1:2], args[1:-1:2], strict=True):
        case = case.when(cond, value, copy=False)
    return case.else_(args[-1], copy=False)


def _extract(unit: str) -> Callable[[list[exp.Expr]], exp.Expr]:
    return lambda a: exp.cast(exp.Extract(this=exp.var(unit), expression=_as_datetime(a[0])),
                              "BIGINT")


def _shift(unit: str, sign: int) -> Callable[[list[exp.Expr]], exp.Expr]:
    def build(a: list[exp.Expr]) -> exp.Expr:
        interval = exp.func(f"to_{unit}", a[1])
        op = exp.Add if sign > 0 else exp.Sub
        return op(this=exp.paren(_as_datetime(a[0]), copy=False), expression=interval)
    return build


_UNITS = ("seconds", "minutes", "hours", "days", "weeks", "months", "years")


def _interval(unit: str) -> Callable[[list[exp.Expr]], exp.Expr]:
    return lambda a: exp.func(f"to_{unit}", a[0])


def _index_of(a: list[exp.Expr]) -> exp.Expr:
    """``indexOf(arr, x)``: the 1-based position of x in arr, 0 when absent (DuckDB: NULL)."""
    if len(a) != 2:
        raise HogQLError("indexOf expects 2 arguments")
    return exp.Coalesce(this=exp.func("list_position", a[0], a[1]),
                        expressions=[exp.Literal.number(0)])


def _array_element(a: list[exp.Expr]) -> exp.Expr:
    """``arrayElement(arr, n)`` (= ``arr[n]``): 1-based, negative from the end. Out of range
    ClickHouse returns the type's default value, the simulator NULL."""
    if len(a) != 2:
        raise HogQLError("arrayElement expects 2 arguments")
    return exp.func("list_extract", a[0], a[1])


def _distinct_count(a: list[exp.Expr]) -> exp.Expr:
    # ClickHouse's uniq is an estimate; exact counts keep the simulator's answers checkable
    return exp.Count(this=exp.Distinct(expressions=a))


_FUNCTIONS: dict[str, Callable[[list[exp.Expr]], exp.Expr]] = {
    "toDateTime": _to_datetime,
    "toDateTime64": lambda a: _to_datetime([a[0], *a[2:]]),
    "parseDateTimeBestEffort": lambda a: exp.cast(a[0], TIMESTAMPTZ),
    "fromUnixTimestamp": lambda a: exp.func("to_timestamp", a[0]),
    "toDate": lambda a: exp.cast(_as_datetime(a[0]), "DATE"),
    "toUnixTimestamp": lambda a: exp.cast(
        exp.Floor(this=exp.func("epoch", _as_datetime(a[0]))), "BIGINT"),
    "toStartOfWeek": _start_of_week,
    "toYear": _extract("YEAR"),
    "toMonth": _extract("MONTH"),
    "toDayOfMonth": _extract("DAY"),
    "toHour": _extract("HOUR"),
    "toMinute": _extract("MINUTE"),
    "toString": lambda a: exp.cast(a[0], "VARCHAR"),
    "toInt": lambda a: exp.cast(exp.func("trunc", a[0]), "BIGINT"),
    "toInt64": lambda a: exp.cast(exp.func("trunc", a[0]), "BIGINT"),
    "toInt32": lambda a: exp.cast(exp.func("trunc", a[0]), "INTEGER"),
    "toFloat": lambda a: exp.cast(a[0], "DOUBLE"),
    "toFloat64": lambda a: exp.cast(a[0], "DOUBLE"),
    "isNull": lambda a: exp.Is(this=a[0], expression=exp.Null()),
    "isNotNull": lambda a: exp.Not(this=exp.Is(this=a[0], expression=exp.Null())),
    "notILike": lambda a: exp.Not(this=exp.ILike(this=a[0], expression=a[1])),
    "empty": lambda a: exp.EQ(this=exp.Coalesce(this=a[0], expressions=[exp.Literal.string("")]),
                              expression=exp.Literal.string("")),
    "notEmpty": lambda a: exp.NEQ(
        this=exp.Coalesce(this=a[0], expressions=[exp.Literal.string("")]),
        expression=exp.Literal.string("")),
    "multiIf": _multi_if,
    "lengthUTF8": lambda a: exp.func("length", a[0]),
    "replaceAll": lambda a: exp.func("replace", *a),
    # arguments are expressions of their own: parenthesized, intDiv(a + b, c) is (a + b) // c
    "intDiv": lambda a: exp.IntDiv(this=exp.paren(a[0], copy=False),
                                   expression=exp.paren(a[1], copy=False)),
    "indexOf": _index_of,
    "arrayElement": _array_element,
    "uniqExact": _distinct_count,
    "countDistinct": _distinct_count,
    "groupArray": lambda a: exp.func("list", a[0]),
    "groupUniqArray": lambda a: exp.func("list", exp.Distinct(expressions=[a[0]])),
    "anyLast": lambda a: exp.func("last", a[0]),
    **{f"add{u.capitalize()}": _shift(u, +1) for u in _UNITS},
    **{f"subtract{u.capitalize()}": _shift(u, -1) for u in _UNITS},
    **{f"toInterval{u.capitalize()[:-1]}": _interval(u) for u in _UNITS},
}

_IF_AGGREGATES: dict[str, Callable[[list[exp.Expr]], exp.Expr]] = {
    "sumIf": lambda a: exp.Sum(this=a[0]),
    "avgIf": lambda a: exp.Avg(this=a[0]),
    "minIf": lambda a: exp.Min(this=a[0]),
    "maxIf": lambda a: exp.Max(this=a[0]),
    "uniqIf": _distinct_count,
    "uniqExactIf": _distinct_count,
}


def _rewrite_functions(tree: exp.Expr, now: datetime) -> exp.Expr:
    def now_literal() -> exp.Expr:
        return exp.cast(exp.Literal.string(now.isoformat()), TIMESTAMPTZ)

    def rewrite(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.DataType) and node.this in _DATETIME_TYPES:
            return exp.DataType.build(TIMESTAMPTZ)
        if isinstance(node, exp.CurrentTimestamp):
            return now_literal()
        if isinstance(node, exp.ApproxDistinct):
            return _distinct_count([node.this])
        if isinstance(node, (exp.Anonymous, exp.AnonymousAggFunc)):
            name, args = node.name, list(node.expressions)
            if name in ("now", "now64"):
                return now_literal()
            if name in ("today", "yesterday"):
                day = now.date() - timedelta(days=1 if name == "yesterday" else 0)
                return exp.cast(exp.Literal.string(day.isoformat()), "DATE")
            if name in _IF_AGGREGATES and len(args) == 2:
                return exp.Filter(this=_IF_AGGREGATES[name]([args[0]]),
                                  expression=exp.Where(this=args[1]))
            if name in _FUNCTIONS:
                if not args:
                    raise HogQLError(f"{name}() needs arguments")
                return _FUNCTIONS[name](args)
        if isinstance(node, exp.TimestampTrunc | exp.DateTrunc | exp.DateDiff):
            for key in ("this", "expression"):
                if isinstance(node.args.get(key), exp.Literal):
                    node.set(key, _as_datetime(node.args[key]))
        return node

    # children before parents, so nested calls (toDate(toDateTime(x))) are all rewritten and
    # what a rewrite builds (a TIMESTAMP cast inside toDateTime) is not rewritten again
    for node in reversed(list(tree.dfs())):
        new = rewrite(node)
        if new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree


# -- query translation --------------------------------------------------------------------------


def _int_clause(tree: exp.Expr, key: str) -> int | None:
    clause = tree.args.get(key)
    if clause is None:
        return None
    value = clause.expression
    if not (isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit()):
        raise HogQLError(f"{key.upper()} must be a non-negative integer")
    return int(value.this)


_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter,
           exp.Command, exp.Set, exp.Into)


@dataclass
class Translation:
    """What the endpoint runs for one HogQL query."""

    sql: str
    columns: list[str] | None  # None: take DuckDB's names (the query selects ``*``)
    limit: int
    offset: int


def translate(query: str, values: Mapping[str, Any] | None = None,
              now: datetime | None = None) -> Translation:
    """HogQL to the DuckDB SQL the simulator runs, fetching ``limit + 1`` rows."""
    try:
        statements = [s for s in sqlglot.parse(query, read=HogQL) if s is not None]
    except (ParseError, TokenError) as e:
        raise HogQLError(f"Syntax error: {e}") from None
    if len(statements) != 1:
        raise HogQLError("Expected exactly one SELECT query")
    tree = statements[0]
    if not isinstance(tree, (exp.Select, exp.SetOperation)) or tree.find(*_WRITES):
        raise HogQLError("Only SELECT queries are allowed")
    tree = _bind(tree, values or {})
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or table.args.get("db") \
                or table.args.get("catalog") or table.name not in (*TABLES, *ctes):
            raise HogQLError(f"Unknown table `{table.sql(dialect=HogQL)}`.")
    if isinstance(tree, exp.SetOperation):
        # the default limit applies to the combined rows
        tree = exp.select("*").from_(tree.subquery("__union", copy=False), copy=False)
    projections = tree.expressions
    columns = None if any(isinstance(p, exp.Star) or isinstance(p.this, exp.Star)
                          for p in projections) else [
        p.alias if isinstance(p, exp.Alias) else p.sql(dialect=HogQL) for p in projections]
    _FieldResolver().resolve(tree)
    tree = _rewrite_functions(tree, now or datetime.now(timezone.utc))
    limit = _int_clause(tree, "limit")
    limit = DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT)
    offset = _int_clause(tree, "offset") or 0
    tree.set("limit", exp.Limit(expression=exp.Literal.number(limit + 1)))
    return Translation(tree.sql(dialect="duckdb"), columns, limit, offset)


# -- results ----------------------------------------------------------------------------------

_CLICKHOUSE_TYPES = {
    "VARCHAR": "String", "JSON": "String", "UUID": "UUID", "BOOLEAN": "Bool",
    "TINYINT": "Int8", "SMALLINT": "Int16", "INTEGER": "Int32", "BIGINT": "Int64",
    "HUGEINT": "Int128", "UTINYINT": "UInt8", "USMALLINT": "UInt16", "UINTEGER": "UInt32",
    "UBIGINT": "UInt64", "FLOAT": "Float32", "DOUBLE": "Float64", "DATE": "Date",
    "TIMESTAMP WITH TIME ZONE": "DateTime64(6, 'UTC')", "TIMESTAMP": "DateTime64(6)",
    "INTERVAL": "IntervalSecond",
}


# values JSON can carry as DuckDB returns them
_PLAIN_TYPES = frozenset({"VARCHAR", "JSON", "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT",
                          "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"})


def _clickhouse_type(duck_type: str) -> str:
    if duck_type.endswith("[]"):
        return f"Array({_clickhouse_type(duck_type[:-2])})"
    if duck_type.startswith("DECIMAL"):
        return duck_type.replace("DECIMAL", "Decimal")
    return _CLICKHOUSE_TYPES.get(duck_type, duck_type)


def _jsonable(v: Any) -> Any:
    """A value as PostHog's JSON encoder writes it (datetimes ISO 8601 with ``Z``)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None  # JSON has no NaN or infinity
    if v is None or isinstance(v, (str, int, bool)):
        return v
    if isinstance(v, datetime):
        if v.tzinfo is not None:
            v = v.astimezone(timezone.utc)
        return v.replace(tzinfo=None).isoformat() + "Z"
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, uuid_module.UUID):
        return str(v)
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


# -- bulk input -------------------------------------------------------------------------------

TableLike = pa.Table | pa.RecordBatch | Mapping[str, Any]


def _arrow(data: TableLike) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    return pa.table({k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)
                     for k, v in data.items()})


def _json_expr(table: pa.Table, name: str) -> str:
    """SQL turning an input column of JSON text or structs into JSON (``{}`` when absent)."""
    if name not in table.column_names:
        return "'{}'::JSON"
    kind = table.schema.field(name).type
    if pa.types.is_struct(kind) or pa.types.is_map(kind):
        return f"coalesce(to_json(i.{name}), '{{}}')::JSON"
    return f"coalesce(i.{name}, '{{}}')::JSON"


def _timestamp_expr(table: pa.Table) -> str:
    kind = table.schema.field("timestamp").type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "to_timestamp(i.timestamp::DOUBLE)"  # epoch seconds
    return "i.timestamp::TIMESTAMPTZ"  # naive Arrow timestamps and strings are UTC


def _require(table: pa.Table, required: Iterable[str], what: str) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} needs column(s) {missing}; got {table.column_names}")
    for c in required:
        if table.column(c).null_count:
            raise ValueError(f"{what}: column {c!r} has nulls")


@dataclass
class PostHogSimulator:
    """The endpoint and its data. Load with ``add_person(s)``/``add_events`` (before or
    after ``start()``); ``queries`` logs every query, ``requests`` every HTTP request."""

    project_id: int = 1
    api_key: str = "phx_simulator"
    clock: Callable[[], float] = time.time
    rate_limit_per_hour: int = 120
    database: str = ":memory:"  # a file path keeps the loaded events between runs
    faults: deque = field(default_factory=deque)
    requests: list[str] = field(default_factory=list)
    queries: list[QueryRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        # the root connection only sets up and hands out per-thread connections (cursors)
        self._root = duckdb.connect(self.database)
        self._root.execute("SET GLOBAL TimeZone = 'UTC'")
        if self.database == ":memory:":
            try:  # compressed in memory: 20M events fit in a few GB
                self._root.execute("ATTACH ':memory:' AS posthog (COMPRESS)")
                self._catalog = "posthog"
            except duckdb.Error:  # an older DuckDB: uncompressed
                self._catalog = "memory"
        else:
            self._catalog = self._root.execute("SELECT current_database()").fetchall()[0][0]
        self._root.execute(f"USE {self._catalog}")
        existing = self._root.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        if not {r[0] for r in existing} >= set(TABLES):
            self._root.execute(_SCHEMA)
        # queries may not read files or load extensions, whatever SQL reaches DuckDB
        self._root.execute("SET enable_external_access = false")
        self._root.execute("SET lock_configuration = true")
        self._lock = threading.Lock()
        self._write = threading.Lock()  # one loader at a time, on the loader connection
        self._db = self._cursor()
        self._recent: deque[float] = deque()
        self._server: ThreadingHTTPServer | None = None

    # -- loading data --------------------------------------------------------------------------

    def add_events(self, data: TableLike) -> int:
        """Bulk-add events from an Arrow table or a mapping of column arrays; returns the count.

        Columns: ``event``, ``distinct_id``, ``timestamp`` (Arrow timestamp, naive = UTC; epoch
        seconds; or ISO strings), optional ``uuid`` and ``properties`` (JSON text or structs).
        Like ingestion, a distinct id with no person gets a new one (id derived from the
        distinct id), and ``person_id`` is the person the distinct id belongs to.
        """
        table = _arrow(data)
        _require(table, ("event", "distinct_id", "timestamp"), "add_events")
        uuid_sql = "i.uuid::UUID" if "uuid" in table.column_names else "gen_random_uuid()"
        with self._write, self._incoming(table):
            self._transaction([
                """INSERT INTO person_distinct_ids
                   SELECT d, md5('person:' || d)::UUID::VARCHAR
                   FROM (SELECT DISTINCT distinct_id::VARCHAR AS d FROM _incoming) n
                   WHERE NOT EXISTS (SELECT 1 FROM person_distinct_ids p
                                     WHERE p.distinct_id = n.d)""",
                self._create_missing_persons_sql(),
                f"""INSERT INTO events
                   SELECT {uuid_sql}, i.event, i.distinct_id, p.person_id,
                          {_timestamp_expr(table)}, {_json_expr(table, 'properties')}
                   FROM _incoming i JOIN person_distinct_ids p
                     ON p.distinct_id = i.distinct_id::VARCHAR""",
            ])
        return table.num_rows

    def add_event(self, event: str, distinct_id: str, timestamp: datetime | float | str,
                  properties: dict | None = None, uuid: str | None = None) -> None:
        """One event, for small hand-written cases; bulk loads use ``add_events``."""
        if isinstance(timestamp, datetime):
            ts = pa.array([timestamp], pa.timestamp("us", tz="UTC")) if timestamp.tzinfo \
                else pa.array([timestamp], pa.timestamp("us"))
        else:
            ts = pa.array([timestamp])
        columns = {"event": [event], "distinct_id": [distinct_id], "timestamp": ts,
                   "properties": [json.dumps(properties or {})]}
        if uuid is not None:
            columns["uuid"] = [uuid]
        self.add_events(columns)

    def add_persons(self, data: TableLike) -> int:
        """Bulk-add or update persons; returns the count.

        Columns: ``id``; optional ``email`` (stored as ``properties.email``), ``properties``
        (JSON text or structs; merged into an existing person's, as ``$set`` does) and
        ``distinct_ids`` (lists; each is moved to this person, see ``add_distinct_ids``).
        """
        table = _arrow(data)
        _require(table, ("id",), "add_persons")
        email = "i.email" if "email" in table.column_names else "NULL"
        props = _json_expr(table, "properties")
        with self._write, self._incoming(table):
            if self._rows("SELECT count(*) - count(DISTINCT id) FROM _incoming")[0][0]:
                raise ValueError("add_persons: repeated person ids")
            assign = self._assignment("""SELECT unnest(distinct_ids)::VARCHAR AS distinct_id,
                                                id::VARCHAR AS person_id FROM _incoming""") \
                if "distinct_ids" in table.column_names else []
            self._transaction([
                f"""CREATE OR REPLACE TEMP TABLE _new_persons AS
                    SELECT i.id::VARCHAR AS id,
                           CASE WHEN {email} IS NULL THEN {props}
                                ELSE json_merge_patch({props}, json_object('email', {email}))
                           END AS properties
                    FROM _incoming i""",
                """UPDATE persons SET properties = json_merge_patch(persons.properties,
                                                                    n.properties)
                   FROM _new_persons n WHERE persons.id = n.id""",
                f"""INSERT INTO persons SELECT id, properties, {self._now_sql()} FROM _new_persons n
                    WHERE NOT EXISTS (SELECT 1 FROM persons p WHERE p.id = n.id)""",
                "DROP TABLE _new_persons",
                *assign,
            ])
        return table.num_rows

    def add_person(self, person_id: str, distinct_ids: Iterable[str], email: str | None = None,
                   properties: dict | None = None) -> None:
        """A person and the distinct ids that identify it (several ids = a merged person)."""
        self.add_persons({"id": [person_id], "email": pa.array([email], pa.string()),
                          "properties": [json.dumps(properties or {})],
                          "distinct_ids": pa.array([list(distinct_ids)], pa.list_(pa.string()))})

    def add_distinct_ids(self, data: TableLike) -> int:
        """Bulk-map distinct ids (``distinct_id``, ``person_id``) to persons.

        A distinct id belongs to one person: mapping it elsewhere moves it, re-attributes its
        events, and a person left with no distinct id is merged away (its properties fill
        gaps in the new person's), as PostHog's merge does. Unknown persons are created.
        """
        table = _arrow(data)
        _require(table, ("distinct_id", "person_id"), "add_distinct_ids")
        with self._write, self._incoming(table):
            self._transaction(self._assignment("""SELECT distinct_id::VARCHAR AS distinct_id,
                                                         person_id::VARCHAR AS person_id
                                                  FROM _incoming"""))
        return table.num_rows

    def merge(self, into_person_id: str, *other_person_ids: str) -> None:
        """Merge persons into one: their distinct ids and events move to ``into_person_id``."""
        with self._write:
            rows = self._rows(
                "SELECT distinct_id FROM person_distinct_ids WHERE list_contains(?, person_id)",
                [list(other_person_ids)])
        self.add_distinct_ids({"distinct_id": pa.array([r[0] for r in rows], pa.string()),
                               "person_id": pa.array([into_person_id] * len(rows), pa.string())})

    def count(self, table: str) -> int:
        """Rows in one of the served tables."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        with self._write:
            return self._rows(f"SELECT count(*) FROM {table}")[0][0]

    def _rows(self, sql: str, params: list | None = None) -> list[tuple]:
        """All rows of a statement on the loader connection (DuckDB wants results drained)."""
        return self._db.execute(sql, params).fetchall()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own per thread: one DuckDB connection is not thread-safe."""
        with self._lock:
            cursor = self._root.cursor()
        cursor.execute(f"USE {self._catalog}")
        return cursor

    def _now_sql(self) -> str:
        return f"to_timestamp({float(self.clock())!r})"

    def _create_missing_persons_sql(self) -> str:
        return f"""INSERT INTO persons
                   SELECT DISTINCT person_id, '{{}}'::JSON, {self._now_sql()}
                   FROM person_distinct_ids d
                   WHERE NOT EXISTS (SELECT 1 FROM persons p WHERE p.id = d.person_id)"""

    def _assignment(self, mapping_sql: str) -> list[str]:
        """Checks a (distinct_id, person_id) mapping and returns the statements applying it.

        The caller holds the write lock and runs them in its transaction, after its own.
        """
        self._db.execute(
            f"CREATE OR REPLACE TEMP TABLE _map AS SELECT DISTINCT * FROM ({mapping_sql})")
        clash = self._rows("""SELECT distinct_id FROM _map GROUP BY distinct_id
                              HAVING count(*) > 1 LIMIT 1""")
        if clash:
            self._db.execute("DROP TABLE _map")
            raise ValueError(f"distinct id {clash[0][0]!r} given to more than one person")
        return [
            """CREATE OR REPLACE TEMP TABLE _moved AS
               SELECT m.distinct_id, m.person_id AS new_id, p.person_id AS old_id
               FROM _map m JOIN person_distinct_ids p USING (distinct_id)
               WHERE p.person_id <> m.person_id""",
            "DELETE FROM person_distinct_ids WHERE distinct_id IN (SELECT distinct_id FROM _map)",
            "INSERT INTO person_distinct_ids SELECT distinct_id, person_id FROM _map",
            self._create_missing_persons_sql(),
            """UPDATE events SET person_id = m.new_id FROM _moved m
               WHERE events.distinct_id = m.distinct_id""",
            # persons left without a distinct id were merged away
            """CREATE OR REPLACE TEMP TABLE _gone AS
               SELECT DISTINCT old_id, new_id FROM _moved
               WHERE old_id NOT IN (SELECT person_id FROM person_distinct_ids)""",
            # one row per surviving person: UPDATE ... FROM applies one match per row
            """UPDATE persons SET properties = json_merge_patch(g.properties, persons.properties)
               FROM (SELECT _gone.new_id,
                            list_reduce(list(p.properties ORDER BY p.id),
                                        lambda a, b: json_merge_patch(a, b)) AS properties
                     FROM _gone JOIN persons p ON p.id = _gone.old_id
                     GROUP BY _gone.new_id) g
               WHERE persons.id = g.new_id""",
            "DELETE FROM persons WHERE id IN (SELECT old_id FROM _gone)",
            "DROP TABLE _moved", "DROP TABLE _gone", "DROP TABLE _map",
        ]

    def _transaction(self, statements: list[str]) -> None:
        self._db.execute("BEGIN TRANSACTION")
        try:
            for sql in statements:
                self._db.execute(sql)
        except Exception:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _incoming(self, table: pa.Table) -> Iterator[None]:
        """``table`` readable as ``_incoming`` by the loader's SQL, zero-copy."""
        self._db.register("_incoming", table)
        try:
            yield
        finally:
            self._db.unregister("_incoming")

    # -- querying ------------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def run_query(self, query: str, values: Mapping[str, Any] | None = None) -> dict:
        """Run HogQL as the endpoint does and return its 200 body; raises ``HogQLError``.

        The HTTP handler calls this; it is public so a benchmark can time translation and
        execution without HTTP. Every call is logged in ``queries``.
        """
        started = time.perf_counter()
        values = dict(values or {})
        record = QueryRecord(query=query, values=values, rows=0, elapsed=0.0)
        try:
            now = datetime.fromtimestamp(self.clock(), timezone.utc)
            plan = translate(query, values, now)
            record.sql = plan.sql
            cursor = self._cursor()
            try:
                rows = cursor.execute(plan.sql).fetchall()
                description = cursor.description
            finally:
                cursor.close()
        except HogQLError as e:
            record.status, record.error = 400, str(e)
            raise
        except (duckdb.InternalException, duckdb.OutOfMemoryException) as e:
            record.status, record.error = 500, str(e)
            raise
        except duckdb.Error as e:
            record.status, record.error = 400, str(e)
            raise HogQLError(str(e).split("\n")[0]) from None
        finally:
            record.elapsed = time.perf_counter() - started
            with self._lock:
                self.queries.append(record)
        has_more = len(rows) > plan.limit
        rows = rows[: plan.limit]
        record.rows = len(rows)
        duck_types = [str(d[1]) for d in description]
        plain = [t in _PLAIN_TYPES for t in duck_types]
        if not all(plain):
            rows = [tuple(v if p else _jsonable(v) for v, p in zip(row, plain, strict=True))
                    for row in rows]
        columns = plan.columns or [d[0] for d in description]
        return {"results": [list(r) for r in rows], "columns": columns,
                "types": [[c, _clickhouse_type(t)] for c, t in zip(columns, duck_types,
                                                                    strict=True)],
                "hasMore": has_more, "limit": plan.limit, "offset": plan.offset,
                "query": query}

    # -- server --------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002 - quiet
                pass

            def do_POST(self):  # noqa: N802
                sim._handle(self)

            def do_GET(self):  # noqa: N802
                sim._handle(self)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        # a short poll interval: stop() returns in 50 ms, not the default 500
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.base_url = f"http://{host}:{self._server.server_address[1]}"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        """Stop serving and release the DuckDB database."""
        self.stop()
        self._db.close()
        self._root.close()

    def __enter__(self) -> PostHogSimulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- request handling ----------------------------------------------------------------------

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: dict,
              headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout against a slow fault)

    @staticmethod
    def _error(kind: str, code: str, detail: str) -> dict:
        return {"type": kind, "code": code, "detail": detail, "attr": None}

    def _throttled(self, h: BaseHTTPRequestHandler, retry_after: int) -> None:
        self._send(h, 429, self._error(
            "throttled_error", "throttled",
            f"Request was throttled. Expected available in {retry_after} seconds."),
            {"Retry-After": str(retry_after)})

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(h.path)
            fault = self.faults.popleft() if self.faults else None
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status == 429:
                self._throttled(h, fault.retry_after if fault.retry_after is not None else 1)
                return
            if fault.status != 200:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                self._send(h, fault.status, self._error(
                    "server_error", "error", "A server error occurred."), headers)
                return
        if h.headers.get("Authorization") != f"Bearer {self.api_key}":
            # never echo what was sent: it may be a real key
            self._send(h, 401, self._error(
                "authentication_error", "authentication_failed",
                "Personal API key found in request is missing or invalid."))
            return
        parts = h.path.split("?")[0].strip("/").split("/")
        if len(parts) != 4 or parts[0] != "api" or parts[1] not in ("projects", "environments") \
                or parts[3] != "query" or parts[2] != str(self.project_id):
            self._send(h, 404, self._error("invalid_request", "not_found", "Not found."))
            return
        if h.command != "POST":
            self._send(h, 405, self._error("invalid_request", "method_not_allowed",
                                           f'Method "{h.command}" not allowed.'))
            return
        retry_after = self._take_rate_slot()
        if retry_after is not None:
            self._throttled(h, retry_after)
            return
        try:
            body = json.loads(raw or b"{}")
            query = body.get("query") if isinstance(body, dict) else None
            if not isinstance(query, dict) or query.get("kind") != "HogQLQuery" \
                    or not isinstance(query.get("query"), str):
                raise HogQLError("Expected {\"query\": {\"kind\": \"HogQLQuery\", \"query\": ...}}")
            values = query.get("values") or {}
            if not isinstance(values, dict):
                raise HogQLError("values must be an object")
            self._send(h, 200, self.run_query(query["query"], values))
        except (HogQLError, json.JSONDecodeError) as e:
            self._send(h, 400, self._error("validation_error", "invalid_input", str(e)))
        except Exception as e:  # noqa: BLE001 - the real service answers 500 too
            self._send(h, 500, self._error("server_error", "error", f"{type(e).__name__}: {e}"))

    def _take_rate_slot(self) -> int | None:
        """Count a query in the rolling hour; seconds to wait when the hour is full."""
        now = self.clock()
        with self._lock:
            while self._recent and self._recent[0] <= now - RATE_WINDOW:
                self._recent.popleft()
            if len(self._recent) >= self.rate_limit_per_hour:
                return max(1, math.ceil(self._recent[0] + RATE_WINDOW - now))
            self._recent.append(now)
            return None
