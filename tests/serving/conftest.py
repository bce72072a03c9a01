"""Fixtures of the serving API and page tests (shared with the API tests through tests.webapp)."""

from tests.webapp import app, client

__all__ = ["app", "client"]
