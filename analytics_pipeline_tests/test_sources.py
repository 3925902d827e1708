"""Extraction from the application database (SQLite and PostgreSQL) over exact windows."""

from datetime import date

import sqlalchemy as sa

from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.sources import read_accounts
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline.support.source import ReportingEventsSource
from analytics_pipeline_tests.helpers import event

NY = LocalDay(date(2026, 2, 11), "America/New_York")
ACCOUNTS = [{"id": 1, "name": "ny", "reporting_timezone": "America/New_York"},
            {"id": 2, "name": "in", "reporting_timezone": "Asia/Kolkata"}]


def test_window_boundaries_and_accounts(source_url):
    write_source(source_url, ACCOUNTS, [
        event("first_response", "2026-02-11T04:59:59", id=1, value=1.0),  # NY's 02-10
        event("first_response", "2026-02-11T05:00:00", id=2, value=2.0),  # NY's 02-11 start
        event("first_response", "2026-02-12T04:59:59.999", id=3, value=3.0),  # last instant
        event("first_response", "2026-02-12T05:00:00", id=4, value=4.0),  # NY's 02-12
        event("first_response", "2026-02-11T12:00:00", id=5, account_id=2),  # other tz
        event("first_response", "2026-02-11T12:00:00", id=6, account_id=77),  # orphan
    ])
    src = ReportingEventsSource(source_url, fallback_date=date(2024, 1, 1))
    t = src.extract(NY, [1])
    assert sorted(t["id"].to_pylist()) == [2, 3]
    assert str(t.schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    assert t.sort_by("id")["value"].to_pylist() == [2.0, 3.0]
    with_orphans = src.extract(NY, [1], orphans_of=[1, 2])
    assert sorted(with_orphans["id"].to_pylist()) == [2, 3, 6]
    assert src.extract(NY, []).num_rows == 0


def test_dst_day_window(source_url):
    # 2026-03-08 in New York: 05:00Z to 04:00Z next day (23 hours).
    write_source(source_url, ACCOUNTS, [
        event("reply_time", "2026-03-09T03:59:59", id=1, value=1.0),
        event("reply_time", "2026-03-09T04:00:00", id=2, value=1.0),
    ])
    src = ReportingEventsSource(source_url, fallback_date=date(2024, 1, 1))
    assert src.extract(LocalDay(date(2026, 3, 8), "America/New_York"), [1])["id"].to_pylist() == [1]
    assert src.extract(LocalDay(date(2026, 3, 9), "America/New_York"), [1])["id"].to_pylist() == [2]


def test_sqlite_unparseable_timestamps_land_once_with_raw_text(tmp_path):
    url = f"sqlite:///{tmp_path / 'src.db'}"
    write_source(url, ACCOUNTS, [
        event("first_response", "2026-02-11T12:00:00", id=1),
        {**event("first_response", "2026-02-11T12:00:00", id=2), "created_at": "not a date"},
        {**event("first_response", "2026-02-11T12:00:00", id=3),
         "created_at": "2026-02-11T13:00:00Z"},
        {**event("first_response", "2026-02-11T12:00:00", id=4), "created_at": "",
         "updated_at": None},
    ])
    src = ReportingEventsSource(url, fallback_date=date(2026, 2, 11))
    t = src.extract(NY, [1]).sort_by("id")
    # id 2 is dated by its updated_at, id 4 by the fallback date (NY: 2026-02-11 00:00Z is
    # in NY's 2026-02-10, so it is not here); id 3 carries a zone suffix, outside the
    # contract (naive UTC): it lands in the window of its text, for quarantine.
    assert t["id"].to_pylist() == [1, 2, 3]
    assert t["created_at"][1].as_py() is None
    assert t["invalid_reason"].to_pylist() == [None, "unparseable_created_at",
                                               "unparseable_created_at"]
    assert '"created_at": "not a date"' in t["raw"][1].as_py()
    prev = src.extract(LocalDay(date(2026, 2, 10), "America/New_York"), [1])
    assert prev["id"].to_pylist() == [4]


def test_read_accounts(source_url):
    write_source(source_url, ACCOUNTS, [])
    assert [a["reporting_timezone"] for a in read_accounts(source_url).accounts] == [
        "America/New_York", "Asia/Kolkata"]
    assert sa.make_url(source_url)  # url unchanged


def test_sqlite_nulls_then_values_across_batches(tmp_path, monkeypatch):
    """A column null for a whole first batch, typed later, still extracts."""
    from analytics_pipeline.core import sources

    url = f"sqlite:///{tmp_path / 'src.db'}"
    rows = [event("reply_time", "2026-02-11T12:00:00", id=i,
                  value=None if i < 30 else 1.5, user_id=None if i < 30 else 9)
            for i in range(1, 61)]
    write_source(url, ACCOUNTS, rows)
    original = sources._sqlalchemy_batches
    monkeypatch.setattr(sources, "_sqlalchemy_batches",
                        lambda engine, query: original(engine, query, batch=10))
    t = ReportingEventsSource(url, fallback_date=date(2024, 1, 1)).extract(NY, [1])
    assert t.num_rows == 60
    assert t["value"].null_count == 29 and t["user_id"].null_count == 29


def test_connection_errors_never_show_the_password():
    import pytest

    src = ReportingEventsSource("postgresql://postgres:S3cr%40t-pw@127.0.0.1:1/test",
                                fallback_date=date(2024, 1, 1))
    with pytest.raises(ConnectionError) as info:
        src.extract(NY, [1])
    assert "S3cr" not in str(info.value) and "127.0.0.1" in str(info.value)


def _with_reference_indexes(url: str) -> None:
    """The reference support app's indexes instead of the contract's (account_id,
    created_at)."""
    e = sa.create_engine(url)
    with e.begin() as c:
        c.execute(sa.text("DROP INDEX index_reporting_events_on_account_id_and_created_at"))
        c.execute(sa.text("CREATE INDEX ix_ref_name ON reporting_events "
                          "(account_id, name, created_at)"))
        c.execute(sa.text("CREATE INDEX ix_ref_inbox ON reporting_events "
                          "(account_id, name, inbox_id, created_at)"))
    e.dispose()


def test_reference_indexes_are_read_by_name_with_the_same_rows(pg_database, monkeypatch):
    """On the reference app's indexes a day is read by naming every event name of the
    accounts (registered or not: ignored events are still counted) and, for the default
    timezone, every account id of no known account: the same rows as reading by account
    and window, and the plan uses the (account_id, name, created_at) index."""
    events = [
        event("first_response", "2026-02-11T05:00:00", id=1, value=1.0),
        event("a_name_nobody_registered", "2026-02-11T06:00:00", id=2),
        event("reply_time", "2026-02-12T04:59:59.999", id=3, value=3.0),
        event("reply_time", "2026-02-12T05:00:00", id=4, value=4.0),  # next day
        event("first_response", "2026-02-10T12:00:00", id=5),  # day before
        event("zz_only_on_another_day", "2026-01-01T12:00:00", id=6),
        event("first_response", "2026-02-11T12:00:00", id=7, account_id=2),  # other tz
        event("first_response", "2026-02-11T12:00:00", id=8, account_id=77),  # orphan
        event("only_an_orphan_has_it", "2026-02-11T13:00:00", id=9, account_id=78),
        event("first_response", "2026-02-11T13:00:00", id=10, account_id=3),  # no name list
    ]
    write_source(pg_database, ACCOUNTS + [{"id": 3, "name": "x", "reporting_timezone": None}],
                 events)
    _with_reference_indexes(pg_database)
    src = ReportingEventsSource(pg_database, fallback_date=date(2024, 1, 1))
    cases = [([1], None), ([1, 3], None), ([1], [1, 2, 3]), ([], [1, 2, 3]), ([], None)]
    with src.session():
        assert src.reads_by_name(src._table, "postgresql")
        by_name = [sorted(src.extract(NY, a, orphans_of=o)["id"].to_pylist()) for a, o in cases]
        plan = src._query(src._table, "postgresql", NY, [1], None)
    assert by_name == [[1, 2, 3], [1, 2, 3, 10], [1, 2, 3, 8, 9], [8, 9], []]
    monkeypatch.setattr(ReportingEventsSource, "reads_by_name",
                        staticmethod(lambda table, dialect: False))
    assert [sorted(src.extract(NY, a, orphans_of=o)["id"].to_pylist())
            for a, o in cases] == by_name
    e = sa.create_engine(pg_database)
    with e.connect() as c:
        c.execute(sa.text("SET enable_seqscan = off"))
        shown = "\n".join(r[0] for r in c.execute(sa.text("EXPLAIN " + str(plan.compile(
            dialect=e.dialect, compile_kwargs={"literal_binds": True})))))
    e.dispose()
    # the day's rows through a reference index (how far the index bounds the scan depends
    # on the table's statistics: bench/bench_rollup.py --days 30 shows it at volume)
    assert "Seq Scan" not in shown, shown
    assert shown.startswith(("Index Scan using ix_ref", "Bitmap Heap Scan")), shown


def test_the_contract_index_is_read_by_account_and_window(pg_database):
    write_source(pg_database, ACCOUNTS, [event("first_response", "2026-02-11T05:00:00", id=1)])
    src = ReportingEventsSource(pg_database, fallback_date=date(2024, 1, 1))
    with src.session():
        assert not src.reads_by_name(src._table, "postgresql")
        assert src.extract(NY, [1])["id"].to_pylist() == [1]


def test_text_read_from_a_source_goes_back_as_hex_only(pg_database):
    """Event names listed once per range run are sent back inside the day's query: quotes,
    backslashes, comment markers and non-ASCII text come back unchanged, and the SQL holds
    no character of them."""
    from analytics_pipeline.core.sources import text_array_sql

    values = ["it's", "back\\slash", "'); DROP TABLE reporting_events; --", "ünï ✓", ""]
    sql = text_array_sql(values)
    assert "DROP" not in sql and "'); " not in sql
    e = sa.create_engine(pg_database)
    with e.connect() as c:
        got = c.execute(sa.text(f"SELECT unnest({sql})")).scalars().all()
    e.dispose()
    assert sorted(got) == sorted(values)
