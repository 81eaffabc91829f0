"""Accounts, rosters and archives for thousands of users, written straight into each server's storage
before it starts: `appliance user add` and `prosodyctl register` take a process (and a PBKDF2) per
account, far too slow for 10,000.

Both servers get SCRAM-SHA-1 keys for the same password with the same iteration count; the salt is
one per server, shared by all its accounts (a benchmark; never do that for real users).

- The appliance: its own store API in this process (`appliance.store`, one write transaction).
- Prosody (storage "internal"): one Lua file per account and per roster under
  data/<host>/accounts/ and data/<host>/roster/, in the format of util/datamanager.lua (paths with
  every non-alphanumeric byte as %xx) and mod_auth_internal_hashed.lua (hex keys, salt as given).
- Prosody (storage "sql", SQLite): rows in mod_storage_sql's table, as prosody-migrator writes them.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from pathlib import Path

from benchlib.servers import DOMAIN, lua
from benchlib.xmpp import salted_password

PROSODY_SALT = "bench-salt-5f0e1d2c"


# ---- the appliance ---------------------------------------------------------------------------------

def _appliance_db(data_dir: Path):  # -> appliance.store.db.Database
    from appliance.config import Config
    from appliance.store.db import Database
    return Database.open(Config(data_dir=data_dir).database_path)


def appliance_accounts(data_dir: Path, names: list[str], password: str, iterations: int,
                       rosters: dict[str, list[str]]) -> None:
    """Accounts (SCRAM-SHA-1 and -256 keys, one derivation for all) and rosters (every item
    subscription "both"), in one transaction."""
    from appliance.store import roster, users
    credentials = users.make_credentials(password, iterations)

    def fill(conn) -> None:
        for name in names:
            users.insert_user(conn, name, credentials)
        for owner, contacts in rosters.items():
            for contact in contacts:
                roster.set_item(conn, owner, roster.RosterItem(contact, subscription="both"))

    db = _appliance_db(data_dir)
    try:
        db.write_sync(fill)
    finally:
        db.close()


def appliance_archive(data_dir: Path, owners: list[str], rows: int, spacing: float = 20.0) -> None:
    """`rows` archived chat messages, round-robin over `owners` (each talking with the next one, in
    and out), one every `spacing` seconds up to now (within the default retention of a year for a
    million rows), written with one bulk INSERT into the table of appliance/store/schema.py."""
    now_us = int(time.time() * 1_000_000)
    step = int(spacing * 1_000_000)

    def row(i: int) -> tuple:
        owner, other = owners[i % len(owners)], owners[(i + 1) % len(owners)]
        outgoing = i % 2
        sender, recipient = (owner, other) if outgoing else (other, owner)
        stanza = (f'<message xmlns="jabber:client" to="{recipient}@{DOMAIN}" type="chat" id="pre{i}" '
                  f'from="{sender}@{DOMAIN}/bench"><body>preloaded message {i}: are you still on board?'
                  "</body></message>").encode()
        return (now_us - (rows - i) * step, owner, f"pre{i:09d}", f"{other}@{DOMAIN}", "", outgoing, stanza)

    def fill(conn) -> None:
        conn.executemany("INSERT INTO archive (seq, username, id, with_jid, with_resource, outgoing, stanza)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", (row(i) for i in range(rows)))

    db = _appliance_db(data_dir)
    try:
        db.write_sync(fill)
    finally:
        db.close()


def appliance_archive_rows(data_dir: Path) -> int:
    db = _appliance_db(data_dir)
    try:
        return db.read(lambda conn: conn.execute("SELECT count(*) FROM archive").fetchone()[0])
    finally:
        db.close()


# ---- Prosody -----------------------------------------------------------------------------------------

def prosody_path_part(text: str) -> str:
    """util/datamanager.lua's encode(): every byte but ASCII letters and digits as %xx."""
    return "".join(c if c.isascii() and c.isalnum() else "".join(f"%{b:02x}" for b in c.encode()) for c in text)


def _prosody_account(password: str, iterations: int) -> dict[str, str | int]:
    """mod_auth_internal_hashed's fields: SCRAM-SHA-1 keys in lowercase hex, the salt as given."""
    salted = salted_password("sha1", password, PROSODY_SALT.encode(), iterations)
    client_key = hmac.new(salted, b"Client Key", "sha1").digest()
    return {
        "iteration_count": iterations,
        "salt": PROSODY_SALT,
        "stored_key": hashlib.sha1(client_key).hexdigest(),
        "server_key": hmac.new(salted, b"Server Key", "sha1").hexdigest(),
    }


def prosody_accounts(data_dir: Path, names: list[str], password: str, iterations: int,
                     rosters: dict[str, list[str]]) -> None:
    """The files mod_auth_internal_hashed and the roster manager read with storage "internal"."""
    account = lua(_prosody_account(password, iterations))
    host = data_dir / prosody_path_part(DOMAIN)
    (host / "accounts").mkdir(parents=True, exist_ok=True)
    (host / "roster").mkdir(parents=True, exist_ok=True)
    for name in names:
        (host / "accounts" / f"{prosody_path_part(name)}.dat").write_text(f"return {account};\n")
    for owner, contacts in rosters.items():
        items = "".join(f'\t[{lua(contact)}] = {{ ["subscription"] = "both"; ["groups"] = {{ }} }};\n'
                        for contact in contacts)
        (host / "roster" / f"{prosody_path_part(owner)}.dat").write_text(
            f'return {{\n\t[false] = {{ ["version"] = 1; ["pending"] = {{ }} }};\n{items}}};\n')


PROSODY_SQL_DATABASE = "prosody.sqlite"   # relative to Prosody's data_path


def prosody_sql_accounts(data_dir: Path, names: list[str], password: str, iterations: int,
                         rosters: dict[str, list[str]]) -> None:
    """The same in mod_storage_sql's SQLite table "prosody" (host, user, store, key, type, value),
    as prosody-migrator writes it: one row per account field; per roster item a JSON value, and
    the roster's metadata (Lua key `false`) in the row with key "" as util.json encodes it."""
    account = _prosody_account(password, iterations)
    rows: list[tuple[str, str, str, str, str, str]] = []
    for name in names:
        rows += [(DOMAIN, name, "accounts", k, "number" if isinstance(v, int) else "string", str(v))
                 for k, v in account.items()]
    for owner, contacts in rosters.items():
        rows.append((DOMAIN, owner, "roster", "", "json", '{"__hash":[false,{"version":1,"pending":{}}]}'))
        rows += [(DOMAIN, owner, "roster", contact, "json", '{"groups":{},"subscription":"both"}')
                 for contact in contacts]
    data_dir.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(data_dir / PROSODY_SQL_DATABASE) as conn:
        # mod_storage_sql.lua's create_table() for this table; it adds its archive table itself
        conn.execute('CREATE TABLE IF NOT EXISTS "prosody" ("host" TEXT NOT NULL, "user" TEXT NOT NULL, '
                     '"store" TEXT NOT NULL, "key" TEXT NOT NULL, "type" TEXT NOT NULL, "value" MEDIUMTEXT NOT NULL)')
        conn.execute('CREATE INDEX IF NOT EXISTS "prosody_index" ON "prosody" ("host", "user", "store", "key")')
        conn.executemany('INSERT INTO "prosody" VALUES (?, ?, ?, ?, ?, ?)', rows)
    conn.close()
