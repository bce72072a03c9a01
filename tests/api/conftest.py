"""Fixtures of the JSON API tests (shared with the web tests through tests.webapp)."""

from tests.webapp import app, client, store, store_client

__all__ = ["app", "client", "store", "store_client"]
