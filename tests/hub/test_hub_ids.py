"""Model id validation happens before any request and says what is wrong."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.errors import InputError, ModelIdError
from app.hub.ids import HubRef, parse_model_ref

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("text", "repo_id", "revision"),
    [
        ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B", None),
        ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B", None),
        (
            "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
            "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
            None,
        ),
        ("a_b/c_d", "a_b/c_d", None),
        ("01-ai/Yi-34B@main", "01-ai/Yi-34B", "main"),
        ("org/name@refs/pr/1", "org/name", "refs/pr/1"),
        ("org/name@v1.0_rc-2", "org/name", "v1.0_rc-2"),
        (f"org/name@{SHA}", "org/name", SHA),
        ("o/" + "n" * 96, "o/" + "n" * 96, None),
        ("o/n@" + "r" * 200, "o/n", "r" * 200),
    ],
)
def test_good_ids_parse(text: str, repo_id: str, revision: str | None) -> None:
    ref = parse_model_ref(text)
    assert ref == HubRef(repo_id=repo_id, revision=revision)
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("https://x/y", "URLs and schemes are not accepted"),
        ("https://huggingface.co/Qwen/Qwen2.5-7B", "URLs and schemes are not accepted"),
        ("hf:org/name", "URLs and schemes are not accepted"),
        ("../etc/passwd", "'..'"),
        ("a/b/../c", "'..'"),
        ("a/b@x..y", "'..'"),
        ("a /b", "whitespace or control characters"),
        ("a/b\n", "whitespace or control characters"),
        ("a/b\x00", "whitespace or control characters"),
        ("a/b\t", "whitespace or control characters"),
        ("a\\b", "backslash"),
        ("gpt2", "it has no organisation"),
        ("a/b/c", "more than one '/'"),
        ("/b", "the organisation is empty"),
        ("a/", "the name is empty"),
        ("a/b@", "the revision after '@' is empty"),
        ("a/b@1@2", "more than one '@'"),
        ("-a/b", "may not start or end with '.' or '-'"),
        ("a/b-", "may not start or end with '.' or '-'"),
        ("a/.b", "may not start or end with '.' or '-'"),
        ("a--b/c", "may not contain '--' or '..'"),
        ("a/b%2e", "may use only letters, digits"),
        ("é/b", "may use only letters, digits"),
        ("a/b@rev:1", "may use only letters, digits, '.', '_', '-' and '/'"),
        ("a/b@/main", "nor start or end with '/'"),
        ("a/b@main/", "nor start or end with '/'"),
        ("a/b@refs//pr", "'//'"),
        ("a/" + "n" * 97, "longer than 96 characters"),
        ("o" * 97 + "/n", "longer than 96 characters"),
        ("o" * 97 + "/" + "n" * 97, "the repository id is longer than 193 characters"),
        ("a/b@" + "r" * 201, "longer than 200 characters"),
    ],
)
def test_bad_ids_are_refused_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(ModelIdError) as caught:
        parse_model_ref(text)
    detail = caught.value.detail
    assert detail.startswith(f"{text!r} is not a Hub model id: ")
    assert problem in detail
    assert detail.endswith("a valid id looks like 'org/name' or 'org/name@revision', e.g. 'Qwen/Qwen2.5-7B@main'")


def test_model_id_error_is_a_400_input_error() -> None:
    with pytest.raises(InputError) as caught:
        parse_model_ref("nope")
    assert caught.value.status == 400
    assert caught.value.slug == "invalid-model-id"


def test_hub_ref_is_frozen_and_defaults_to_main() -> None:
    ref = parse_model_ref("org/name")
    assert ref.revision is None
    assert ref.revision_or_main == "main"
    with pytest.raises(ValidationError):
        ref.repo_id = "other/name"  # type: ignore[misc]


@pytest.mark.parametrize(("repo_id", "revision"), [("../x", None), ("a/b", "../../etc"), ("a/b/c", None), ("a/b", "")])
def test_hub_ref_built_directly_obeys_the_same_rules(repo_id: str, revision: str | None) -> None:
    with pytest.raises(ModelIdError):
        HubRef(repo_id=repo_id, revision=revision)


_ID_ALPHABET = st.sampled_from("aZ09._-/@\\: \n%~")


@given(st.text(_ID_ALPHABET, max_size=30))
def test_any_text_is_either_refused_or_round_trips(text: str) -> None:
    try:
        ref = parse_model_ref(text)
    except ModelIdError:
        return
    assert str(ref) == text
    for part in ref.repo_id.split("/"):
        assert re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9._-]*[A-Za-z0-9_])?", part)
    assert ".." not in text
    assert "\\" not in text
    assert not any(ch.isspace() for ch in text)
