"""gpuplan never executes remote code: known families are estimated from config fields, unknown ones refused."""

from __future__ import annotations

import pytest

from app.errors import ConfigError, RemoteCodeRefused
from app.hub.remote_code import check_remote_code

AUTO_MAP = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}


def test_no_auto_map_means_no_notes() -> None:
    assert check_remote_code({"model_type": "definitely-not-a-family"}) == []


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_auto_map_with_a_known_family_gives_a_note(model_type: str) -> None:
    notes = check_remote_code({"model_type": model_type, "auto_map": AUTO_MAP}, name="acme/fancy")
    assert notes == [
        f"acme/fancy asks for remote code (auto_map); estimated from config fields of known family {model_type}; "
        "remote code not executed"
    ]


def test_auto_map_with_an_unknown_family_is_refused() -> None:
    with pytest.raises(RemoteCodeRefused) as caught:
        check_remote_code({"model_type": "acme_secret_arch", "auto_map": AUTO_MAP}, name="acme/secret")
    assert caught.value.detail == (
        "acme/secret needs trust_remote_code and its model_type 'acme_secret_arch' is unknown to transformers; "
        "gpuplan never executes remote code"
    )
    assert isinstance(caught.value, ConfigError)
    assert caught.value.status == 422


@pytest.mark.parametrize("config", [{"auto_map": AUTO_MAP}, {"auto_map": AUTO_MAP, "model_type": 3}])
def test_auto_map_without_a_usable_model_type_is_refused(config: dict[str, object]) -> None:
    with pytest.raises(RemoteCodeRefused, match="needs trust_remote_code"):
        check_remote_code(config)


def test_the_label_falls_back_to_name_or_path() -> None:
    config = {"model_type": "llama", "auto_map": AUTO_MAP, "_name_or_path": "acme/from-config"}
    assert check_remote_code(config)[0].startswith("acme/from-config asks for remote code")
    assert check_remote_code({"model_type": "llama", "auto_map": {}})[0].startswith("this model asks")
