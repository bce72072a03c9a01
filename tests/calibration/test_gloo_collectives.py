"""FSDP2's reduce-scatter made in place on gloo ranks: the same sums as gloo's own call; accelerate's units as cut."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.calibration.ranks import run_ranks


def reduce_scatter_both_ways(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultReduceScatter

    from app.calibration.gloo_collectives import in_place_reduce_scatters

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(rank)
        source = torch.randn(world * 6, dtype=torch.float32)
        gloo, ours = torch.empty(6), torch.empty(6)
        DefaultReduceScatter()(gloo, source.clone(), dist.group.WORLD, dist.ReduceOp.SUM)
        saved = DefaultReduceScatter.__call__
        with in_place_reduce_scatters():
            patched = DefaultReduceScatter.__call__ is not saved
            work = DefaultReduceScatter()(ours, source.clone(), dist.group.WORLD, dist.ReduceOp.SUM, async_op=True)
            work.wait()
        return {
            "gloo": gloo.tolist(),
            "ours": ours.tolist(),
            "patched": patched,
            "restored": DefaultReduceScatter.__call__ is saved,
        }
    finally:
        dist.destroy_process_group()


def test_the_in_place_reduce_scatter_sums_as_gloos_own_and_is_undone_after() -> None:
    for result in run_ranks(reduce_scatter_both_ways, 2, {}, timeout_s=120):
        assert result["patched"] and result["restored"]
        assert result["ours"] == result["gloo"]


def units_of_a_tiny_llama(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    """The FSDP states of a 2-layer llama as the harness shards it: each state's modules, its parameters and its
    reshard_after_forward (None: a state without parameters)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from transformers import LlamaConfig, LlamaForCausalLM

    from app.calibration.distributed import shard_fsdp2
    from app.core.plan import TrainingPlan

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        config = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=256,
            tie_word_embeddings=job["tied"],
        )
        model = shard_fsdp2(
            LlamaForCausalLM(config), TrainingPlan(method="full", sharding="fsdp", gpus=2, device="cpu")
        )
        names = {id(m): name for name, m in model.named_modules()}
        states: dict[int, Any] = {}
        for name, module in model.named_modules():
            if isinstance(module, FSDPModule):
                states.setdefault(id(module._get_fsdp_state()), [module._get_fsdp_state(), []])[1].append(name)
        units = []
        for state, modules in states.values():
            group = state._fsdp_param_group
            params = (
                []
                if group is None
                else [f"{names[id(p._module_info.module)]}.{p._module_info.param_name}" for p in group.fsdp_params]
            )
            reshard = None if group is None else group._reshard_after_forward
            units.append([sorted(m or "<root>" for m in modules), sorted(params), reshard])
        return {"units": units}
    finally:
        dist.destroy_process_group()


def test_accelerates_units_are_the_layers_the_embedding_a_kept_tail_and_an_empty_root() -> None:
    """fully_shard on [final norm, lm_head] makes one state (one parameter group) for both, kept gathered after
    forward; the embedding is a unit of its own, resharded, unless tied (then it is the tail's); the root holds no
    parameter of its own. As accelerate 1.16's fsdp2_prepare_model cuts them (app/core/fsdp2_units.py)."""
    untied = run_ranks(units_of_a_tiny_llama, 2, {"tied": False}, timeout_s=180)[0]["units"]
    tied = run_ranks(units_of_a_tiny_llama, 2, {"tied": True}, timeout_s=180)[0]["units"]
    by_modules = {tuple(m): (params, reshard) for m, params, reshard in untied}
    assert by_modules[("<root>",)] == ([], None)
    assert by_modules[("model.embed_tokens",)] == (["model.embed_tokens.weight"], True)
    assert by_modules[("lm_head", "model.norm")] == (["lm_head.weight", "model.norm.weight"], False)
    assert len(by_modules[("model.layers.0",)][0]) == 9 and by_modules[("model.layers.1",)][1] is True
    assert len(untied) == 5
    tied_by = {tuple(m): (params, reshard) for m, params, reshard in tied}
    assert tied_by[("lm_head", "model.embed_tokens", "model.norm")] == (
        ["model.embed_tokens.weight", "model.norm.weight"],
        False,
    )
    assert tied_by[("<root>",)] == ([], None) and len(tied) == 4
