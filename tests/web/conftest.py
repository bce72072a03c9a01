"""Fixtures of the HTML page tests (shared with the API tests through tests.webapp)."""

from tests.webapp import app, client, store, store_client

__all__ = ["app", "client", "store", "store_client"]
