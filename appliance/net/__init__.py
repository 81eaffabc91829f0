"""Trio shells: the only code that awaits sockets."""
