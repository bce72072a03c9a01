"""HTTP pieces the JSON API and the HTML pages share: dependencies, problem+json, metrics, body limits."""

from __future__ import annotations

# where the JSON API is mounted; the HTML pages link to it
API_PREFIX = "/api/v1"
