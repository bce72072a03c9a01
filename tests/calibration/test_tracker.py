"""LiveTensorTracker on hand-built cases whose bytes are derived by hand, to the byte."""

from __future__ import annotations

import pytest
import torch

from app.calibration.tracker import LiveTensorTracker, module_tensors, rounded_bytes

F32 = 4


@pytest.mark.parametrize(("nbytes", "counted"), [(0, 0), (1, 512), (511, 512), (512, 512), (513, 1024), (4000, 4096)])
def test_rounded_bytes_rounds_up_to_512(nbytes: int, counted: int) -> None:
    assert rounded_bytes(nbytes) == counted


def test_one_tensor_counts_its_bytes_rounded_up_to_512() -> None:
    with LiveTensorTracker() as tracker:
        x = torch.empty(1000)  # 4000 bytes
        assert (tracker.current_bytes, tracker.peak_bytes, tracker.live_storages) == (4096, 4096, 1)
        del x


def test_a_one_byte_tensor_counts_512_and_an_empty_one_counts_nothing() -> None:
    with LiveTensorTracker() as tracker:
        one = torch.empty(1, dtype=torch.uint8)
        assert tracker.current_bytes == 512
        empty = torch.empty(0)
        assert tracker.current_bytes == 512
        del one, empty


def test_views_and_aliases_are_not_double_counted() -> None:
    with LiveTensorTracker() as tracker:
        x = torch.empty(10, 100)
        aliases = [
            x.view(-1),
            x[::2],
            x.t(),
            x[0],
            x.detach(),
            x.unsqueeze(0).expand(3, 10, 100),
            x.as_strided((5,), (1,)),
        ]
        assert tracker.current_bytes == 4096
        copy = x.clone()
        assert tracker.current_bytes == 2 * 4096
        del aliases, copy


def test_deleting_the_last_reference_frees_the_storage_and_keeps_the_peak() -> None:
    with LiveTensorTracker() as tracker:
        x = torch.empty(1000)
        view = x[10:20]
        del x
        assert tracker.current_bytes == 4096  # the view keeps the whole storage alive
        del view
        assert (tracker.current_bytes, tracker.peak_bytes, tracker.live_storages) == (0, 4096, 0)


def test_in_place_ops_and_out_arguments_allocate_nothing() -> None:
    with LiveTensorTracker() as tracker:
        x = torch.ones(1000)
        y = torch.empty(1000)
        before = tracker.current_bytes
        x.add_(1).mul_(2)
        torch.add(x, 1, out=y)
        torch.mul(x, y, out=x)
        assert tracker.current_bytes == before == 2 * 4096


def test_an_out_argument_that_is_resized_counts_at_its_new_size() -> None:
    with LiveTensorTracker() as tracker:
        x = torch.ones(1000)
        out = torch.empty(0)
        assert tracker.current_bytes == 4096
        torch.add(x, 1, out=out)
        assert tracker.current_bytes == 2 * 4096


def test_to_that_changes_nothing_returns_self_and_allocates_nothing() -> None:
    with LiveTensorTracker() as tracker:
        x = torch.empty(1000)
        assert x.to(torch.float32) is x
        assert x.contiguous() is x
        assert tracker.current_bytes == 4096
        half = x.to(torch.float16)  # 2000 bytes
        assert tracker.current_bytes == 4096 + 2048
        del half


def test_resize_of_a_tensor_and_of_a_storage_is_followed() -> None:
    original = torch.UntypedStorage.resize_
    with LiveTensorTracker() as tracker:
        x = torch.empty(10)
        x.resize_(1000)
        assert tracker.current_bytes == 4096
        storage = torch.empty(10).untyped_storage()
        assert tracker.current_bytes == 4096 + 512
        storage.resize_(2048)  # not an aten op: followed through the patched UntypedStorage.resize_
        assert tracker.current_bytes == 4096 + 2048
        storage.resize_(0)  # how FSDP frees a parameter's storage
        assert tracker.current_bytes == 4096
        assert tracker.peak_bytes == 4096 + 2048
    assert torch.UntypedStorage.resize_ is original  # the patch lasts only while the mode is active


def test_a_tensor_made_before_tracking_is_adopted_when_an_op_reads_it() -> None:
    outside = torch.empty(1000)
    with LiveTensorTracker() as tracker:
        assert tracker.current_bytes == 0
        outside.add_(1)
        assert (tracker.current_bytes, tracker.adopted_bytes) == (4096, 4096)
        new = outside * 2
        assert (tracker.current_bytes, tracker.adopted_bytes) == (2 * 4096, 4096)
        del new


