"""BlockStreams: each block's draws on a training batch come from (run seed, block, batch) alone."""

import pytest
import torch

from lightning_noprop.execution.streams import BlockStreams, stream_seed


def test_a_block_draws_the_same_numbers_whatever_ran_before_and_the_global_stream_resumes():
    streams = BlockStreams(run_seed=7)
    torch.manual_seed(0)
    with streams.training_batch(4):
        with streams.stream(2):
            first = torch.rand(5)
        torch.rand(100)  # another block's or the loop's draws in between
        with streams.stream(2):
            again = torch.rand(5)
        with streams.stream(3):
            other_block = torch.rand(5)
        with streams.stream(2, batch=5):
            other_batch = torch.rand(5)
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.rand(100)  # the only draw outside the streams above
    torch.testing.assert_close(after, torch.rand(3), rtol=0, atol=0)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other_block) and not torch.equal(first, other_batch)
    generator = torch.Generator().manual_seed(stream_seed(7, 2, 4))
    torch.testing.assert_close(first, torch.rand(5, generator=generator), rtol=0, atol=0)


def test_outside_a_training_batch_a_stream_draws_from_the_global_generator():
    streams = BlockStreams(run_seed=7)
    torch.manual_seed(1)
    with streams.stream(0):
        inside = torch.rand(4)
    torch.manual_seed(1)
    torch.testing.assert_close(inside, torch.rand(4), rtol=0, atol=0)


def test_a_stream_does_not_ask_the_driver_whether_cuda_is_available(monkeypatch):
    # Under Lightning torch.cuda.is_available() loads NVML at each call until CUDA is initialised: once per block and
    # batch that cost 42 us a call on a CPU host. Whether CUDA is initialised is what decides the seeding.
    def no_query() -> bool:
        raise AssertionError("torch.cuda.is_available() called per stream")

    monkeypatch.setattr(torch.cuda, "is_available", no_query)
    streams = BlockStreams(run_seed=0)
    with streams.training_batch(0), streams.stream(1):
        torch.rand(1)


@pytest.mark.parametrize("replica", [0, 1])
def test_seeds_differ_by_run_block_batch_and_replica(replica):
    base = stream_seed(0, 0, 0, replica)
    assert len({base, stream_seed(1, 0, 0, replica), stream_seed(0, 1, 0, replica), stream_seed(0, 0, 1, replica)}) == 4
    assert stream_seed(0, 0, 0, 1 - replica) != base
    assert 0 <= base < 2**63
