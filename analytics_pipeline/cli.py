"""``analytics-pipeline``: the read path (report) and the demo."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date


def _date(s: str) -> date:
    try:
        return date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {s!r}") from None


def cmd_report(args: argparse.Namespace) -> int:
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.core.warehouse import ensure_schema, make_engine
    from analytics_pipeline.report import metric_series

    engine = make_engine(args.warehouse_url or setting("ANALYTICS_WAREHOUSE_URL"))
    ensure_schema(engine)
    points = metric_series(
        engine, args.account, args.metric, args.date_from, args.date_to, by=args.by,
        dimension=args.dimension, dimension_id=args.id, business_hours=args.business_hours,
    )
    if args.json:
        print(json.dumps([
            {"period_start": p.period_start.isoformat(), "value": p.value, "count": p.count}
            for p in points
        ], indent=2))
        return 0
    print(f"{args.metric} for account {args.account}"
          + (f" {args.dimension} {args.id}" if args.dimension != "account" else "")
          + (" (business hours)" if args.business_hours else "") + f", by {args.by}")
    for p in points:
        v = "-" if p.value is None else (f"{p.value:.1f}" if isinstance(p.value, float)
                                        else str(p.value))
        print(f"{p.period_start.isoformat()}  {v:>12}  (events: {p.count})")
    return 0


def cmd_generate_demo_db(args: argparse.Namespace) -> int:
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.dev.demo import create_demo_source

    url = args.url or setting("ANALYTICS_SOURCE_URL")
    n = create_demo_source(url)
    print(f"demo application database with {n} reporting events at {url}")
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
    rep.add_argument("--dimension", choices=["account", "agent", "inbox", "email", "automation"],
                     default="account")
    rep.add_argument("--id", type=int, help="agent, inbox, email or automation id")
    rep.add_argument("--business-hours", action="store_true",
                     help="average the business-hours durations")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--warehouse-url", help="default: ANALYTICS_WAREHOUSE_URL")
    rep.set_defaults(fn=cmd_report)

    gen = sub.add_parser("generate-demo-db", help="(re)create the demo application database")
    gen.add_argument("--url", help="default: ANALYTICS_SOURCE_URL")
    gen.set_defaults(fn=cmd_generate_demo_db)

    demo = sub.add_parser("demo", help="generate demo data and materialize everything")
    demo.add_argument("--keep-source", action="store_true",
                      help="reuse the existing source database")
    demo.set_defaults(fn=cmd_demo)

    args = parser.parse_args(argv)
    _quiet_dagster_warnings()
    try:
        return args.fn(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