def test_without_adoption_only_new_storages_count() -> None:
    outside = torch.empty(1000)
    with LiveTensorTracker(adopt_inputs=False) as tracker:
        outside.add_(1)
        view = outside[:10]
        assert tracker.current_bytes == 0
        new = outside * 2
        assert (tracker.current_bytes, tracker.adopted_bytes) == (4096, 0)
        del view, new


def test_torch_tensor_inside_the_mode_is_a_new_storage_not_an_adopted_one() -> None:
    # torch.tensor builds below the dispatcher and lifts the result through aten.lift_fresh
    with LiveTensorTracker() as tracker:
        scalar = torch.tensor(0.0)
        assert (tracker.current_bytes, tracker.adopted_bytes) == (512, 0)
        del scalar
        assert tracker.current_bytes == 0


def test_only_the_chosen_device_is_counted() -> None:
    with LiveTensorTracker("meta") as tracker:
        on_meta = torch.empty(1000, device="meta")
        on_cpu = torch.empty(1000)
        assert tracker.current_bytes == 4096
        del on_meta
        assert tracker.current_bytes == 0
    with LiveTensorTracker("cpu") as tracker:
        on_meta = torch.empty(1000, device="meta")
        assert tracker.current_bytes == 0
    del on_cpu, on_meta


def test_matmul_saved_tensors_stay_alive_until_backward() -> None:
    with LiveTensorTracker() as tracker:
        x = torch.randn(64, 32)  # 8192 bytes
        w1 = torch.randn(32, 48, requires_grad=True)  # 6144
        w2 = torch.randn(48, 16, requires_grad=True)  # 3072
        assert tracker.current_bytes == 17408
        h = x @ w1  # 64x48 = 12288; saved by the second mm to give w2 its gradient
        z = h @ w2  # 64x16 = 4096; not saved (sum keeps only sizes)
        loss = z.sum()  # 4 bytes -> 512
        assert tracker.peak_bytes == 17408 + 12288 + 4096 + 512
        del h, z
        assert tracker.current_bytes == 17408 + 12288 + 512  # z freed, h kept by autograd
        tracker.reset_peak()
        loss.backward()
        # seed grad (512) + grad of h (64x48 = 12288) + grad of w2 (48x16 = 3072), h and seed still alive;
        # h and the seed are released before the first mm's backward allocates w1's gradient (6144)
        assert tracker.peak_bytes == 30208 + 512 + 12288 + 3072
        del loss
        assert tracker.current_bytes == 17408 + 6144 + 3072  # inputs and the two .grad tensors
        assert tracker.live_storages == 5
        del x, w1, w2
        assert tracker.current_bytes == 0


# Adam's transient on top of its state: single-tensor Adam computes denom = exp_avg_sq.sqrt() / c for one
# parameter at a time (two weight-sized temporaries, 2 * 2048); foreach Adam runs _foreach_sqrt over all
# parameters at once (one temporary per parameter, 2048 + 512).
@pytest.mark.parametrize(("foreach", "adam_transient"), [(False, 2 * 2048), (True, 2048 + 512)])
def test_a_tiny_linear_training_step_matches_the_hand_derived_peak(foreach: bool, adam_transient: int) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16)  # weight 2048 bytes, bias 64 -> 512
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-3, foreach=foreach)
    tracker = LiveTensorTracker()
    assert tracker.track_module(linear) == 2560
    with tracker:
        tracker.mark("load")
        x = torch.randn(8, 32)  # 1024
        loss = linear(x).sum()  # addmm output 8x16 = 512 (freed: sum saves nothing), loss 512
        tracker.mark("forward")
        loss.backward()  # seed 512, grad bias 512, grad weight 2048 (the seed dies with the graph)
        del loss
        tracker.mark("backward")
        # AdamW state per parameter: step (a scalar tensor, 512), exp_avg and exp_avg_sq (parameter-sized)
        optimizer.step()
        tracker.mark("step")
        optimizer.zero_grad(set_to_none=True)
        tracker.mark("zero_grad")
    state = 2 * 512 + 2 * 2048 + 2 * 512  # steps, moments of the weight, moments of the bias
    after_backward = 2560 + 1024 + 2048 + 512
    assert [(m.label, m.current_bytes, m.peak_bytes) for m in tracker.marks] == [
        ("load", 2560, 2560),
        ("forward", 2560 + 1024 + 512, 2560 + 1024 + 512 + 512),
        ("backward", after_backward, 2560 + 1024 + 512 + 512 + 512 + 2048),
        ("step", after_backward + state, after_backward + state + adam_transient),
        ("zero_grad", after_backward + state - 2048 - 512, after_backward + state),
    ]
    assert tracker.peak_bytes == after_backward + state + adam_transient  # 16384 single-tensor, 14848 foreach


