"""Files that are not recipes give one RecipeError naming the formats gpuplan expected, never a traceback."""

from __future__ import annotations

import json
import time

import pytest

from app.errors import InputError, RecipeError
from app.recipes import RecipeFile, import_recipe
from app.recipes.parse import MAX_BYTES, bracket_depth
from tests.recipes.helpers import recipe

EXPECTED = "expected one of: axolotl YAML, LLaMA-Factory YAML"


def refused(name: str, text: str) -> RecipeError:
    with pytest.raises(RecipeError) as caught:
        import_recipe([recipe(name, text)])
    error = caught.value
    assert isinstance(error, InputError) and error.status == 422
    assert error.errors and {"field", "message"} <= error.errors[0].keys()
    return error


BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["base_model: x/y"]
)


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("a.yml", "base_model: [unclosed\n", "not valid YAML"),
        ("a.yml", "key: value\n  bad indent: here\n", "not valid YAML"),
        ("a.yml", "- base_model: x\n- adapter: lora\n", "holds a list, not a mapping"),
        ("a.yml", "just a sentence\n", "holds a single str value, not a mapping"),
        ("a.yml", "", "the file is empty"),
        ("a.yml", "# only a comment\n", "the file is empty"),
        ("a.yml", "a: 1\n---\nb: 2\n", "not valid YAML"),  # two documents
        ("a.yml", "lora_r: 8\nlora_r: 16\n", "appears twice"),
        ("a.json", '{"r": 8, "r": 16}', "appears twice"),
        ("a.json", '{"r": NaN}', "not valid JSON"),
        ("a.json", '{"r": 8,', "not valid JSON"),
        ("a.json", "[1, 2]", "holds a list"),
        ("a.yml", BOMB, "expands to more than"),  # billion laughs
        ("a.yml", "a: &a [*a]\n", "(a cycle)"),  # an alias inside its own anchor
        ("a.yml", "[" * 5000 + "]" * 5000, "nests deeper than"),
        ("a.json", "[" * 100_000 + "]" * 100_000, "nests deeper than"),
        ("a.yml", "base_model: x\x00\x01\x02\xff\xfe", "binary data"),
        ("a.yml", "\x07\x1b[31m garbage \x7f", "not valid YAML"),
        ("a.yml", "hello: world\nfoo: 1\n", "none of the keys (foo, hello) is one these formats are recognised by"),
        ("a.yml", "!!python/object:os.system {}\n", "not valid YAML"),  # safe loader: no object construction
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else None,
)
def test_hostile_files_are_refused_naming_the_expected_formats(name: str, text: str, why: str) -> None:
    started = time.perf_counter()
    error = refused(name, text)
    assert why in error.detail, error.detail
    assert EXPECTED in error.detail and error.detail.startswith(f"{name}: ")
    assert time.perf_counter() - started < 5


def test_too_large_files_are_refused_before_parsing() -> None:
    error = refused("big.yml", "a: " + "x" * MAX_BYTES)
    assert "more than the 1,048,576 a recipe may have" in error.detail
    with pytest.raises(RecipeError, match="more than the 1,048,576"):
        RecipeFile.from_bytes("big.yml", b"a" * (MAX_BYTES + 1))


def test_binary_bytes_are_refused_as_not_text() -> None:
    with pytest.raises(RecipeError, match="not UTF-8 text"):
        RecipeFile.from_bytes("model.safetensors", bytes(range(256)) * 4)
    assert RecipeFile.from_bytes("a.yml", "\ufeffbase_model: x\n".encode()).text == "base_model: x\n"


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (
            "base_model: x/y\nadapter: lora\nlora_r: sixteen\n",
            "a.yml:lora_r",
            "expected an integer, got str: 'sixteen'",
        ),
        ("base_model: x/y\nadapter: lora\nlora_r: true\n", "a.yml:lora_r", "expected an integer, got bool"),
        ("base_model: x/y\nsequence_len: 2048.5\n", "a.yml:sequence_len", "expected an integer"),
        ("base_model: x/y\ngradient_checkpointing: yes please\n", "a.yml:gradient_checkpointing", "expected true"),
        ("base_model: x/y\nbf16: [1]\nfp16: 3\n", "a.yml:bf16", ""),
        ("base_model: x/y\ngradient_checkpointing_kwargs: 3\n", "a.yml:gradient_checkpointing_kwargs", "mapping"),
        ("base_model: x/y\noptimizer: 7\n", "a.yml:optimizer", "expected text, got int"),
    ],
)
def test_wrong_value_types_name_the_file_field_and_format(text: str, field: str, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        import_recipe([recipe("a.yml", text)])
    error = caught.value
    assert error.errors[0]["field"] == field
    assert message in error.errors[0]["message"] and "(read as axolotl YAML)" in error.errors[0]["message"]
    assert error.detail.startswith(field)


def test_a_non_lora_adapter_config_is_refused() -> None:
    ia3 = json.dumps({"peft_type": "IA3", "target_modules": ["k_proj"], "task_type": "CAUSAL_LM"})
    with pytest.raises(RecipeError, match="gpuplan plans LoRA adapters"):
        import_recipe([recipe("adapter_config.json", ia3)])


def test_no_files_and_too_many_files_are_refused() -> None:
    with pytest.raises(RecipeError, match="no recipe file given"):
        import_recipe([])
    with pytest.raises(RecipeError, match="at most 16"):
        import_recipe([recipe(f"{i}.yml", "base_model: x\n") for i in range(17)])


def test_bracket_depth_skips_quoted_text() -> None:
    assert bracket_depth('{"a": [1, {"b": "x[[[\\"]]"}]}') == 3
    assert bracket_depth('a: "[["\nb: [1, [2]]') == 2
    assert bracket_depth("k: 'it''s [x'") == 0
    assert bracket_depth("[" * 65 + "]" * 65) == 65
