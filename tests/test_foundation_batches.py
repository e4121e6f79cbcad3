"""MinibatchIterable: one epoch per iteration, exact replay from a mid-epoch state."""

from __future__ import annotations

import torch

from datamodules.base import MinibatchIterable


def make(seed: int = 0) -> MinibatchIterable:
    probs = torch.rand(45, 6, generator=torch.Generator().manual_seed(0))
    return MinibatchIterable(probs, batch_size=10, shuffle=True, dynamic=True, seed=seed)


def test_each_iteration_is_a_new_epoch_even_when_abandoned():
    it = make()
    first = list(it)
    assert len(first) == len(it) == 5 and first[-1].shape == (5, 6)
    partial = next(iter(it))  # a consumer that stops early (as Lightning does at len())
    third = list(it)
    assert it.epoch == 2
    assert not torch.equal(partial, first[0])
    assert not torch.equal(third[0], first[0])
    assert set(torch.cat(first).unique().tolist()) <= {0.0, 1.0}


def test_mid_epoch_state_replays_the_rest_exactly():
    reference = make()
    list(reference)
    expected = list(reference)  # epoch 1, uninterrupted
    resumed = make()
    list(resumed)
    it = iter(resumed)
    next(it), next(it)
    state = resumed.state_dict()
    assert state == {"epoch": 1, "batches_done": 2}
    fresh = make()
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(rest) == 3
    for a, b in zip(rest, expected[2:]):
        assert torch.equal(a, b)
    after = list(fresh)  # and the next epoch goes on as in the uninterrupted run
    assert torch.equal(after[0], list(reference)[0])


def test_state_at_epoch_end_resumes_with_the_next_epoch():
    reference = make()
    list(reference)
    state = reference.state_dict()
    fresh = make()
    fresh.load_state_dict(state)
    assert torch.equal(list(fresh)[0], list(reference)[0])
