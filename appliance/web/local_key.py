"""The API key for `appliance notify` on this machine: DATA_DIR/local-api.key.

`serve` makes a new key named `local-cli` at every start (the previous one stops working) and
writes it to a file only the appliance's own user can read, so whoever can run the appliance's
commands as that user can notify without managing keys, and nobody else can.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from appliance.store import api_keys
from appliance.store.db import Database

LOCAL_KEY_FILE = "local-api.key"
LOCAL_KEY_NAME = "local-cli"


def local_key_path(data_dir: Path) -> Path:
    return data_dir / LOCAL_KEY_FILE


def write_local_key(db: Database, data_dir: Path) -> None:
    secret = api_keys.new_secret()
    db.write_sync(api_keys.replace_key, LOCAL_KEY_NAME, secret, time.time())
    path = local_key_path(data_dir)
    path.unlink(missing_ok=True)  # O_EXCL below: never write the secret into a file someone else made
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(secret + "\n")
