"""On-disk cache of fetched configs under HF_HOME/hub/gpuplan-configs, one JSON file per (repo, revision)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_MAX_FILE_STEM = 200


def cache_root(hf_home: Path) -> Path:
    """Where the fetched configs live: HF_HOME/hub/gpuplan-configs (the Hub client writes there, readers look there)."""
    return hf_home / "hub" / "gpuplan-configs"


class CacheEntry(BaseModel):
    """What the cache keeps for one (repo, revision); `revision` is the asked revision or 'main'."""

    model_config = ConfigDict(frozen=True)

    format: int = CACHE_FORMAT
    repo_id: str
    revision: str
    sha: str | None
    config: dict[str, Any]
    safetensors_total: int | None = Field(None, ge=0)
    fetched_at: datetime


class ConfigCache:
    """Reads and atomically writes cache entries; creates nothing until the first write."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, repo_id: str, revision: str) -> Path:
        """A safe file path for a validated repo id and a revision (slashes in revisions are quoted)."""
        folder = "models--" + repo_id.replace("/", "--")
        stem = quote(revision, safe="")
        if len(stem) > _MAX_FILE_STEM or stem.startswith("."):
            stem = "sha256-" + hashlib.sha256(revision.encode()).hexdigest()
        return self.root / folder / f"{stem}.json"

    def entries(self, repo_id: str) -> list[CacheEntry]:
        """Every readable entry of one repo (any revision), newest file first; damaged files are skipped."""
        folder = self.path_for(repo_id, "main").parent
        try:
            paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            return []
        out = []
        for path in paths:
            try:
                entry = CacheEntry.model_validate_json(path.read_bytes())
            except (OSError, ValidationError):
                continue
            if entry.format == CACHE_FORMAT and entry.repo_id == repo_id:
                out.append(entry)
        return out

    def get(self, repo_id: str, revision: str) -> CacheEntry | None:
        """The cached entry, or None when absent or unreadable (a damaged file counts as a miss)."""
        path = self.path_for(repo_id, revision)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read cached config %s: %s", path, exc)
            return None
        try:
            entry = CacheEntry.model_validate_json(raw)
        except ValidationError:
            logger.warning("ignoring damaged cached config %s", path)
            return None
        if entry.format != CACHE_FORMAT or entry.repo_id != repo_id or entry.revision != revision:
            return None
        return entry

    def put(self, entry: CacheEntry) -> Path:
        """Write an entry via a temporary file and os.replace, so readers see the old or the new file."""
        path = self.path_for(entry.repo_id, entry.revision)
        data = entry.model_dump_json(indent=1).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        return path
