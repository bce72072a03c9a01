"""FSDP2's collectives through untracked staging buffers on gloo ranks: the same values as gloo's own calls, nothing
of theirs counted, gloo's calls back after; accelerate's units as cut."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.calibration.ranks import run_ranks


def collectives_both_ways(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

    from app.calibration.gloo_collectives import nccl_like_collectives
    from app.calibration.tracker import LiveTensorTracker

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(rank)
        source = torch.randn(world * 6, dtype=torch.float32)
        shard = torch.randn(6, dtype=torch.float32)
        gloo_rs, gloo_ag = torch.empty(6), torch.empty(world * 6)
        DefaultReduceScatter()(gloo_rs, source.clone(), dist.group.WORLD, dist.ReduceOp.SUM)
        DefaultAllGather()(gloo_ag, shard.clone(), dist.group.WORLD)
        saved = DefaultAllGather.__call__, DefaultReduceScatter.__call__
        with nccl_like_collectives():
            patched = (DefaultAllGather.__call__, DefaultReduceScatter.__call__) != saved
            with LiveTensorTracker("cpu", adopt_inputs=False) as tracker:
                ours_rs, ours_ag = torch.empty(6), torch.empty(world * 6)
                rs_input, ag_input = source.clone(), shard.clone()
                made = tracker.current_bytes
                DefaultReduceScatter()(ours_rs, rs_input, dist.group.WORLD, dist.ReduceOp.SUM, async_op=True).wait()
                assert DefaultAllGather()(ours_ag, ag_input, dist.group.WORLD) is None
                counted = tracker.peak_bytes - made
        return {
            "gloo": [gloo_rs.tolist(), gloo_ag.tolist()],
            "ours": [ours_rs.tolist(), ours_ag.tolist()],
            "counted": counted,
            "patched": patched,
            "restored": (DefaultAllGather.__call__, DefaultReduceScatter.__call__) == saved,
        }
    finally:
        dist.destroy_process_group()


def test_the_staged_collectives_give_gloos_values_count_nothing_of_their_own_and_are_undone_after() -> None:
    for result in run_ranks(collectives_both_ways, 2, {}, timeout_s=120):
        assert result["patched"] and result["restored"]
        assert result["ours"] == result["gloo"]
        assert result["counted"] == 0


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
