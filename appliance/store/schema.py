"""Schema migrations: an ordered list of SQL scripts, applied by `PRAGMA user_version`.

Migration N (1-based) brings the database from user_version N-1 to N. Never edit a released
migration; append a new one. All pending migrations run in one IMMEDIATE transaction, so a server
and a CLI opening the same fresh file at once cannot both apply them.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: accounts, SCRAM keys, roster, pending inbound subscriptions, offline messages.
    """
    CREATE TABLE users (
        username        TEXT PRIMARY KEY,           -- normalised localpart
        created         INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
        roster_version  INTEGER NOT NULL DEFAULT 0  -- RFC 6121 §2.6, bumped on every roster change
    );

    -- Only salted SCRAM keys, never the password (RFC 5802 §5).
    CREATE TABLE scram_credentials (
        username    TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        mechanism   TEXT NOT NULL,                  -- 'SCRAM-SHA-1', 'SCRAM-SHA-256'
        salt        BLOB NOT NULL,
        stored_key  BLOB NOT NULL,
        server_key  BLOB NOT NULL,
        iterations  INTEGER NOT NULL,
        PRIMARY KEY (username, mechanism)
    ) WITHOUT ROWID;

    CREATE TABLE roster_items (
        username      TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        contact       TEXT NOT NULL,                -- bare JID
        name          TEXT,
        subscription  TEXT NOT NULL DEFAULT 'none'
                      CHECK (subscription IN ('none', 'to', 'from', 'both')),
        ask           INTEGER NOT NULL DEFAULT 0,   -- outbound subscribe pending
        approved      INTEGER NOT NULL DEFAULT 0,   -- inbound subscription pre-approved
        groups        TEXT NOT NULL DEFAULT '[]',   -- JSON array; always read with the item
        PRIMARY KEY (username, contact)
    ) WITHOUT ROWID;

    -- Inbound subscribe stanzas awaiting the user's answer (RFC 6121 §3.1.3), one per contact.
    CREATE TABLE roster_pending_in (
        username  TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        contact   TEXT NOT NULL,
        stanza    BLOB NOT NULL,
        PRIMARY KEY (username, contact)
    );

    -- AUTOINCREMENT so an id is never reused once delivered and deleted (clients may remember ids).
    CREATE TABLE offline_messages (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        username  TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        stamp     REAL NOT NULL,                    -- unix time received, for XEP-0203 <delay/>
        stanza    BLOB NOT NULL
    );
    CREATE INDEX offline_messages_by_user ON offline_messages(username, id);
    """,
    # 2: XEP-0191 blocking (features/blocking.py).
    """
    -- One row per blocked JID: bare, full or a domain, normalised (RFC 7622) by the feature.
    CREATE TABLE blocklist (
        username  TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        jid       TEXT NOT NULL,
        PRIMARY KEY (username, jid)
    ) WITHOUT ROWID;
    """,
    # 3: XEP-0313 message archive and XEP-0441 preferences (features/mam.py, store/archive.py).
    """
    -- seq: microseconds since the epoch when archived, strictly increasing (store/archive.py), so
    -- the archive's order, time filters and retention are ranges of one key. id: the opaque
    -- XEP-0359 stanza-id / MAM UID clients see; never reused (random, unique per archive).
    CREATE TABLE archive (
        seq            INTEGER PRIMARY KEY,
        username       TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        id             TEXT NOT NULL,
        with_jid       TEXT NOT NULL,               -- the other party, bare
        with_resource  TEXT NOT NULL DEFAULT '',    -- and its resource, for a full-JID 'with'
        outgoing       INTEGER NOT NULL,            -- 1: the user sent it
        stanza         BLOB NOT NULL
    );
    CREATE UNIQUE INDEX archive_by_id ON archive(username, id);
    CREATE INDEX archive_by_user ON archive(username, seq);
    CREATE INDEX archive_by_with ON archive(username, with_jid, seq);

    CREATE TABLE archive_prefs (
        username  TEXT PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
        mode      TEXT NOT NULL CHECK (mode IN ('always', 'never', 'roster')),
        always    TEXT NOT NULL DEFAULT '[]',      -- JSON arrays of JIDs (bare or full)
        never     TEXT NOT NULL DEFAULT '[]'
    );
    """,
    # 4: XEP-0198 delivery tracking (features/offline.py, net/c2s.py). Reserved while it is written.
    """
    SELECT 1;
    """,
    # 5: invites (appliance/pairing/invites.py, store/invites.py) and administrators made by them.
    """
    CREATE TABLE invites (
        token     TEXT PRIMARY KEY,                 -- the secret in the URI (24 URL-safe characters)
        kind      TEXT NOT NULL CHECK (kind IN ('account', 'contact')),
        inviter   TEXT REFERENCES users(username) ON DELETE CASCADE,  -- NULL: made by an admin
        username  TEXT,                             -- preset localpart of the account it creates
        max_uses  INTEGER NOT NULL DEFAULT 1,       -- 0: unlimited until it expires
        uses      INTEGER NOT NULL DEFAULT 0,
        created   REAL NOT NULL,                    -- unix time
        expires   REAL,                             -- unix time; NULL: never
        revoked   INTEGER NOT NULL DEFAULT 0,
        admin     INTEGER NOT NULL DEFAULT 0        -- the account it creates is an administrator
    );
    CREATE INDEX invites_by_inviter ON invites(inviter);

    -- Administrators besides those named in the configuration (`admins`): the first account, made
    -- from the invite `serve` prints on first start, and those invited as administrators.
    ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: notifications and their deliveries, groups, API keys, XEP-0357 push registrations.
    """
    -- A notification pushed through the API, the admin page or `appliance notify`. Its recipients
    -- are fixed when it is created (a group's members then, everyone then, who was online then).
    CREATE TABLE notifications (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: API clients keep ids
        created   REAL NOT NULL,                      -- unix time
        expires   REAL,                               -- unix time; NULL: never
        title     TEXT NOT NULL,
        body      TEXT NOT NULL DEFAULT '',
        link      TEXT,                               -- XEP-0066 out-of-band URL
        priority  TEXT NOT NULL DEFAULT 'normal'
                  CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
        audience  TEXT NOT NULL,                      -- JSON: what was asked for, for the record
        sender    TEXT NOT NULL DEFAULT ''            -- API key name, admin JID or 'cli'
    );

    -- One row per recipient; delivered is set when the client acknowledged the stanza (XEP-0198),
    -- or when it was written to a client without stream management.
    CREATE TABLE notification_deliveries (
        notification_id  INTEGER NOT NULL REFERENCES notifications(id) ON DELETE CASCADE,
        username         TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        delivered        REAL,                        -- unix time; NULL: pending
        PRIMARY KEY (notification_id, username)
    ) WITHOUT ROWID;
    CREATE INDEX notification_deliveries_pending ON notification_deliveries(username, notification_id)
        WHERE delivered IS NULL;

    -- Named sets of users, for notifications (and later group chat invites).
    CREATE TABLE user_groups (
        name      TEXT PRIMARY KEY,
        created   REAL NOT NULL
    );
    CREATE TABLE user_group_members (
        group_name  TEXT NOT NULL REFERENCES user_groups(name) ON DELETE CASCADE,
        username    TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        PRIMARY KEY (group_name, username)
    ) WITHOUT ROWID;
    CREATE INDEX user_group_members_by_user ON user_group_members(username);

    -- Bearer keys of the notification API. The secret is shown once, at creation; only its
    -- SHA-256 is kept (a key is 32 random bytes: no slow hash needed against guessing).
    CREATE TABLE api_keys (
        name         TEXT PRIMARY KEY,
        secret_hash  BLOB NOT NULL UNIQUE,
        created      REAL NOT NULL,
        last_used    REAL,
        revoked      INTEGER NOT NULL DEFAULT 0
    );

    -- XEP-0357: where to send a push for a user's device (one row per app server and node).
    CREATE TABLE push_registrations (
        username      TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        service       TEXT NOT NULL,                  -- the app server's JID
        node          TEXT NOT NULL,
        options       TEXT NOT NULL DEFAULT '{}',     -- JSON of the publish-options form fields
        include_body  INTEGER NOT NULL DEFAULT 0,     -- the user allowed message bodies in pushes
        created       REAL NOT NULL,
        PRIMARY KEY (username, service, node)
    ) WITHOUT ROWID;

    -- A password-reset invite (admin page "reset by invite"): redeeming it sets a new password
    -- for the existing account its `username` names, instead of creating one.
    ALTER TABLE invites ADD COLUMN reset INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: XEP-0163 personal eventing: every account's PEP nodes and their items (features/pep.py).
    """
    CREATE TABLE pep_nodes (
        username       TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        node           TEXT NOT NULL,
        access_model   TEXT NOT NULL DEFAULT 'presence'
                       CHECK (access_model IN ('presence', 'open', 'whitelist')),
        persist_items  INTEGER NOT NULL DEFAULT 1,   -- 0: only the last item is kept
        max_items      INTEGER NOT NULL DEFAULT 1,   -- older items are dropped beyond this
        created        REAL NOT NULL,                -- unix time
        PRIMARY KEY (username, node)
    ) WITHOUT ROWID;

    -- seq orders a node's items (newest highest); a re-published id gets a new seq.
    CREATE TABLE pep_items (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        username  TEXT NOT NULL,
        node      TEXT NOT NULL,
        item_id   TEXT NOT NULL,
        stamp     REAL NOT NULL,                     -- unix time published
        payload   BLOB NOT NULL,                     -- the item's one child element, serialised
        FOREIGN KEY (username, node) REFERENCES pep_nodes(username, node) ON DELETE CASCADE
    );
    CREATE UNIQUE INDEX pep_items_by_id ON pep_items(username, node, item_id);
    CREATE INDEX pep_items_by_node ON pep_items(username, node, seq);
    """,
    # 8: archive ids are seq in hexadecimal (store/archive.py): only the random ids of older rows
    # need the unique index, which shrinks to them.
    """
    DROP INDEX archive_by_id;
    CREATE UNIQUE INDEX archive_by_id ON archive(username, id) WHERE length(id) = 16;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer appliance; running older code on it could corrupt it."""


def current_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, path: object = "database") -> int:
    """Bring the schema up to SCHEMA_VERSION; a no-op when it already is. Returns the version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = current_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{path} has schema version {version}, but this appliance knows only up to "
                f"{SCHEMA_VERSION}; run a newer appliance or restore a backup made by this one"
            )
        for script in MIGRATIONS[version:]:
            for statement in _statements(script):
                conn.execute(statement)
        # PRAGMA takes no parameters; SCHEMA_VERSION is our own int.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    """Split a script into statements; executescript() would COMMIT our transaction first."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        # complete_statement knows about semicolons inside strings and trigger bodies.
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                statements.append(pending)
            pending = ""
    if pending.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement in migration: {pending!r}")
    return statements
