"""``analytics-pipeline``: the read path (report) and the demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING

from analytics_pipeline.core.registry import Unit

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def _date(s: str) -> date:
    try:
        return date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {s!r}") from None


def _shown(value: float | int | None, unit: Unit) -> str:
    """A report value for people: durations (stored in seconds) in minutes."""
    if value is None:
        return "-"
    if unit is Unit.SECONDS:
        return f"{value / 60:.1f} min"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


@contextmanager
def _reading_warehouse(url: str) -> Iterator[Engine]:
    """An engine on the existing warehouse at ``url`` (never created); a database error
    while reading becomes one line naming the redacted URL."""
    import sqlalchemy as sa

    from analytics_pipeline.core.warehouse import (
        WarehouseUnavailable,
        open_warehouse_for_read,
        redact,
        scrub,
    )

    engine = open_warehouse_for_read(url)
    try:
        yield engine
    except sa.exc.SQLAlchemyError as exc:  # e.g. the connection dropped, an older schema
        detail = scrub(str(getattr(exc, "orig", None) or exc), url).strip().splitlines()[0]
        raise WarehouseUnavailable(f"reading the warehouse at {redact(url)} failed: "
                                   f"{detail}") from None
    finally:
        engine.dispose()


def cmd_report(args: argparse.Namespace) -> int:
    from analytics_pipeline.catalog import get_metric
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.report import metric_series, reportable_account

    metric = get_metric(args.metric)  # an unknown name fails before any database is opened
    url = args.warehouse_url or setting("ANALYTICS_WAREHOUSE_URL")
    with _reading_warehouse(url) as engine:
        account = reportable_account(engine, args.account, url)
        points = metric_series(
            engine, args.account, metric.name, args.date_from, args.date_to, by=args.by,
            dimension=args.dimension, dimension_id=args.id, business_hours=args.business_hours,
        )
    if args.json:
        print(json.dumps([
            {"period_start": p.period_start.isoformat(), "period_end": p.period_end.isoformat(),
             "partial": p.partial, "value": p.value, "unit": metric.unit.value,
             "count": p.count}
            for p in points
        ], indent=2))
        return 0
    what = ("average duration in minutes (sum/count over the events)"
            if metric.unit is Unit.SECONDS else "count")
    print(f"{metric.name} for account {args.account} ({account['timezone']})"
          + (f" {args.dimension} {args.id}" if args.dimension != "account" else "")
          + (" (business hours)" if args.business_hours else "") + f", by {args.by}; value: {what}")
    for p in points:
        days = p.period_start.isoformat() + (
            f"..{p.period_end.isoformat()}" if p.period_end != p.period_start else "")
        note = f"  (partial {args.by}: only days within --from..--to)" if p.partial else ""
        print(f"{days:<22}  {_shown(p.value, metric.unit):>12}  (events: {p.count}){note}")
    return 0


def _instant(s: str) -> datetime:
    """An ISO instant; without an offset it is read as UTC (said in --help)."""
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO instant: {s!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _duration(v: float | None) -> str:
    return "-" if v is None else f"{int(v // 60)}m{int(v % 60):02d}s"


def cmd_web_stats(args: argparse.Namespace) -> int:
    from analytics_pipeline.core.landing import LandingStore
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.web.read import SiteNotReportable, site_info, web_stats

    url = args.warehouse_url or setting("ANALYTICS_WAREHOUSE_URL")
    with _reading_warehouse(url) as engine:
        try:
            stats = web_stats(
                engine, LandingStore(setting("ANALYTICS_LANDING_URI")), args.site,
                args.start, args.end, by=args.by, breakdown=args.breakdown, limit=args.limit)
            tz = site_info(engine, args.site).timezone
        except SiteNotReportable as exc:
            raise ValueError(str(exc)) from None
    if args.json:
        print(json.dumps(stats.as_dict(), indent=2, default=str))
        return 0
    t = stats.totals
    print(f"site {args.site} ({tz}), [{stats.start.isoformat()}, {stats.end.isoformat()})")
    print(f"visitors {t['visitors']}  new {t['new_visitors']}  visits {t['visits']}  "
          f"pageviews {t['pageviews']}  events {t['events']}  bounce rate "
          f"{_rate(t['bounce_rate'])}  visit duration {_duration(t['visit_duration_seconds'])}")
    for note in stats.notes:
        print(f"note: {note}")
    if stats.series is not None:
        print(f"\n{'start':<26} {'visitors':>8} {'visits':>7} {'pageviews':>9} {'bounce':>6}")
        for r in stats.series.to_dict("records"):
            start = r["start"].tz_convert(tz).isoformat()  # the site's local hours and days
            print(f"{start:<26} {r['visitors']:>8} {r['visits']:>7} "
                  f"{r['pageviews']:>9} {_rate(r['bounce_rate']):>6}")
    if stats.breakdown is not None:
        print(f"\n{args.breakdown:<40} {'visitors':>8} {'visits':>7} {'pageviews':>9} "
              f"{'bounce':>6} {'duration':>8}")
        for r in stats.breakdown.to_dict("records"):
            value = str(r["value"]) if len(str(r["value"])) <= 40 else str(r["value"])[:39] + "…"
            print(f"{value:<40} {r['visitors']:>8} {r['visits']:>7} {r['pageviews']:>9} "
                  f"{_rate(r['bounce_rate']):>6} {_duration(r['visit_duration_seconds']):>8}")
    return 0


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or v != v else fmt.format(v)


def cmd_push_impact(args: argparse.Namespace) -> int:
    from analytics_pipeline.core.landing import LandingStore
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.push.read import as_json, push_impact
    from analytics_pipeline.report import AccountNotReportable

    url = args.warehouse_url or setting("ANALYTICS_WAREHOUSE_URL")
    with _reading_warehouse(url) as engine:
        try:
            landing = args.landing_uri or setting("ANALYTICS_LANDING_URI")
            df = push_impact(engine, LandingStore(landing),
                             args.account, args.date_from, args.date_to,
                             campaign=args.campaign, automation=args.automation,
                             metric=args.metric, window_hours=args.window, alpha=args.alpha,
                             warehouse_url=url)
        except AccountNotReportable as exc:
            raise ValueError(str(exc)) from None
    if args.json:
        print(json.dumps(as_json(df), indent=2))
        return 0
    missing = int(df["days_without_activity"].max()) if len(df) else 0
    print(f"push impact for account {args.account}, sends {args.date_from}..{args.date_to}, "
          f"activity: {args.metric} per user in the window before vs after each push")
    if missing:
        print(f"note: {missing} day(s) of the range have pushes but no PostHog activity "
              "landed yet (their after-window may still be open)")
    if not len(df):
        print("no campaign or automation with delivered pushes in the range")
        return 0
    print(f"{'campaign / automation':<28} {'W':>4} {'users':>6} {'mapped':>6} {'before':>7} "
          f"{'after':>7} {'lift':>7} {'lift 95% CI':>17} {'p (t)':>7} {'DiD':>7} "
          f"{'DiD 95% CI':>17}  significant")
    for r in df.to_dict("records"):
        label = r["label"] if len(r["label"]) <= 28 else r["label"][:27] + "…"
        sig = r["significant"]
        print(f"{label:<28} {int(r['window_hours']):>3}h {int(r['users']):>6} "
              f"{_rate(r['mapped_rate'] if r['mapped_rate'] == r['mapped_rate'] else None):>6}"
              f" {_num(r['mean_before']):>7} {_num(r['mean_after']):>7} "
              f"{_num(r['lift'], '{:+.1%}'):>7} "
              f"{_num(r['lift_ci_low'], '{:+.1%}') + '..' + _num(r['lift_ci_high'], '{:+.1%}'):>17}"
              f" {_num(r['p_value_t'], '{:.3f}'):>7} {_num(r['did']):>7} "
              f"{_num(r['did_ci_low']) + '..' + _num(r['did_ci_high']):>17}  "
              f"{'-' if sig is None or sig != sig else ('yes' if sig else 'no')}")
    return 0


def cmd_campaigns(args: argparse.Namespace) -> int:
    from analytics_pipeline.campaigns.read import as_json, campaign_progress
    from analytics_pipeline.core.settings import setting

    url = args.warehouse_url or setting("ANALYTICS_WAREHOUSE_URL")
    with _reading_warehouse(url) as engine:
        df = campaign_progress(engine, args.account, args.campaign, warehouse_url=url)
    if args.json:
        print(json.dumps(as_json(df), indent=2))
        return 0
    print(f"campaigns of account {args.account}"
          + (f", campaign {args.campaign}" if args.campaign is not None else "")
          + " (as of their last progress refresh; pages tracked/published/expected)")
    if not len(df):
        print("no campaign with consumed messages")
        return 0
    print(f"{'campaign':>10} {'channel':<9} {'audience':>9} {'pages':>17} {'sent':>9} "
          f"{'failed':>7} {'progress':>8} {'completed':>9} {'stuck':>5} {'dup pages':>9} "
          f"{'double sends':>12}  last report (UTC)")
    for r in df.to_dict("records"):
        pages = f"{r['pages_tracked']}/{r['pages_published']}/{r['pages_expected']}"
        last = r["last_reported_at"]
        last = "-" if last is None or last != last else str(last)[:19]
        print(f"{r['campaign_id']:>10} {str(r['channel'])[:9]:<9} {r['audience']:>9} "
              f"{pages:>17} {r['sent']:>9} {r['failed']:>7} {r['progress']:>8.1%} "
              f"{'yes' if r['completed'] else 'no':>9} {'yes' if r['stuck'] else 'no':>5} "
              f"{r['duplicate_pages']:>9} {r['double_sends']:>12}  {last}")
    return 0


def cmd_generate_demo_db(args: argparse.Namespace) -> int:
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.core.warehouse import redact
    from analytics_pipeline.dev.demo import create_demo_source

    url = args.url or setting("ANALYTICS_SOURCE_URL")
    n, n_web = create_demo_source(url)
    print(f"demo application database with {n} reporting events and {n_web} web events at "
          f"{redact(url)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from analytics_pipeline.dev.demo import run_demo

    return run_demo(regenerate=not args.keep_source)


def _quiet_dagster_warnings() -> None:
    """Dagster's beta/preview notices (backfill policies, ...) are noise for operators."""
    import warnings

    try:
        from dagster import BetaWarning, PreviewWarning
    except ImportError:  # pragma: no cover - older Dagster
        return
    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analytics-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("report", help="a metric for one account over a date range")
    rep.add_argument("--account", type=int, required=True)
    rep.add_argument("--metric", required=True)
    rep.add_argument("--from", dest="date_from", type=_date, required=True)
    rep.add_argument("--to", dest="date_to", type=_date, required=True)
    rep.add_argument("--by", choices=["day", "week", "month"], default="day")
    rep.add_argument("--dimension", choices=["account", "agent", "inbox", "email", "automation",
                                             "campaign", "channel"], default="account")
    rep.add_argument("--id", type=int, help="agent, inbox, email, automation, campaign or "
                     "channel id (a push automation: its number in push_automations; a "
                     "campaign channel: its number in campaigns.metrics.CHANNEL_IDS)")
    rep.add_argument("--business-hours", action="store_true",
                     help="average the business-hours durations")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--warehouse-url", help="default: ANALYTICS_WAREHOUSE_URL")
    rep.set_defaults(fn=cmd_report)

    web = sub.add_parser("web-stats", help="a site's web analytics over [from, to)")
    web.add_argument("--site", type=int, required=True)
    web.add_argument("--from", dest="start", type=_instant, required=True,
                     help="ISO instant, e.g. 2026-11-20T09:30:00-05:00 (no offset: UTC)")
    web.add_argument("--to", dest="end", type=_instant, required=True,
                     help="ISO instant, excluded")
    web.add_argument("--by", choices=["hour", "day"], help="a zero-filled series")
    web.add_argument("--breakdown", help="name, page, entry_page, exit_page, referrer, "
                     "utm_source, utm_medium, utm_campaign, device, browser, os, country")
    web.add_argument("--limit", type=int, default=10)
    web.add_argument("--json", action="store_true")
    web.add_argument("--warehouse-url", help="default: ANALYTICS_WAREHOUSE_URL")
    web.set_defaults(fn=cmd_web_stats)

    push = sub.add_parser("push-impact", help="did pushed users become more active? per "
                          "campaign and automation, over a range of send dates")
    push.add_argument("--account", type=int, required=True)
    which = push.add_mutually_exclusive_group()
    which.add_argument("--campaign", type=int)
    which.add_argument("--automation", help="automation id")
    push.add_argument("--from", dest="date_from", type=_date, required=True,
                      help="first local send date")
    push.add_argument("--to", dest="date_to", type=_date, required=True,
                      help="last local send date (included)")
    push.add_argument("--metric", choices=["events", "active_hours"], default="events")
    push.add_argument("--window", type=int, help="window hours (default: every window)")
    push.add_argument("--alpha", type=float, default=0.05, help="significance level")
    push.add_argument("--json", action="store_true")
    push.add_argument("--warehouse-url", help="default: ANALYTICS_WAREHOUSE_URL")
    push.add_argument("--landing-uri", help="default: ANALYTICS_LANDING_URI")
    push.set_defaults(fn=cmd_push_impact)

    camp = sub.add_parser("campaigns", help="an account's campaigns: dispatch progress as of "
                          "the last refresh")
    camp.add_argument("--account", type=int, required=True)
    camp.add_argument("--campaign", type=int, help="one campaign only")
    camp.add_argument("--json", action="store_true",
                      help="one object per campaign (progress: a fraction 0..1)")
    camp.add_argument("--warehouse-url", help="default: ANALYTICS_WAREHOUSE_URL")
    camp.set_defaults(fn=cmd_campaigns)

    gen = sub.add_parser("generate-demo-db", help="(re)create the demo application database")
    gen.add_argument("--url", help="default: ANALYTICS_SOURCE_URL")
    gen.set_defaults(fn=cmd_generate_demo_db)

    demo = sub.add_parser("demo", help="generate demo data and materialize everything")
    demo.add_argument("--keep-source", action="store_true",
                      help="reuse the existing source database")
    demo.set_defaults(fn=cmd_demo)

    args = parser.parse_args(argv)
    _quiet_dagster_warnings()
    from analytics_pipeline.core.warehouse import WarehouseUnavailable

    try:
        return args.fn(args)
    except (ValueError, WarehouseUnavailable) as exc:  # messages hold redacted URLs only
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
