"""Email semantics on Arrow: matching, recipient state, stats and the ≥ 5 open-rate rule."""

from datetime import datetime, timezone

import pyarrow as pa

from analytics_pipeline.dev.mailgun_simulator import sample_item
from analytics_pipeline.email.compute import (
    automation_stats,
    email_stats,
    match_recipients,
    member_stats,
    recipient_facts,
    recipient_states,
)
from analytics_pipeline.email.mailgun import parse_items
from analytics_pipeline.email.source import RECIPIENT_SCHEMA

T = 1_772_000_000.0


def recipients(*rows) -> pa.Table:
    keys = ["recipient_id", "account_id", "email_id", "member_id", "member_email",
            "message_id", "automation_id", "track_opens"]
    return pa.Table.from_pylist([dict(zip(keys, r, strict=True)) for r in rows],
                                schema=RECIPIENT_SCHEMA)


def provider(*items):
    return parse_items(list(items), fetched_at=T + 10_000).events


def states_of(items, recs):
    return {r["recipient_id"]: r for r in
            recipient_states(match_recipients(provider(*items), recs).events).to_pylist()}


def at(offset):
    return datetime.fromtimestamp(T + offset, timezone.utc)


RECS = recipients((1, 10, 100, 1000, "Ann@Example.com", "<batch-1@mg>", None, True),
                  (2, 10, 100, 1001, "bob@example.com", "<batch-1@mg>", None, True),
                  (3, 10, 101, 1000, "ann@example.com", "<batch-2@mg>", 7, True))


def test_match_by_message_id_and_address_case_insensitive():
    m = match_recipients(provider(
        sample_item("a", "delivered", T, "ANN@example.com", "<batch-1@mg>"),
        sample_item("b", "delivered", T, "bob@example.com", "<batch-1@mg>"),
        sample_item("c", "delivered", T, "ann@example.com", "<batch-2@mg>"),
        sample_item("d", "delivered", T, "carl@example.com", "<batch-1@mg>"),
        sample_item("e", "delivered", T, "ann@example.com", "<unknown@mg>"),
    ), RECS)
    got = dict(zip(m.events["event_id"].to_pylist(), m.events["recipient_id"].to_pylist(),
                   strict=True))
    assert got == {"a": 1, "b": 2, "c": 3}
    assert sorted(m.unmatched["event_id"].to_pylist()) == ["d", "e"]
    assert m.events.filter(pa.compute.equal(m.events["event_id"], "c"))["automation_id"][0] \
        .as_py() == 7


def test_out_of_order_opens_keep_the_earliest():
    s = states_of([sample_item("o2", "opened", T + 50, "ann@example.com", "<batch-1@mg>"),
                   sample_item("o1", "opened", T + 20, "ann@example.com", "<batch-1@mg>"),
                   sample_item("d", "delivered", T + 5, "ann@example.com", "<batch-1@mg>"),
                   sample_item("o3", "opened", T + 90, "ann@example.com", "<batch-1@mg>")],
                  RECS)
    assert s[1]["opened_at"] == at(20) and s[1]["delivered_at"] == at(5)
    assert s[1]["clicked_at"] is None


def test_temporary_then_permanent_then_temporary_failure():
    s = states_of([
        sample_item("f1", "failed", T + 1, "bob@example.com", "<batch-1@mg>",
                    severity="temporary"),
    ], RECS)
    assert s[2]["failed_at"] is None and s[2]["temporary_failures"] == 1
    s = states_of([
        sample_item("f1", "failed", T + 1, "bob@example.com", "<batch-1@mg>",
                    severity="temporary"),
        sample_item("f2", "failed", T + 2, "bob@example.com", "<batch-1@mg>",
                    severity="permanent", code=550),
        sample_item("f3", "failed", T + 3, "bob@example.com", "<batch-1@mg>",
                    severity="temporary"),
    ], RECS)
    assert s[2]["failed_at"] == at(2) and s[2]["failure_code"] == "550"
    assert s[2]["temporary_failures"] == 2 and s[2]["last_temporary_failure_at"] == at(3)


def test_state_does_not_depend_on_arrival_order():
    items = [sample_item(f"e{i}", ev, T + i, "ann@example.com", "<batch-1@mg>")
             for i, ev in enumerate(["clicked", "opened", "delivered", "unsubscribed"])]
    a = recipient_states(match_recipients(provider(*items), RECS).events)
    b = recipient_states(match_recipients(provider(*reversed(items)), RECS).events)
    assert a.equals(b)


def _open_rate_case(n_tracked: int):
    recs = recipients(*[(i, 1, 500, 9000 + i, f"m{i}@x.com", "<b@mg>", None, True)
                        for i in range(1, n_tracked + 1)],
                      (99, 1, 501, 9099, "u@x.com", "<c@mg>", None, False))
    items = [sample_item("o1", "opened", T, "m1@x.com", "<b@mg>"),
             sample_item("o2", "opened", T, "m2@x.com", "<b@mg>"),
             sample_item("o9", "opened", T, "u@x.com", "<c@mg>")]
    st = recipient_states(match_recipients(provider(*items), recs).events)
    return {r["email_id"]: r for r in email_stats(recipient_facts(recs, st)).to_pylist()}