def test_mark_records_the_peak_since_the_previous_mark() -> None:
    with LiveTensorTracker() as tracker:
        big = torch.empty(2048)  # 8192
        del big
        first = tracker.mark("a")
        small = torch.empty(100)  # 400 -> 512
        second = tracker.mark("b")
        third = tracker.mark("c")
        del small
    assert (first.label, first.current_bytes, first.peak_bytes) == ("a", 0, 8192)
    assert (second.current_bytes, second.peak_bytes) == (512, 512)
    assert (third.current_bytes, third.peak_bytes) == (512, 512)
    assert tracker.peak_bytes == 8192
    assert [m.label for m in tracker.marks] == ["a", "b", "c"]


def test_reset_peak_starts_again_from_the_current_bytes() -> None:
    with LiveTensorTracker() as tracker:
        big = torch.empty(2048)
        keep = torch.empty(100)
        del big
        assert tracker.peak_bytes == 8192 + 512
        tracker.reset_peak()
        assert tracker.peak_bytes == tracker.current_bytes == 512
        del keep


def test_track_module_counts_tied_weights_once() -> None:
    embedding = torch.nn.Embedding(100, 16)  # 6400 bytes -> 6656
    head = torch.nn.Linear(16, 100, bias=False)
    head.weight = embedding.weight
    tracker = LiveTensorTracker()
    assert tracker.track_module(torch.nn.ModuleList([embedding, head])) == 6656
    assert tracker.track_module(head) == 0


def test_track_module_counts_bitsandbytes_quant_states() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(64, 128, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
    layer = layer.to("cpu")  # Params4bit quantizes when moved to a device
    tracker = LiveTensorTracker()
    # packed weight 64*128/2 = 4096; absmax uint8 (128 blocks of 64) -> 512; nf4 code 16 fp32 -> 512;
    # offset fp32 scalar -> 512; state2 absmax (1 block of 256) -> 512; state2 code 256 fp32 = 1024; bias 512
    assert tracker.track_module(layer) == 4096 + 512 + 512 + 512 + 512 + 1024 + 512
    assert len(module_tensors(layer)) == 7


def test_bitsandbytes_ops_dispatch_through_the_mode() -> None:
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf

    weight = torch.randn(128, 64, dtype=torch.bfloat16)
    with LiveTensorTracker(adopt_inputs=False) as tracker:
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    # the op outputs, as torch.library ops (bitsandbytes::quantize_4bit, ::quantize_blockwise): the same
    # storages as a quantized Linear4bit's weight and quant state, without its bias
    assert tracker.current_bytes == 4096 + 512 + 512 + 512 + 512 + 1024
    assert state.state2 is not None
    del packed


def test_gradients_made_in_backward_are_freed_when_they_die() -> None:
    with LiveTensorTracker() as tracker:
        w = torch.randn(256, requires_grad=True)  # 1024
        loss = (w * 2).sum()  # mul output is not saved (its other input is a number)
        loss.backward()
        del loss
        assert tracker.current_bytes == 1024 + 1024  # w and w.grad; every other backward tensor died
        w.grad = None
        assert tracker.current_bytes == 1024


def test_storages_marked_host_leave_the_device_count_and_keep_both_figures() -> None:
    with LiveTensorTracker() as tracker:
        shard = torch.empty(1024)  # 4096 bytes: an offloaded shard, made on the "device" first
        gathered = torch.empty(2048)  # 8192 bytes: stays on the device
        assert tracker.mark_host(shard[:10]) == 4096  # a view names its storage
        assert (tracker.current_bytes, tracker.host_bytes) == (8192, 4096)
        assert tracker.mark_host(shard) == 0  # placed once
        tracker.reset_peak()
        more = torch.empty(1024)
        assert (tracker.peak_bytes, tracker.all_peak_bytes, tracker.host_peak_bytes) == (12288, 16384, 4096)
        del shard
        assert (tracker.current_bytes, tracker.host_bytes) == (12288, 0)  # a host storage freed leaves the host count
        del gathered, more


def test_what_a_host_block_allocates_is_host_ram_and_an_unseen_storage_is_added_as_host() -> None:
    before = torch.empty(256)  # 1024 bytes, made before tracking
    with LiveTensorTracker() as tracker:
        with tracker.host_allocations():
            state = torch.zeros(512)  # 2048 bytes: an optimizer state made on the host
        device = torch.empty(128)
        assert tracker.mark_host(before) == 1024
        assert (tracker.current_bytes, tracker.host_bytes, tracker.peak_bytes) == (512, 3072, 512)
        del state, device
