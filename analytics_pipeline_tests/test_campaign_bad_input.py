"""Bad input of the campaign source, one case at a time, with the outcome each must get.

1. Application database rows, on a loosely typed SQLite source (no declared types: the
   application wrote whatever it wrote) and on a PostgreSQL source whose columns are text
   (``name``, ``channel_type`` and ``status`` bytea, to hold bytes that are not UTF-8):
   each bad row beside a clean campaign 1 (two contacts SENT) is counted under its reason
   in the ``problems`` of a read of every row, and gets the stated outcome in the reads a
   progress refresh makes (by campaign id: a row whose id is no integer is no campaign
   asked for, and is not read at all); campaign 1 is never disturbed.
2. Broker message bodies, parsed as a consumption parses them, quarantined into a SQLite
   and a PostgreSQL warehouse: each under its reason, once (a second pass adds nothing),
   its body kept readable (a NUL byte escaped, invalid UTF-8 as backslash escapes); a
   valid control message beside it is not quarantined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from analytics_pipeline.campaigns.broker import merge_parsed, message_key, parse_messages
from analytics_pipeline.campaigns.contract import (
    LANDED_MESSAGE_SCHEMA,
    REASON_BAD_PAGE,
    REASON_BAD_TYPE,
    REASON_MISSING_FIELD,
    REASON_NEGATIVE,
    REASON_NOT_JSON,
    REASON_UNKNOWN_KEY,
    SEND_KEY,
    TRACKED_KEY,
)
from analytics_pipeline.campaigns.progress import campaign_progress
from analytics_pipeline.campaigns.source import CampaignSource
from analytics_pipeline.campaigns.steps import quarantine_messages
from analytics_pipeline.core import warehouse as wh

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
CAMPAIGN_COLUMNS = ("id", "account_id", "name", "channel_type", "status", "created_at",
                    "scheduled_at")
CONTACT_COLUMNS = ("campaign_id", "contact_id", "status", "sent_at", "attempts", "error")
BYTEA = {"name", "channel_type", "status"}  # bytea on PostgreSQL


@dataclass(frozen=True)
class Bytes:
    """Raw bytes stored as TEXT (SQLite) or bytea (PostgreSQL)."""

    data: bytes


def _campaign(**kw) -> dict:
    return {"id": 2, "account_id": 10, "name": "spring", "channel_type": "Channel::Email",
            "status": "running", "created_at": "2026-03-01 10:00:00", "scheduled_at": None,
            **kw}


def _contact(**kw) -> dict:
    return {"campaign_id": 1, "contact_id": 900, "status": "SENT", "sent_at": None,
            "attempts": 1, "error": None, **kw}


@dataclass(frozen=True)
class Case:
    campaigns: tuple = ()  # rows beside the clean campaign 1
    contacts: tuple = ()  # rows beside campaign 1's two clean contacts
    problems: dict = field(default_factory=dict)  # read of every row → {reason: rows}
    pg_problems: dict | None = None  # … on PostgreSQL, where they differ
    campaign_ids: tuple | None = None  # campaigns read (default: 1, and 2 if a row has it)
    audience_1: int = 2  # campaign 1's audience
    sent_1: int = 2  # … and its contacts SENT
    risky: tuple = ()  # (campaign, contact, attempts) double-send candidates
    channel_2: str | None = "email"  # campaign 2's channel, when read
    name_2: str | None = "spring"
    sqlite_only: str = ""  # why PostgreSQL cannot hold the value, if it cannot


ROWS = {
    "campaign id 12x": Case((_campaign(id="12x"),), (),
                            {"campaigns": {"campaign id is not an integer": 1}},
                            campaign_ids=(1,)),
    "campaign id fractional": Case((_campaign(id=2.5),), (),
                                   {"campaigns": {"campaign id is not an integer": 1}},
                                   campaign_ids=(1,)),
    "campaign id overflow": Case((_campaign(id="99999999999999999999"),), (),
                                 {"campaigns": {"campaign id is not an integer": 1}},
                                 campaign_ids=(1,)),
    "campaign id null": Case((_campaign(id=None),), (),
                             {"campaigns": {"campaign id is not an integer": 1}},
                             campaign_ids=(1,)),
    "account id not an integer": Case((_campaign(account_id="10x"),), (),
                                      {"campaigns": {"account id is not an integer": 1}},
                                      campaign_ids=(1,)),
    "campaign id twice": Case((_campaign(), _campaign(name="again")), (),
                              {"campaigns": {"duplicate campaign id": 2}},
                              campaign_ids=(1,)),
    "name not UTF-8": Case((_campaign(name=Bytes(b"spr\xffing")),), (),
                           {"campaigns": {"name is not valid text (dropped)": 1}},
                           name_2=None),
    "NUL byte in the channel class": Case(
        (_campaign(channel_type=Bytes(b"Channel::\x00Sms")),), (),
        {"campaigns": {"channel_type is not valid text (dropped)": 1}}, channel_2="other"),
    "a channel class not in the list": Case((_campaign(channel_type="Channel::Telegram"),),
                                            channel_2="telegram"),
    "no channel class": Case((_campaign(channel_type=None),), channel_2="other"),
    "contact of campaign 1x": Case((), (_contact(campaign_id="1x"),),
                                   {"counts": {"contact's campaign id is not an integer": 1}}),
    "contact status in lower case": Case((), (_contact(status="sent"),),
                                         {"counts": {"contact status unknown": 1}},
                                         audience_1=3),
    "contact status not UTF-8": Case((), (_contact(status=Bytes(b"SEN\xffT")),),
                                     {"counts": {"contact status unknown": 1}}, audience_1=3),
    "NUL byte in a contact status": Case((), (_contact(status=Bytes(b"SE\x00NT")),),
                                         {"counts": {"contact status unknown": 1}},
                                         audience_1=3),
    "sent after 3 attempts": Case((), (_contact(attempts=3),), audience_1=3, sent_1=3,
                                  risky=((1, 900, 3),)),
    # (PostgreSQL's text attempts are filtered in SQL to canonical integers above 1: such a
    # value never reaches the conversion; SQLite's loose CAST lets it through to be counted)
    "attempts 2x": Case((), (_contact(attempts="2x"),),
                        {"risky": {"contact's attempts is not an integer": 1}}, {},
                        audience_1=3, sent_1=3),
    "attempts fractional": Case((), (_contact(attempts=2.5),),
                                {"risky": {"contact's attempts is not an integer": 1}}, {},
                                audience_1=3, sent_1=3),
    "contact id overflow, sent twice": Case(
        (), (_contact(contact_id="99999999999999999999", attempts=2),),
        {"risky": {"contact's campaign or contact id is not an integer": 1}},
        audience_1=3, sent_1=3),
    "failed after 5 attempts": Case((), (_contact(status="FAILED", attempts=5),),
                                    audience_1=3),
    "the same contact twice": Case((), (_contact(contact_id=1), _contact(contact_id=1)),
                                   audience_1=4, sent_1=4),
    "contact of an unknown campaign": Case((), (_contact(campaign_id=99),)),
    # spelt loosely, what the contract allows still counts
    "campaign id as text": Case((_campaign(id="2"),)),
    "attempts as text": Case((), (_contact(attempts="4"),), audience_1=3, sent_1=3,
                             risky=((1, 900, 4),)),
}


def _clean(rows_of_case: Case) -> tuple[list[dict], list[dict]]:
    campaigns = [_campaign(id=1, name="clean")] + list(rows_of_case.campaigns)
    contacts = [_contact(contact_id=1), _contact(contact_id=2)] + list(rows_of_case.contacts)
    return campaigns, contacts


def _sqlite_source(url: str, case: Case) -> None:
    campaigns, contacts = _clean(case)
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE campaigns ({', '.join(CAMPAIGN_COLUMNS)})")
        c.exec_driver_sql(f"CREATE TABLE campaign_contacts ({', '.join(CONTACT_COLUMNS)})")
        for table, columns, rows in (("campaigns", CAMPAIGN_COLUMNS, campaigns),
                                     ("campaign_contacts", CONTACT_COLUMNS, contacts)):
            for r in rows:
                marks = ["CAST(? AS TEXT)" if isinstance(r[k], Bytes) else "?" for k in columns]
                c.exec_driver_sql(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(marks)})",
                    tuple(r[k].data if isinstance(r[k], Bytes) else r[k] for k in columns))
    engine.dispose()


def _pg_source(url: str, case: Case) -> None:
    campaigns, contacts = _clean(case)
    engine = sa.create_engine(wh.normalize_url(url))
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE IF EXISTS campaigns, campaign_contacts")
        for table, columns, rows in (("campaigns", CAMPAIGN_COLUMNS, campaigns),
                                     ("campaign_contacts", CONTACT_COLUMNS, contacts)):
            c.exec_driver_sql(f"CREATE TABLE {table} (" + ", ".join(
                f"{k} {'bytea' if k in BYTEA else 'text'}" for k in columns) + ")")
            for r in rows:
                params = {}
                for k in columns:
                    v = r[k]
                    if v is None:
                        params[k] = None
                    elif k in BYTEA:
                        params[k] = v.data if isinstance(v, Bytes) else str(v).encode()
                    else:
                        params[k] = repr(v) if isinstance(v, float) else str(v)
                c.execute(sa.text(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ("
                                  + ", ".join(f":{k}" for k in columns) + ")"), params)
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("name", list(ROWS))
def test_a_bad_application_row_gets_its_outcome(name, backend, tmp_path, request):
    case = ROWS[name]
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
        _sqlite_source(url, case)
    else:
        if case.sqlite_only:
            pytest.skip(case.sqlite_only)
        url = request.getfixturevalue("pg_source_url")
        _pg_source(url, case)
    src = CampaignSource(url)
    every = {"campaigns": src.campaigns().problems, "counts": src.contact_counts().problems,
             "risky": src.risky_contacts().problems}
    problems = case.problems if backend == "sqlite" or case.pg_problems is None \
        else case.pg_problems
    assert every == {k: problems.get(k, {}) for k in every}
    campaigns, counts, risky = src.progress_reads([1, 2, 99])
    expected_ids = case.campaign_ids or ((1, 2) if case.campaigns else (1,))
    assert tuple(campaigns.table["campaign_id"].to_pylist()) == expected_ids
    by_id = {r["campaign_id"]: r for r in campaigns.table.to_pylist()}
    assert by_id[1]["name"] == "clean" and by_id[1]["channel"] == "email"
    if 2 in by_id:
        assert (by_id[2]["channel"], by_id[2]["name"]) == (case.channel_2, case.name_2)
    one = {r["campaign_id"]: r for r in counts.table.to_pylist()}[1]
    assert (one["audience"], one["contacts_sent"]) == (case.audience_1, case.sent_1)
    assert tuple((r["campaign_id"], r["contact_id"], r["attempts"])
                 for r in risky.table.to_pylist()) == case.risky
    # and the progress takes the reads as they are: campaign 1 is whole
    progress = campaign_progress(campaigns.table, counts.table, _no_messages(SEND_KEY),
                                 _no_messages(TRACKED_KEY), 1000, NOW)
    row = {r["campaign_id"]: r for r in progress.to_pylist()}[1]
    assert (row["audience"], row["contacts_sent"], row["pages_expected"]) == \
        (case.audience_1, case.sent_1, 1)


def _no_messages(kind: str) -> pa.Table:
    sends, tracked, _ = merge_parsed(parse_messages(LANDED_MESSAGE_SCHEMA.empty_table(), NOW))
    return sends if kind == SEND_KEY else tracked


# --- broker messages -----------------------------------------------------------------------

SEND = {"campaignId": 7, "page": 1, "totalPages": 2, "contactIds": [1, 2], "templateId": 3,
        "channelType": "Channel::Email", "correlationId": "c-1"}
TRACKED = {"campaignId": 7, "page": 1, "sentCount": 2, "failedCount": 0, "completed": False,
           "correlationId": "c-1"}


def _body(base: dict, **kw) -> bytes:
    return json.dumps({k: v for k, v in {**base, **kw}.items() if v is not ...}).encode()


MESSAGES = {
    "not JSON": (SEND_KEY, b"campaign 7 page 1", REASON_NOT_JSON),
    "invalid UTF-8": (SEND_KEY, _body(SEND, correlationId="x").replace(b"x", b"\xff"),
                      REASON_NOT_JSON),
    "raw NUL byte": (TRACKED_KEY, _body(TRACKED, correlationId="x").replace(b"x", b"\x00"),
                     REASON_NOT_JSON),
    "a JSON array": (SEND_KEY, b"[1, 2]", REASON_NOT_JSON),
    "empty body": (TRACKED_KEY, b"", REASON_NOT_JSON),
    "campaign id as text": (SEND_KEY, _body(SEND, campaignId="7"), REASON_BAD_TYPE),
    "campaign id overflow": (TRACKED_KEY, _body(TRACKED, campaignId=2**64), REASON_BAD_TYPE),
    "page fractional": (SEND_KEY, _body(SEND, page=1.5), REASON_BAD_TYPE),
    "a contact id null": (SEND_KEY, _body(SEND, contactIds=[1, None]), REASON_BAD_TYPE),
    "a contact id overflow": (SEND_KEY, _body(SEND, contactIds=[1, 10**20]), REASON_BAD_TYPE),
    "completed as text": (TRACKED_KEY, _body(TRACKED, completed="yes"), REASON_BAD_TYPE),
    "contact ids missing": (SEND_KEY, _body(SEND, contactIds=...), REASON_MISSING_FIELD),
    "sent count null": (TRACKED_KEY, _body(TRACKED, sentCount=None), REASON_MISSING_FIELD),
    "negative failed count": (TRACKED_KEY, _body(TRACKED, failedCount=-1), REASON_NEGATIVE),
    "page 0 of a send": (SEND_KEY, _body(SEND, page=0), REASON_BAD_PAGE),
    "page beyond the total": (SEND_KEY, _body(SEND, page=3), REASON_BAD_PAGE),
    "negative tracked page": (TRACKED_KEY, _body(TRACKED, page=-1), REASON_BAD_PAGE),
    "unknown routing key": ("campaigns.retry", _body(SEND), REASON_UNKNOWN_KEY),
    # what the contract allows is no problem
    "no template, no correlation id": (SEND_KEY, _body(SEND, templateId=...,
                                                       correlationId=None), None),
    "unknown extra field": (TRACKED_KEY, _body(TRACKED, extra={"deep": [1]}), None),
    "escaped NUL in a text field": (TRACKED_KEY, _body(TRACKED, correlationId="a\u0000b"),
                                    None),
}


def _delivery(routing_key: str, body: bytes, message_id: str | None, tag: int) -> dict:
    return {"message_key": message_key(routing_key, body, message_id),
            "message_id": message_id, "routing_key": routing_key, "body": body,
            "delivery_tag": tag, "redelivered": False, "received_at": NOW,
            "published_at": None, "consumer_run": "test"}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_a_bad_message_is_quarantined_once_with_its_reason(name, warehouse_url):
    routing_key, body, reason = MESSAGES[name]
    control = _body(TRACKED, page=2)
    deliveries = pa.Table.from_pylist(
        [_delivery(routing_key, body, None, 1), _delivery(TRACKED_KEY, control, "ok", 2),
         _delivery(routing_key, body, None, 3)],  # the bad one delivered twice
        schema=LANDED_MESSAGE_SCHEMA)
    parsed = parse_messages(deliveries, NOW)
    sends, tracked, quarantined = merge_parsed(parsed)
    key = message_key(routing_key, body, None)
    assert "ok" in tracked["message_key"].to_pylist()
    engine = wh.make_engine(warehouse_url)
    wh.ensure_schema(engine)
    try:
        if reason is None:
            assert quarantined.num_rows == 0
            valid = sends if routing_key == SEND_KEY else tracked
            row = valid.filter(pc.equal(valid["message_key"], key)).to_pylist()
            assert len(row) == 1 and row[0]["delivery_count"] == 2
            return
        assert quarantined.select(["event_id", "reason"]).to_pylist() == [
            {"event_id": key, "reason": reason}]
        assert quarantine_messages(engine, quarantined, parsed) == 1
        assert quarantine_messages(engine, quarantined, parsed) == 0  # once
        q = wh.quarantine.c
        with engine.connect() as c:
            [(stored_reason, payload)] = c.execute(sa.select(q.reason, q.payload).where(
                q.event_id == key)).all()
        assert stored_reason == reason
        assert payload == body.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    finally:
        engine.dispose()