def test_open_rate_needs_five_tracked_recipients():
    four = _open_rate_case(4)
    assert four[500]["sent_count"] == 4 and four[500]["opened_count"] == 2
    assert four[500]["open_rate"] is None
    five = _open_rate_case(5)
    assert five[500]["open_rate"] == 2 / 5
    assert five[501]["open_rate"] is None  # untracked email: never a rate


def test_automation_and_member_stats():
    recs = recipients(
        *[(i, 1, 600 + i % 2, 7000 + i % 3, f"m{i}@x.com", f"<a{i % 2}@mg>", 42, True)
          for i in range(1, 13)])
    items = [sample_item(f"o{i}", "opened", T, f"m{i}@x.com", f"<a{i % 2}@mg>")
             for i in range(1, 7)]
    items += [sample_item("f", "failed", T, "m7@x.com", "<a1@mg>", severity="permanent")]
    st = recipient_states(match_recipients(provider(*items), recs).events)
    facts = recipient_facts(recs, st)
    [auto] = automation_stats(facts).to_pylist()
    assert (auto["automation_id"], auto["sent_count"], auto["opened_count"],
            auto["failed_count"]) == (42, 12, 6, 1)
    assert auto["open_rate"] == 0.5
    members = {r["member_id"]: r for r in member_stats(facts).to_pylist()}
    assert sum(m["email_count"] for m in members.values()) == 12
    assert members[7000]["email_count"] == 4
    assert members[7000]["email_opened_count"] == 2  # m3 and m6
    assert members[7000]["email_open_rate"] is None  # only 4 tracked emails


def test_recipients_by_message_id_use_bound_parameters(source_url):
    from analytics_pipeline.core.warehouse import make_engine
    from analytics_pipeline.dev.demo import write_source
    from analytics_pipeline.email.source import EmailSource, src_email_recipients, src_emails

    write_source(source_url, [{"id": 1, "name": "a", "reporting_timezone": None}], [])
    e = make_engine(source_url)
    with e.begin() as c:
        c.execute(src_emails.insert(), [{"id": 5, "account_id": 1, "kind": "newsletter",
                                         "track_opens": True}])
        c.execute(src_email_recipients.insert(), [
            {"id": i, "account_id": 1, "email_id": 5, "member_id": i,
             "member_email": f"m{i}@x", "provider_message_id": f"<m{i % 3}@mg>"}
            for i in range(9)])
    e.dispose()
    src = EmailSource(source_url)
    assert src.recipients("newsletter").num_rows == 9
    got = src.recipients("newsletter", message_ids=["<m1@mg>", "x'); DROP TABLE emails;--"])
    assert sorted(got["recipient_id"].to_pylist()) == [1, 4, 7]
    assert src.recipients("newsletter", message_ids=[]).num_rows == 0
    assert src.recipients("automation").num_rows == 0


def test_message_ids_match_with_or_without_angle_brackets():
    """The send API returns ``<id>``, the Events API reports ``id``: both spellings match."""
    recs = recipients((1, 10, 100, 1000, "ann@example.com", "<2026.abc@mg.example.com>", None,
                       True),
                      (2, 10, 100, 1001, "bob@example.com", " 2026.abc@mg.example.com ", None,
                       True))
    events = provider(sample_item("a", "delivered", T, "ann@example.com",
                                  "2026.abc@mg.example.com"),
                      sample_item("b", "delivered", T, "bob@example.com",
                                  " <2026.abc@mg.example.com> "))
    assert events["message_id"].to_pylist() == ["2026.abc@mg.example.com"] * 2
    m = match_recipients(events, recs)
    assert sorted(m.events["recipient_id"].to_pylist()) == [1, 2]
    assert m.unmatched.num_rows == 0
    # a log landed before ids were normalized still matches
    old = events.set_column(events.schema.get_field_index("message_id"), "message_id",
                            pa.array(["<2026.abc@mg.example.com>"] * 2))
    assert sorted(match_recipients(old, recs).events["recipient_id"].to_pylist()) == [1, 2]


def test_sanitize_text_replaces_nul_in_sliced_and_list_columns():
    """Landed batches are often slices; list columns (tags) may hold nulls."""
    from analytics_pipeline.email.mailgun import sanitize_text

    t = pa.table({"tags": pa.array([["a\x00b", None], None, ["c\x00"]]).slice(1),
                  "raw": ['{"x":"\\u0000"}', "ok"],
                  "s": pa.array(["x\x00", "y\x00", None]).slice(1)})
    assert sanitize_text(t).to_pylist() == [
        {"tags": None, "raw": '{"x":"\\ufffd"}', "s": "y\ufffd"},
        {"tags": ["c\ufffd"], "raw": "ok", "s": None}]
    clean = pa.table({"s": pa.array(["x\x00", "y"]).slice(1)})
    assert sanitize_text(clean) is clean  # nothing to replace: not copied
