"""Golden anchors: exact parameter counts PEFT prints and exact bitsandbytes bytes."""

from __future__ import annotations

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.plan import TrainingPlan
from app.core.quant import quantized_weight_bytes

LLAMA2 = "meta-llama/Llama-2-7b-hf"
SEVEN = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@pytest.mark.parametrize(
    ("targets", "rank", "trainable"),
    [(SEVEN, 16, 39_976_960), ("q_proj,v_proj", 8, 4_194_304), ("all-linear", 16, 39_976_960)],
)
def test_llama2_lora_trainable_params(targets: str, rank: int, trainable: int) -> None:
    spec = load_spec(LLAMA2)
    assert spec is not None
    est = estimate(spec, TrainingPlan(method="lora", targets=targets, rank=rank))
    assert est.params.base == 6_738_415_616
    assert est.params.trainable == trainable


def test_trainable_matches_peft_on_a_real_model() -> None:
    """PEFT's own count on a small instantiated Llama equals ours for the same config and targets."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoConfig, AutoModelForCausalLM

    from app.inventory.builder import build_spec

    config = dict(
        model_type="llama",
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=1000,
    )
    spec = build_spec(config, model_id="tiny", source="file")
    for targets, rank, dora in [("all-linear", 8, False), (("q_proj", "v_proj"), 4, True), (("gate_proj",), 16, False)]:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
        lora = peft.LoraConfig(
            r=rank, target_modules=targets if isinstance(targets, str) else list(targets), use_dora=dora
        )
        peft_model = peft.get_peft_model(model, lora)
        expected, _ = peft_model.get_nb_trainable_parameters()
        est = estimate(spec, TrainingPlan(method="lora", targets=targets, rank=rank, dora=dora))
        assert est.params.trainable == expected


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_layer_bytes_match_bitsandbytes(double_quant: bool, quant_type: str) -> None:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    w = torch.zeros(4096, 4096, dtype=torch.bfloat16).normal_()
    packed, state = functional.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type=quant_type)
    tensors = [packed, state.absmax, state.code]
    if double_quant:
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    measured = sum(t.numel() * t.element_size() for t in tensors)
    assert quantized_weight_bytes(4096 * 4096, 4096, quant_type, double_quant) == measured  # type: ignore[arg-type]
    expected = 8_388_608 + 64 + (262_144 + 4 + 4_096 + 1_024 if double_quant else 1_048_576)
    assert measured == expected


def test_double_quant_map_is_copied_per_weight() -> None:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    w = torch.ones(256, 256)
    _, a = functional.quantize_4bit(w, compress_statistics=True)
    _, b = functional.quantize_4bit(w, compress_statistics=True)
    # bitsandbytes copies the dynamic map into every quant state, so each weight pays its 1 KiB
    assert a.state2.code.data_ptr() != b.state2.code.data_ptr()
    assert a.state2.code.numel() * a.state2.code.element_size() == 1024


def test_double_quant_saving_for_llama2() -> None:
    spec = load_spec(LLAMA2)
    assert spec is not None
    with_dq = estimate(spec, TrainingPlan())
    without = estimate(spec, TrainingPlan(double_quant=False))
    saving = with_dq.double_quant_saving_bytes
    assert saving is not None and without.double_quant_saving_bytes is None
    # 6.48e9 quantized weights: absmax fp32 per 64 -> uint8 per 64 + fp32 per 16384 (+4 B offset each)
    quantized = 6_738_415_616 - 2 * 32_000 * 4096 - 65 * 4096
    assert saving == pytest.approx(quantized / 64 * 3 - quantized / 16384 * 4 - 224 * 1028, rel=1e-3)
    assert without.term("base_weight_bytes").bytes - with_dq.term("base_weight_bytes").bytes == pytest.approx(
        saving, rel=1e-3
    )  # type: ignore[union-attr]
