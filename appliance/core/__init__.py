"""The router, the routing table and the session table. No sockets, no storage calls of its own."""
