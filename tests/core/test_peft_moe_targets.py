"""MOE_PARAM_TARGETS is what the installed PEFT converts: its mapping, for the model types transformers' table maps."""

from __future__ import annotations

import pytest

from app.core.adapters import MOE_PARAM_TARGETS

conversion = pytest.importorskip("peft.utils.transformers_weight_conversion")


def _installed() -> dict[str, dict[str, str]]:
    """What _convert_peft_config_moe converts: a model type whose conversion pattern has a target mapping and fused
    targets, and which transformers has a checkpoint conversion for; "gate.weight" is the router's weight."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    found = {}
    for model_type, pattern in conversion._MODEL_TO_CONVERSION_PATTERN.items():
        mapping = conversion._MOE_TARGET_MODULE_MAPPING.get(pattern)
        if not mapping or not conversion._MOE_FUSED_TARGETS.get(pattern):
            continue
        if not model_type.islower() or get_checkpoint_conversion_mapping(model_type) is None:
            continue  # class-name keys (e.g. Dots3NoteTextModel) are not a config's model_type
        found[model_type] = {old: new.removeprefix(f"{old}.") for old, new in mapping.items()}
    return found


def test_moe_param_targets_are_the_installed_peft_conversion() -> None:
    assert _installed() == MOE_PARAM_TARGETS


def test_qwen2_moe_itself_is_not_converted() -> None:
    assert "qwen2_moe" not in MOE_PARAM_TARGETS and "qwen3_moe" in MOE_PARAM_TARGETS
