"""SQLite storage: plain synchronous query functions `f(conn, ...)` and one serialised writer.

`db.Database` owns the connections and the transactions; `schema` migrates by `PRAGMA user_version`;
`users`, `roster` and `offline` hold the queries. Nothing outside this package writes SQL.
"""
