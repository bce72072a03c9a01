"""Settings from GPUPLAN_* environment variables (and the Hub's own HF_* variables), read only on demand."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.units import MIB


class Settings(BaseSettings):
    """Every setting of gpuplan; the README's configuration table lists them all."""

    model_config = SettingsConfigDict(env_prefix="GPUPLAN_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(Path("data"), description="Folder for the SQLite store and the inventory cache.")
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("GPUPLAN_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL of the measurement store (e.g. postgresql+psycopg://...); default SQLite in data_dir.",
    )
    headroom: float = Field(
        0.10, ge=0, lt=1, description="Fraction of a GPU's usable memory kept free when judging a fit."
    )
    safe_answer: bool = Field(
        False,
        description="Judge every fit on the upper end of the estimate's uncertainty band (from comparable measured "
        "runs) instead of the estimate; `safe=true|false` on /plan and /api/v1/estimate, or `--safe`, overrides it.",
    )
    stack4_python: Path = Field(
        Path(".venv-tf4/bin/python"),
        description="Python of the transformers-4 virtualenv (`bash calibration/stack-transformers-4.sh` makes it), "
        "where `gpuplan calibrate --stack transformers-4` runs its points.",
    )
    hf_endpoint: str = Field(
        "https://huggingface.co",
        validation_alias=AliasChoices("HF_ENDPOINT", "GPUPLAN_HF_ENDPOINT"),
        description="Hugging Face Hub endpoint (HF_ENDPOINT).",
    )
    hf_token: str | None = Field(
        None,
        validation_alias=AliasChoices("HF_TOKEN", "GPUPLAN_HF_TOKEN"),
        description="Token for gated and private repos (HF_TOKEN).",
        repr=False,
    )
    hf_home: Path = Field(
        Path.home() / ".cache" / "huggingface",
        validation_alias=AliasChoices("HF_HOME", "GPUPLAN_HF_HOME"),
        description="Hub cache root (HF_HOME); configs are cached under hub/gpuplan-configs.",
    )
    hf_hub_offline: bool = Field(
        False,
        validation_alias=AliasChoices("HF_HUB_OFFLINE", "GPUPLAN_HF_HUB_OFFLINE"),
        description="HF_HUB_OFFLINE=1: answer from the cache and the catalog only.",
    )
    hub_timeout: float = Field(10.0, gt=0, le=120, description="Connect/read timeout for Hub requests, in seconds.")
    hub_retries: int = Field(
        3, ge=0, le=10, description="Retries on Hub 429/5xx/timeouts, with backoff honouring Retry-After."
    )
    hub_max_config_bytes: int = Field(
        2 * MIB, ge=1024, description="Largest config.json accepted from the Hub, in bytes."
    )
    request_deadline: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Seconds one web request may take in all (Hub fetches and their retries, inventory builds); "
        "past it the answer is 504 naming what it was waiting for.",
    )
    inventory_workers: int = Field(
        2, ge=1, le=64, description="Inventory builds (Hub configs) run at once, each in its own child process."
    )
    inventory_queue: int = Field(
        8, ge=0, le=1024, description="Inventory builds that may wait for a free worker; beyond them, 503."
    )
    inventory_build_timeout: float = Field(
        60.0, gt=0, le=3600, description="Seconds one inventory build may take before its process is killed."
    )
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description="Host header values the web service answers (comma-separated; `*.example.com` "
        "wildcards; `*` for any); other hosts get 400.",
    )
    public_url: str | None = Field(
        None,
        description="Public base URL (e.g. https://gpuplan.example.com) for the embed snippet; pages otherwise "
        "use relative URLs only.",
    )
    upload_token: str | None = Field(
        None,
        description="Bearer token required by POST /api/v1/calibrations; uploads are refused when unset.",
        repr=False,
    )
    max_body_bytes: int = Field(MIB, ge=1024, description="Largest HTTP request body accepted, in bytes.")
    prices_file: Path | None = Field(
        None,
        description="JSON price table (your own, e.g. negotiated, $/GPU-hour) laid over the bundled one; "
        "default prices.json in data_dir when it exists.",
    )

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip() for host in value.split(",") if host.strip()]
        return value

    @field_validator("trusted_hosts")
    @classmethod
    def _host_patterns(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if "*" in host[1:] or (host.startswith("*") and host != "*" and not host.startswith("*.")):
                raise ValueError(f"{host!r}: a wildcard is `*` alone or a leading `*.` (e.g. *.example.com)")
        return hosts

    @property
    def inventory_cache_dir(self) -> Path:
        return self.data_dir / "inventory"

    @property
    def prices_path(self) -> Path | None:
        """The price file in use: prices_file, else data_dir/prices.json when it exists, else none."""
        if self.prices_file is not None:
            return self.prices_file
        default = self.data_dir / "prices.json"
        return default if default.is_file() else None

    @property
    def sqlite_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gpuplan.sqlite3').as_posix()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
