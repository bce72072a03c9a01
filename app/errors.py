"""The one error tree of gpuplan; HTTP status codes are attached here and used only at the edges.

    GpuplanError
    ├── InputError                      bad user input (400 / 422)
    │   ├── PlanError                   a training plan that cannot be built
    │   │   └── StackRefusal            the real stack refuses one plan setting (answered adjusted unless strict)
    │   ├── ModelIdError                a model name that is not a valid Hub id or path
    │   ├── MalformedBody               a request body that is not (UTF-8) JSON (400)
    │   ├── UntrustedHost               a Host header not in GPUPLAN_TRUSTED_HOSTS (400)
    │   ├── RecipeError                 an imported training config: unknown format, conflict, bad plan (422)
    │   └── MissingExtra                an optional extra the command needs is not installed (422; exit 2)
    ├── ConfigError                     a config.json that cannot become an inventory (422)
    │   ├── MalformedConfig             not JSON, not an object, too large, missing fields
    │   ├── UnsupportedArchitecture     model_type transformers cannot build
    │   └── RemoteCodeRefused           needs trust_remote_code and its family is unknown
    ├── HubError                        the Hugging Face Hub did not give us the config
    │   ├── ModelNotFound               404 (404)
    │   ├── GatedModel                  401/403, no or rejected token (403)
    │   ├── HubUnavailable              429/5xx after retries, timeouts, refused redirects (503)
    │   └── OfflineMiss                 HF_HUB_OFFLINE=1 and the id is not cached (404)
    ├── CalibrationError                a calibration run could not be carried out (500 at the CLI only)
    ├── Unavailable                     the request could not be answered in time (503 / 504)
    │   ├── Overloaded                  every inventory build slot is busy and the queue is full (503)
    │   ├── DeadlineExceeded            the per-request deadline passed; names what it was waiting for (504)
    │   └── PdfUnavailable              PDF export without WeasyPrint or its system libraries (501)
    ├── StoreError                      the measurement store failed (503)
    │   └── StoreNotConfigured          the service runs without a store (503)
    └── AuthError                       missing bearer token (401)
        └── UploadForbidden             wrong token, or uploads disabled (403)

Every error carries a short `title` and a `detail` sentence that tells the user what to fix.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GpuplanError(Exception):
    """Base of every error gpuplan raises on purpose."""

    title: ClassVar[str] = "gpuplan error"
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "error"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []

    def __str__(self) -> str:
        return self.detail


class InputError(GpuplanError):
    title = "Invalid input"
    status = 422
    slug = "invalid-input"


class PlanError(InputError):
    title = "Invalid training plan"
    slug = "invalid-plan"


class StackRefusal(PlanError):
    """The real stack (e.g. PEFT) refuses one plan setting; `accepted` is the nearest value it takes."""

    title = "Plan refused by the training stack"
    slug = "stack-refused-plan"

    def __init__(self, detail: str, *, field: str | None = None, accepted: object = None) -> None:
        super().__init__(detail, errors=[{"field": field, "message": detail}] if field else None)
        self.field = field or "plan"
        self.accepted = accepted


class ModelIdError(InputError):
    title = "Invalid model id"
    status = 400
    slug = "invalid-model-id"


class MalformedBody(InputError):
    title = "Malformed request body"
    status = 400
    slug = "invalid-json"


class UntrustedHost(InputError):
    title = "Untrusted host"
    status = 400
    slug = "untrusted-host"


class RecipeError(InputError):
    title = "Unusable training config"
    slug = "invalid-recipe"


class MissingExtra(InputError):
    """An optional extra (a pyproject extra such as `deepspeed`) that the command needs is not installed."""

    title = "Missing optional dependency"
    slug = "missing-extra"


class ConfigError(GpuplanError):
    title = "Unusable model config"
    status = 422
    slug = "config-error"


class MalformedConfig(ConfigError):
    title = "config.json is malformed"
    slug = "malformed-config"


class UnsupportedArchitecture(ConfigError):
    title = "Unsupported architecture"
    slug = "unsupported-architecture"


class RemoteCodeRefused(ConfigError):
    title = "Remote code refused"
    slug = "remote-code-refused"


class HubError(GpuplanError):
    title = "Hugging Face Hub error"
    status = 502
    slug = "hub-error"


class ModelNotFound(HubError):
    title = "Model not found"
    status = 404
    slug = "model-not-found"


class GatedModel(HubError):
    title = "Gated model"
    status = 403
    slug = "gated-model"


class HubUnavailable(HubError):
    title = "Hub unavailable"
    status = 503
    slug = "hub-unavailable"


class OfflineMiss(HubError):
    title = "Not available offline"
    status = 404
    slug = "offline-miss"


class CalibrationError(GpuplanError):
    title = "Calibration failed"
    status = 500
    slug = "calibration-failed"


class Unavailable(GpuplanError):
    title = "Service unavailable"
    status = 503
    slug = "unavailable"


class Overloaded(Unavailable):
    title = "Overloaded"
    slug = "overloaded"


class DeadlineExceeded(Unavailable):
    title = "Deadline exceeded"
    status = 504
    slug = "deadline-exceeded"


class PdfUnavailable(Unavailable):
    """This server cannot render PDFs: WeasyPrint or its system libraries (Pango) are missing."""

    title = "PDF export unavailable"
    status = 501
    slug = "pdf-unavailable"


class StoreError(GpuplanError):
    title = "Store unavailable"
    status = 503
    slug = "store-unavailable"


class AuthError(GpuplanError):
    title = "Unauthorized"
    status = 401
    slug = "unauthorized"


class StoreNotConfigured(StoreError):
    title = "Store not configured"
    slug = "store-not-configured"


class UploadForbidden(AuthError):
    title = "Forbidden"
    status = 403
    slug = "forbidden"
