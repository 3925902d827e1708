"""Automation definitions (one JSON or YAML file each in ``ANALYTICS_AUTOMATIONS_DIR``) and
the automations' numbers in the warehouse (``push_automations``).

A definition needs ``id`` and ``name``; whatever else the push system keeps is stored as
it is. A file that cannot be read, or lacks either key, is reported (never silently
skipped) and its automation stays labelled by id, as does an automation that pushes name
but no file defines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.push.contract import push_automations

SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class Automation:
    automation_id: str
    name: str
    definition: dict
    source_file: str


@dataclass
class AutomationDefinitions:
    by_id: dict[str, Automation] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # one line per file not used


def load_automations(directory: str | Path | None) -> AutomationDefinitions:
    """Every definition file of ``directory`` (not recursive), in name order. No directory
    configured: no definitions. A missing directory is a problem, not an error: pushes are
    still analysed, labelled by id."""
    out = AutomationDefinitions()
    if not directory:
        return out
    root = Path(directory)
    if not root.is_dir():
        out.problems.append(f"{root}: not a directory (ANALYTICS_AUTOMATIONS_DIR)")
        return out
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES):
        try:
            text = path.read_text(encoding="utf-8")
            doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
            out.problems.append(f"{path.name}: unreadable ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})")
            continue
        if not isinstance(doc, dict):
            out.problems.append(f"{path.name}: not a mapping")
            continue
        aid, name = doc.get("id"), doc.get("name")
        if isinstance(aid, int) and not isinstance(aid, bool):
            aid = str(aid)
        if not isinstance(aid, str) or not aid.strip() or "\x00" in aid:
            out.problems.append(f"{path.name}: no usable 'id'")
            continue
        if not isinstance(name, str) or not name.strip():
            out.problems.append(f"{path.name}: automation {aid!r} has no 'name'")
            continue
        if aid in out.by_id:
            out.problems.append(f"{path.name}: automation {aid!r} is also defined in "
                                f"{out.by_id[aid].source_file}; the first file is used")
            continue
        out.by_id[aid] = Automation(aid, name.strip(), doc, path.name)
    return out


def register_automations(engine: Engine, ids: Iterable[str],
                         definitions: AutomationDefinitions) -> pa.Table:
    """Number every automation of ``ids`` and of ``definitions`` (numbers never change once
    given) and store the definitions as read now; returns (automation_id, automation_num,
    name) of those automations, name null where no file defines it."""
    wanted = sorted(set(ids) | set(definitions.by_id))
    if not wanted:
        return pa.table({"automation_id": pa.array([], pa.string()),
                         "automation_num": pa.array([], pa.int64()),
                         "name": pa.array([], pa.string())})
    now = wh.utc_now_naive()
    rows = []
    for aid in wanted:
        a = definitions.by_id.get(aid)
        rows.append({"automation_id": aid, "name": a.name if a else None,
                     "definition": json.dumps(a.definition, sort_keys=True, default=str)
                     if a else None, "source_file": a.source_file if a else None,
                     "updated_at": now})
    t = push_automations.c
    with engine.begin() as conn:
        stmt = wh.upsert_insert(conn, push_automations)
        defined = [r for r in rows if r["name"] is not None]
        if defined:  # a definition read now replaces the stored one
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["automation_id"],
                set_={c: stmt.excluded[c] for c in ("name", "definition", "source_file",
                                                    "updated_at")}), defined)
        undefined = [r for r in rows if r["name"] is None]
        if undefined:  # seen in pushes only: keep whatever definition is stored
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["automation_id"]),
                         undefined)
        got = {}
        for lo in range(0, len(wanted), wh.ID_CHUNK):
            chunk = wanted[lo:lo + wh.ID_CHUNK]
            for r in conn.execute(sa.select(t.automation_id, t.automation_num, t.name)
                                  .where(t.automation_id.in_(chunk))):
                got[r[0]] = (int(r[1]), r[2])
    return pa.table({"automation_id": pa.array(wanted, pa.string()),
                     "automation_num": pa.array([got[a][0] for a in wanted], pa.int64()),
                     "name": pa.array([got[a][1] for a in wanted], pa.string())})
