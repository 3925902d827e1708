"""Writing the web source's application tables (demo, tests, benchmarks): ``sites`` and
``web_events`` as the application keeps them (naive UTC timestamps)."""

from __future__ import annotations

from collections.abc import Iterable

from analytics_pipeline.core.sources import source_metadata
from analytics_pipeline.core.warehouse import make_engine
from analytics_pipeline.web.contract import src_sites, src_web_events


def write_web_source(url: str, sites: Iterable[dict], events: Iterable[dict],
                     fresh: bool = True) -> None:
    """Create the tables if needed; with ``fresh``, replace their rows, else append."""
    engine = make_engine(url)
    try:
        source_metadata.create_all(engine, tables=[src_sites, src_web_events])
        with engine.begin() as conn:
            if fresh:
                conn.execute(src_web_events.delete())
                conn.execute(src_sites.delete())
            sites, events = list(sites), list(events)
            if sites:
                conn.execute(src_sites.insert(), sites)
            for i in range(0, len(events), 50_000):
                conn.execute(src_web_events.insert(), events[i:i + 50_000])
    finally:
        engine.dispose()
