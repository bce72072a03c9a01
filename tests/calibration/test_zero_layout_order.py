"""ZeRO-2's layout (app/core/zero_layout.py `parameter_order`) is DeepSpeed's: the trainable parameters in
`model.parameters()` order, as the real transformers/PEFT modules register them (built on the meta device)."""

from __future__ import annotations

import pytest

from app.core.adapters import adapted_groups
from app.core.plan import TrainingPlan
from app.core.zero_layout import parameter_order
from app.inventory.cache import cached_spec
from tests.core.test_zero_layout import MISTRAL

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

MIXTRAL = {
    "model_type": "mixtral",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
}


# mixtral's all-linear adapts the fused experts through PEFT's target_parameters, which this test does not build
@pytest.mark.parametrize(
    ("config", "targets"),
    [
        (MISTRAL, "full"),
        (MISTRAL, "all-linear"),
        (MISTRAL, "q_proj,v_proj"),
        (MIXTRAL, "full"),
        (MIXTRAL, "q_proj,v_proj"),
    ],
)
def test_the_layout_is_model_parameters_order(config: dict[str, object], targets: str) -> None:
    spec = cached_spec(config, model_id="layout", source="file", cache_dir=None)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    if targets == "full":
        real = [p.numel() for p in model.parameters()]
        mine = [p.numel for p in parameter_order(spec, (), "full")]
    else:
        plan = TrainingPlan(method="lora", rank=8, dropout=0.0, targets=targets)
        adapted, _ = adapted_groups(spec, plan)
        modules = "all-linear" if targets == "all-linear" else targets.split(",")
        lora = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=modules, lora_dropout=0.0))
        real = [p.numel() for p in lora.parameters() if p.requires_grad]
        mine = [p.numel for p in parameter_order(spec, adapted, "lora")]
    assert mine == real
