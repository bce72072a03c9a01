"""Model references `org/name[@revision]`, validated like the Hub validates them, before any request."""

from __future__ import annotations

import re
from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from app.errors import ModelIdError

MAX_PART_CHARS = 96  # the Hub's limit on a repo name (huggingface_hub's REPO_ID_REGEX); applied to the org too
MAX_REPO_ID_CHARS = 2 * MAX_PART_CHARS + 1
MAX_REVISION_CHARS = 200

_PART = re.compile(r"[A-Za-z0-9._-]+")
_REVISION = re.compile(r"[A-Za-z0-9._/-]+")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_EXAMPLE = "a valid id looks like 'org/name' or 'org/name@revision', e.g. 'Qwen/Qwen2.5-7B@main'"


class HubRef(BaseModel):
    """A validated Hub model repository and the revision asked for (None: the default branch)."""

    model_config = ConfigDict(frozen=True)

    repo_id: str
    revision: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> Self:
        """Built directly (not through parse_model_ref), a HubRef obeys the same rules."""
        _check_ref(str(self), self.repo_id, self.revision)
        return self

    @property
    def revision_or_main(self) -> str:
        return self.revision or "main"

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def _refuse(text: str, problem: str) -> ModelIdError:
    return ModelIdError(f"{text!r} is not a Hub model id: {problem}; {_EXAMPLE}")


def _check_part(text: str, label: str, part: str) -> None:
    if not part:
        raise _refuse(text, f"the {label} is empty")
    if len(part) > MAX_PART_CHARS:
        raise _refuse(text, f"the {label} is longer than {MAX_PART_CHARS} characters")
    if not _PART.fullmatch(part):
        raise _refuse(text, f"the {label} {part!r} may use only letters, digits, '.', '_' and '-'")
    if part[0] in ".-" or part[-1] in ".-":
        raise _refuse(text, f"the {label} {part!r} may not start or end with '.' or '-'")
    if "--" in part or ".." in part:
        raise _refuse(text, f"the {label} {part!r} may not contain '--' or '..'")


def _check_revision(text: str, revision: str) -> None:
    if not revision:
        raise _refuse(text, "the revision after '@' is empty")
    if len(revision) > MAX_REVISION_CHARS:
        raise _refuse(text, f"the revision is longer than {MAX_REVISION_CHARS} characters")
    if not _REVISION.fullmatch(revision):
        raise _refuse(text, f"the revision {revision!r} may use only letters, digits, '.', '_', '-' and '/'")
    if ".." in revision or revision.startswith("/") or revision.endswith("/") or "//" in revision:
        raise _refuse(text, f"the revision {revision!r} may not contain '..' or '//' nor start or end with '/'")


def parse_model_ref(text: str) -> HubRef:
    """Parse `org/name` or `org/name@revision`; raise ModelIdError saying what is wrong otherwise."""
    if not text:
        raise _refuse(text, "it is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise _refuse(text, "it contains whitespace or control characters")
    if "\\" in text:
        raise _refuse(text, "it contains a backslash")
    if "://" in text or _SCHEME.match(text):
        raise _refuse(text, "URLs and schemes are not accepted, give the repository id only")
    if ".." in text:
        raise _refuse(text, "it contains '..'")
    repo_id, at, revision = text.partition("@")
    if at and "@" in revision:
        raise _refuse(text, "it contains more than one '@'")
    _check_ref(text, repo_id, revision if at else None)
    return HubRef(repo_id=repo_id, revision=revision if at else None)


def _check_ref(text: str, repo_id: str, revision: str | None) -> None:
    if len(repo_id) > MAX_REPO_ID_CHARS:
        raise _refuse(text, f"the repository id is longer than {MAX_REPO_ID_CHARS} characters")
    parts = repo_id.split("/")
    if len(parts) != 2:
        problem = "it has no organisation (use the full id)" if len(parts) == 1 else "it has more than one '/'"
        raise _refuse(text, problem)
    _check_part(text, "organisation", parts[0])
    _check_part(text, "name", parts[1])
    if revision is not None:
        _check_revision(text, revision)
