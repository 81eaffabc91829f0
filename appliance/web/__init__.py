"""The appliance's web pages and HTTP APIs: a starlette app that net/http.py serves (docs/architecture.md)."""
