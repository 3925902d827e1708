"""Automation definition files and the automations' numbers."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.push.automations import load_automations, register_automations
from analytics_pipeline.push.contract import push_automations


def test_json_and_yaml_definitions_and_what_is_reported(tmp_path):
    (tmp_path / "welcome.json").write_text(json.dumps(
        {"id": "welcome", "name": "Welcome series", "trigger": "signup", "delay_hours": 1}))
    (tmp_path / "winback.yaml").write_text("id: winback\nname: Win back\nsteps: [a, b]\n")
    (tmp_path / "numeric.yml").write_text("id: 42\nname: Numbered\n")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "nameless.yaml").write_text("id: nameless\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "again.json").write_text(json.dumps({"id": "welcome", "name": "Dup"}))
    (tmp_path / "notes.txt").write_text("ignored: not a definition file")
    got = load_automations(tmp_path)
    assert sorted(got.by_id) == ["42", "welcome", "winback"]
    assert got.by_id["winback"].definition["steps"] == ["a", "b"]
    # again.json sorts before welcome.json: the first file wins, the other is reported
    assert (got.by_id["welcome"].name, got.by_id["welcome"].source_file) == ("Dup",
                                                                              "again.json")
    problems = "\n".join(got.problems)
    for name in ("broken.json", "nameless.yaml", "list.yaml", "welcome.json"):
        assert name in problems
    assert "notes.txt" not in problems


def test_missing_directory_is_a_problem_not_an_error(tmp_path):
    got = load_automations(tmp_path / "nowhere")
    assert got.by_id == {} and "not a directory" in got.problems[0]
    assert load_automations("").problems == []


@pytest.fixture
def engine(tmp_path):
    e = wh.make_engine(f"sqlite:///{tmp_path / 'wh.db'}")
    wh.ensure_schema(e)
    yield e
    e.dispose()


def test_numbers_never_change_and_definitions_follow_the_files(engine, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"id": "welcome", "name": "Welcome"}))
    first = register_automations(engine, ["seen-only", "welcome"], load_automations(tmp_path))
    nums = dict(zip(first["automation_id"].to_pylist(), first["automation_num"].to_pylist(),
                    strict=True))
    assert first["name"].to_pylist() == [None, "Welcome"]
    (tmp_path / "a.json").write_text(json.dumps({"id": "welcome", "name": "Welcome v2"}))
    (tmp_path / "b.json").write_text(json.dumps({"id": "seen-only", "name": "Now defined"}))
    again = register_automations(engine, ["welcome", "new"], load_automations(tmp_path))
    got = dict(zip(again["automation_id"].to_pylist(), again["automation_num"].to_pylist(),
                   strict=True))
    assert {k: got[k] for k in nums} == nums and got["new"] not in nums.values()
    assert dict(zip(again["automation_id"].to_pylist(), again["name"].to_pylist(),
                    strict=True)) == {"new": None, "seen-only": "Now defined",
                                      "welcome": "Welcome v2"}
    # a push-only registration keeps the stored definition
    register_automations(engine, ["welcome"], load_automations(None))
    with engine.connect() as c:
        name = c.execute(sa.select(push_automations.c.name).where(
            push_automations.c.automation_id == "welcome")).scalar_one()
    assert name == "Welcome v2"
