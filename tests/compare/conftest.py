"""Fixtures of the comparison tests (the app and clients of tests.webapp)."""

from tests.webapp import app, client, store, store_client

__all__ = ["app", "client", "store", "store_client"]
