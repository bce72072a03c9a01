"""Settings from GPUPLAN_* environment variables (and the Hub's own HF_* variables), read only on demand."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
