"""`appliance routes`: print the routing table (stanza kind, target, namespace) -> feature handler."""

from __future__ import annotations

import argparse

from appliance import app
from appliance.commands import load_config


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("routes", parents=[parent], help="print the stanza routing table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    server = app.build_server(load_config(args), db=None)  # type: ignore[arg-type]  # routes need no storage
    rows = [("KIND", "TARGET", "NAMESPACE", "PRIO", "HANDLER")]
    rows += [(r.kind, r.target.value, r.namespace, str(r.priority), r.owner) for r in server.table.rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0
