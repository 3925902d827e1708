"""Compaction of the landed Mailgun log: a UTC date folder's files rewritten into one.

Each fetch appends one file per date folder per flush, so a day ends with up to ~2,900
files per stream that every reader (the settling pass's landed ids, the daily extraction,
the full state rebuild) opens one by one. Once a date is older than the settled watermark
only the reconciliation pass (and a re-fetch after a crash) still appends to it, so its
files are rewritten into one ``compact-<token>.parquet``, each event id once (the first
fetched, what ``ProviderEventLog.read`` keeps):

1. written aside (``.tmp-compact-*``), reading the ids first and then one file at a time;
2. in one warehouse transaction holding the state refresh's lock: the journal of log files
   (``email_log_files``) swaps the replaced paths for the new one (``record_compaction``),
   the compacted file is made visible (a rename), then the replaced files are hidden
   (renamed ``.replaced-<token>-*``), and the transaction commits; a failure undoes the
   renames. A refresh therefore lists files and journal both before or both after.
   A reader that lists the folder meanwhile sees both (de-duplicated by id) or the
   compacted file alone; one whose listed file vanished lists again (``_read_day``);
3. the hidden files are deleted once committed. A compaction killed between 2 and 3 left
   hidden files behind: the next compaction of the folder deletes them if the journal
   holds the compacted file (committed), else restores them and hides the compacted one.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy.engine import Engine

from analytics_pipeline.core.landing import Compaction, ProviderEventLog
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA
from analytics_pipeline.email.state import journaled, lock_email_state, record_compaction

# A folder is compacted once it holds this many files: a day's folder has ~1,500-2,900
# when it leaves the settling window, a compacted one gains at most a file per
# reconciliation pass (every 6 h) that finds missed events, so readers open at most ~50
# files per date and a folder is rewritten again only after many reconciliations.
COMPACT_MIN_FILES = 50


@dataclass
class CompactionResult:
    day: date
    files_replaced: int
    rows: int
    folded: bool  # recorded as already folded into the recipient states


def _rel(log: ProviderEventLog, day: date, name: str) -> str:
    return posixpath.relpath(posixpath.join(log.date_dir(day), name), log.base)


def settled_days(log: ProviderEventLog, settled_until: float,
                 days_back: int | None) -> list[date]:
    """Landed UTC dates that ended before ``settled_until`` (only the reconciliation pass
    still appends to them), the last ``days_back`` of them (None: all)."""
    end = datetime.fromtimestamp(settled_until, timezone.utc).date()
    first = None if days_back is None else end - timedelta(days=days_back)
    return [d for d in log.days() if d < end and (first is None or d >= first)]


def compact_log(log: ProviderEventLog, engine: Engine, kind: str, days: Iterable[date],
                min_files: int = COMPACT_MIN_FILES) -> list[CompactionResult]:
    """Compact every date folder of ``days`` holding at least ``min_files`` files.
    Idempotent and safe to re-run after a failure at any point (see the module doc)."""
    out = []
    for day in days:
        recover(log, engine, kind, day)
        c = log.prepare_compaction(day, PROVIDER_EVENT_SCHEMA, min_files=min_files)
        if c is None:
            continue
        try:
            with engine.begin() as conn:
                folded = record_compaction(conn, kind, [_rel(log, day, n) for n in c.replaced],
                                           _rel(log, day, c.name), c.rows)
                try:
                    log.publish_compaction(c)
                except BaseException:
                    log.undo_compaction(c)
                    raise
        except FileNotFoundError:  # compacted meanwhile by someone else: nothing to do
            log.discard_compaction(c)
            continue
        except BaseException:
            # the transaction did not commit: the replaced files become visible again
            log.undo_compaction(c)
            raise
        log.finish_compaction(c)
        out.append(CompactionResult(day, len(c.replaced), c.rows, folded))
    return out


def recover(log: ProviderEventLog, engine: Engine, kind: str, day: date) -> int:
    """Finish or undo what a compaction killed after publishing left in ``day``'s folder;
    returns the compactions handled."""
    leftovers = log.replaced_leftovers(day)
    for token, names in leftovers.items():
        c = Compaction(day=day, replaced=names, name=f"compact-{token}.parquet", token=token,
                       rows=0)
        with engine.begin() as conn:
            lock_email_state(conn, kind)
            if journaled(conn, kind, _rel(log, day, c.name)):
                log.finish_compaction(c)
            else:
                log.undo_compaction(c)
    return len(leftovers)
