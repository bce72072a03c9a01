"""Hub tokens, API keys and passwords in an imported config never appear in the result or in an error."""

from __future__ import annotations

import json

import pytest

from app.errors import RecipeError
from app.recipes import import_recipe
from app.recipes.secrets import REDACTED
from tests.recipes.helpers import recipe

HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"
WANDB = "0123456789abcdef0123456789abcdef01234567"


def test_secret_keys_and_token_values_are_redacted_everywhere() -> None:
    axolotl = (
        "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nlora_r: 8\n"
        f"hub_token: {HF}\nwandb_api_key: {WANDB}\nmy_db_password: hunter2hunter2\n"
        f"custom_header: Bearer {HF}\n"  # an unknown key whose value is a credential
        f"deepspeed:\n  zero_optimization:\n    stage: 2\n  auth_token: {HF}\n"  # a secret inside a mapped value
    )
    trainer = json.dumps({"per_device_train_batch_size": 1, "hub_token": HF, "push_to_hub_token": HF})
    result = import_recipe([recipe("a.yml", axolotl), recipe("args.json", trainer)])
    dumped = result.model_dump_json()
    for secret in (HF, WANDB, "hunter2hunter2"):
        assert secret not in dumped and secret not in repr(result)
    assert result.plan.sharding == "zero2"
    deepspeed = next(e for e in result.mapped if e.field == "deepspeed")
    assert deepspeed.value == {"zero_optimization": {"stage": 2}, "auth_token": REDACTED}
    assert {"hub_token", "wandb_api_key"} <= {e.field for e in result.ignored}


def test_a_key_that_is_itself_a_token_is_redacted() -> None:
    result = import_recipe([recipe("a.yml", f"base_model: x/y\nadapter: lora\n{HF}: 1\n")])
    assert [e.field for e in result.unknown] == [REDACTED]
    assert HF not in result.model_dump_json()


@pytest.mark.parametrize(
    "text",
    [
        f"base_model: x/y\nadapter: lora\nlora_r: {HF}\n",  # a token where a number belongs
        f"base_model: x/y\nadapter: lora\nhub_token: {HF}\nlora_r: [\n",  # broken YAML after a token
        f"base_model: x/y\nhub_token: '{HF}\n",  # an unterminated quoted token: PyYAML would quote the line
        f"{HF}\n",  # a bare token: a single string value, not a mapping
        f"sdp_attention: {HF}\nbase_model: x/y\nadapter: lora\n",
    ],
)
def test_errors_never_echo_a_secret(text: str) -> None:
    with pytest.raises(RecipeError) as caught:
        import_recipe([recipe("a.yml", text)])
    error = caught.value
    assert HF not in error.detail and HF not in str(error.errors) and HF not in str(error)


def test_to_dict_placeholders_are_not_secrets_but_stay_silent() -> None:
    # TrainingArguments.to_dict() writes "<HUB_TOKEN>" for every *_token field
    text = json.dumps({"per_device_train_batch_size": 2, "hub_token": "<HUB_TOKEN>"})
    result = import_recipe([recipe("args.json", text)])
    assert ("args.json", "hub_token") in {(e.file, e.field) for e in result.ignored}
