"""The web source's extraction from the application database (``sites``, ``web_events``):
rows read as stored (SQLite as bytes, PostgreSQL natively), converted strictly in Arrow
(``compute.convert_batch``), de-duplicated by event id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from analytics_pipeline.core.coerce import decode_utf8, to_int64, to_text
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.settings import start_date
from analytics_pipeline.core.sources import (
    ColumnKinds,
    ExtractStats,
    _instant,
    arrow_batches,
    columns_as_stored,
    in_window,
    inspect_table,
    owned_by,
)
from analytics_pipeline.core.warehouse import normalize_url
from analytics_pipeline.web.compute import (
    DEFAULT_SESSION_TIMEOUT_SECONDS,
    SITES_SCHEMA,
    SOURCE_COLUMNS,
    LandedPartition,
    LandingBuilder,
    concat_read,
    convert_batch,
    first_of_each_id,
)
from analytics_pipeline.web.contract import WEB_SOURCE, src_sites, src_web_events

_SITE_COLUMNS = ("id", "account_id", "domain", "active")
_TRUE, _FALSE = ("1", "t", "true"), ("0", "f", "false")


def _to_bool(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Booleans as stored: a boolean, the integers 1/0 or the texts 1/0, t/f, true/false
    (any case); anything else (null included) is flagged."""
    if pa.types.is_boolean(arr.type):
        return arr, pc.is_null(arr)
    text = pc.utf8_lower(pc.utf8_trim_whitespace(decode_utf8(arr)[0]))
    yes, no = pc.is_in(text, pa.array(_TRUE)), pc.is_in(text, pa.array(_FALSE))
    return yes, pc.invert(pc.or_(yes, no))


@dataclass
class WebEventsSource:
    """``sites`` and ``web_events`` of the application database.

    ``fallback_date`` dates the events whose ``occurred_at`` and ``received_at`` are both
    unusable, so that every event lands in exactly one partition.
    """

    url: str
    fallback_date: date = field(default_factory=start_date)
    name: str = WEB_SOURCE

    def sites(self) -> pa.Table:
        """Every usable site (SITES_SCHEMA). A row whose id or account id is not an exact
        integer, whose domain is missing or not clean UTF-8, whose ``active`` is not a
        boolean, or whose id repeats, is no site: its events are quarantined as
        ``unknown_site``."""
        url = normalize_url(self.url)
        cols = columns_as_stored(src_sites, _SITE_COLUMNS, url.get_backend_name())
        with arrow_batches(url, sa.select(*cols)) as reader:
            tables = [pa.Table.from_batches([b]) for b in reader if b.num_rows]
        if not tables:
            return SITES_SCHEMA.empty_table()
        t = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
        ids, bad_id = to_int64(t["id"].chunk(0))
        account_id, bad_account = to_int64(t["account_id"].chunk(0))
        domain, bad_utf8, nul = to_text(t["domain"].chunk(0))
        active, bad_active = _to_bool(t["active"].chunk(0))
        counts = pc.value_counts(ids.drop_null())
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        bad = pc.or_(pc.or_(pc.or_(bad_id, bad_account), pc.or_(bad_utf8, nul)), bad_active)
        bad = pc.or_(bad, pc.or_(pc.or_(pc.is_null(ids), pc.is_null(account_id)),
                                 pc.or_(pc.is_null(domain), pc.is_in(ids, repeated))))
        sites = pa.Table.from_arrays([ids, account_id, domain, active], schema=SITES_SCHEMA)
        return sites.filter(pc.invert(pc.fill_null(bad, True))).sort_by("id")

    def _query(self, kinds: ColumnKinds, dialect: str, day: LocalDay,
               site_ids: Sequence[int], orphans_of_sites: Sequence[int] | None) -> sa.Select:
        e = src_web_events.c
        missing = [c for c in SOURCE_COLUMNS if c not in kinds]
        if missing:
            raise LookupError(f"source table web_events lacks columns {missing}")
        # an event without a usable occurred_at is dated by its arrival instead
        when = in_window(_instant(e.occurred_at, kinds["occurred_at"], dialect),
                         _instant(e.received_at, kinds["received_at"], dialect),
                         self.fallback_date, day)
        which = owned_by(e.site_id, kinds["site_id"], site_ids, orphans_of_sites)
        cols = columns_as_stored(src_web_events, SOURCE_COLUMNS, dialect)
        return sa.select(*cols).where(which, when)

    def extract_batches(
        self, day: LocalDay, site_ids: Sequence[int],
        orphans_of_sites: Sequence[int] | None = None, stats: ExtractStats | None = None,
    ) -> Iterator[pa.Table]:
        """The events of ``site_ids`` whose ``occurred_at`` (or, when it is unusable,
        ``received_at``) lies in ``day``'s UTC window, converted (READ_WEB_SCHEMA), batch
        by batch, *not* de-duplicated (``extract`` is). ``orphans_of_sites`` (every known
        site) also returns the events of no known site."""
        stats = stats if stats is not None else ExtractStats()
        url = normalize_url(self.url)
        table = inspect_table(url, "web_events")
        query = self._query(table.kinds, url.get_backend_name(), day, site_ids,
                            orphans_of_sites)
        with arrow_batches(url, query) as reader:
            for batch in reader:
                if batch.num_rows:
                    stats.rows_read += batch.num_rows
                    yield convert_batch(batch)

    def extract(
        self, day: LocalDay, site_ids: Sequence[int],
        orphans_of_sites: Sequence[int] | None = None, stats: ExtractStats | None = None,
    ) -> pa.Table:
        """``extract_batches`` as one table, each event id once (the first row read);
        ``stats.duplicates_dropped`` counts the others. Sessionization needs the whole
        partition anyway, so the ids are de-duplicated over it in one pass, exactly,
        rather than remembered across batches; a keyed ``id`` skips the check."""
        stats = stats if stats is not None else ExtractStats()
        events = concat_read(list(self.extract_batches(day, site_ids, orphans_of_sites,
                                                       stats)))
        if inspect_table(self.url, "web_events").unique_id:
            return events
        keep = first_of_each_id(events["event_id"])
        dropped = int(len(keep) - np.count_nonzero(keep))
        stats.duplicates_dropped += dropped
        return events.filter(pa.array(keep)) if dropped else events

    def land(
        self, day: LocalDay, sites: pa.Table, orphans_of_sites: Sequence[int] | None = None,
        stats: ExtractStats | None = None,
        session_timeout_seconds: float = DEFAULT_SESSION_TIMEOUT_SECONDS,
    ) -> LandedPartition:
        """The events of ``sites`` (SITES_SCHEMA) as ``extract`` reads them, landed
        (``compute.land_web_events``), built batch by batch as they are read: only narrow
        codes of each batch are kept, never the partition's rows as read."""
        stats = stats if stats is not None else ExtractStats()
        builder = LandingBuilder(sites, day.start_utc, session_timeout_seconds,
                                 dedupe=not inspect_table(self.url, "web_events").unique_id)
        for batch in self.extract_batches(day, sites["id"].to_pylist(), orphans_of_sites,
                                          stats):
            builder.add(batch)
        landed = builder.finish()
        stats.duplicates_dropped += landed.duplicates
        return landed
