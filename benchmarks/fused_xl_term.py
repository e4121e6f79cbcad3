"""What the member-by-member x . l term costs a fused step, against the batched one it replaced.

`iwae.fused.stacked._member_xl` forms a member's x . l (the Bernoulli likelihood's data term,
k >= 8) with the same operations as a separate run, so that a member is bit-identical to its
run; it had been one batched einsum over the members, which rounds otherwise. Both sides time
the fused forward and backward pass (log weights, the members' objectives, gradients) of the
paper's one-layer network, batch 20, interleaved in one process, median over repeats.

    python -m benchmarks.fused_xl_term --members 2 6 --k 50 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import Tensor

from benchmarks.common import median
from iwae.fused import stacked as stacked_module
from iwae.fused.objectives import FusedObjective
from iwae.fused.stacked import StackedIWAE
from iwae.model import IWAEModel
from iwae.objectives import IWAE, VAE

MEMBER_BY_MEMBER = stacked_module._member_xl


def batched_xl(a: Tensor, x: Tensor, weight_t: Tensor, bias: Tensor) -> Tensor:
    """The batched form: one product over all members (rounds otherwise than a run alone)."""
    xw = torch.bmm(x, weight_t.transpose(1, 2))  # [M, B, hidden]
    return (a * xw.unsqueeze(1)).sum(-1) + (x * bias.unsqueeze(1)).sum(-1).unsqueeze(1)


def step_ms(members: int, k: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    models = [IWAEModel(784, [50], [[200, 200]]) for _ in range(members)]
    stacked = StackedIWAE(models)
    objective = FusedObjective([VAE(k=k) if m % 2 else IWAE(k=k) for m in range(members)], "cpu")
    x = torch.bernoulli(torch.rand(members, 20, 784))
    noise = [torch.randn(members, k, 20, 50)]

    def one_side(xl) -> float:
        stacked_module._member_xl = xl
        start = time.perf_counter()
        for _ in range(steps):
            objective(stacked.log_weights(x, noise)).loss.sum().backward()
            stacked.grads()
        return 1e3 * (time.perf_counter() - start) / steps

    times: dict[str, list[float]] = {"member_by_member": [], "batched": []}
    for rep in range(5):
        order = [("member_by_member", MEMBER_BY_MEMBER), ("batched", batched_xl)]
        for name, xl in order if rep % 2 == 0 else order[::-1]:
            times[name].append(one_side(xl))
    stacked_module._member_xl = MEMBER_BY_MEMBER
    return {f"{name}_ms": round(median(t), 3) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as a run does (flush_denormal=true)
    for members in args.members:
        row = {"members": members, "k": args.k, "threads": args.threads}
        row |= step_ms(members, args.k, args.steps)
        row["ratio"] = round(row["member_by_member_ms"] / row["batched_ms"], 3)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
