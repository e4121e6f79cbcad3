"""In-memory DataModule with fixed or per-minibatch (dynamic) binarization.

The whole dataset lives as one tensor on the training device and minibatches are drawn by
index: at batch size 20 a per-example ``Dataset.__getitem__`` + collate path costs more than
the model's arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor

from iwae.errors import UserError, check_positive_int

BINARIZATIONS = ("dynamic", "fixed")


@dataclass
class DataSplits:
    """Pixel values in [0, 1], one row an image (``[N, D]``).

    ``prebinarized`` marks files that hold a binarization of their own (Larochelle's MNIST):
    they are used as they are, whatever ``binarization`` says.
    """

    train: Tensor
    val: Tensor
    test: Tensor
    image_shape: tuple[int, ...]
    prebinarized: bool = False


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch): epochs replay exactly on resume."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def binarize_once(probs: Tensor, seed: int) -> Tensor:
    """One fixed Bernoulli sample, drawn on the CPU so it is the same on every device."""
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(probs.float().cpu(), generator=g)


class MinibatchIterable:
    """Minibatches by index from a device-resident ``[N, D]`` tensor.

    With ``dynamic=True`` each minibatch is a fresh Bernoulli sample of the stored
    probabilities. Order and binarization of epoch ``e`` come from ``epoch_generator(seed, e)``,
    so ``state_dict()`` (epoch, batches done) is enough to resume mid-epoch exactly.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        shuffle: bool,
        dynamic: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data, self.batch_size, self.shuffle, self.dynamic = data, batch_size, shuffle, dynamic
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0  # the epoch the current iteration draws
        self.batches_done = 0  # batches already yielded in that epoch
        self._started = False
        self._restored = False

    def _rows(self) -> int:
        return math.ceil(len(self.data) / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self._rows() / self.batch_size)

    def _begin_epoch(self) -> int:
        """Advance to the epoch this iteration draws; return how many batches to skip.

        Every new iteration is a new epoch (Lightning stops after ``len(self)`` batches without
        exhausting the iterator, so the end of a generator can't mark the end of an epoch),
        except the first after `load_state_dict`, which continues the checkpoint's epoch.
        """
        if self._restored:
            self._restored = False
            if self.batches_done >= len(self):
                self.epoch, self.batches_done = self.epoch + 1, 0
        elif self._started:
            self.epoch, self.batches_done = self.epoch + 1, 0
        self._started = True
        return self.batches_done

    def __iter__(self):
        skip = self._begin_epoch()
        g = epoch_generator(self.seed, self.epoch, self.data.device)
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=g, device=self.data.device)
        else:
            order = torch.arange(n, device=self.data.device)
        # DDP: every rank draws the same permutation and keeps its own slice of it. The
        # permutation is padded with its first rows, as DistributedSampler does, so that every
        # rank gets len(self) batches: a rank with one batch more waits forever in an all-reduce.
        pad = self._rows() * self.world_size - n
        order = torch.cat([order, order[:pad]]) if pad else order
        order = order[self.rank :: self.world_size]
        for i, start in enumerate(range(0, len(order), self.batch_size)):
            x = self.data[order[start : start + self.batch_size]]
            if self.dynamic:  # drawn even for skipped batches: the generator must replay exactly
                x = torch.bernoulli(x, generator=g)
            if i < skip:
                continue
            self.batches_done = i + 1
            yield x

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        self._started = self._restored = True


class MinibatchGroups:
    """``size`` consecutive minibatches of a `MinibatchIterable` per item, as a list: what a
    training step that takes several optimizer steps consumes (``steps_per_batch``).

    The minibatches, their order and their binarization are the inner iterable's, so a run's
    data do not depend on the grouping, and the state to resume from is the inner one's
    (epoch, minibatches done). An epoch's last item holds the minibatches that are left.
    """

    def __init__(self, inner: MinibatchIterable, size: int) -> None:
        self.inner, self.size = inner, size

    def __len__(self) -> int:
        return math.ceil(len(self.inner) / self.size)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps (minibatches) in an epoch."""
        return len(self.inner)

    def __iter__(self):
        group: list[Tensor] = []
        for x in self.inner:  # one iteration of the inner iterable per epoch, as without groups
            group.append(x)
            if len(group) == self.size:
                yield group
                group = []
        if group:
            yield group


class BinarizedDataModule(pl.LightningDataModule):
    """Base class: subclasses implement `load_splits`; this class validates, binarizes and
    serves the data.

    Args:
        root: directory searched for the dataset's files.
        batch_size: training minibatch size (the paper: 20).
        binarization: ``dynamic`` (fresh sample every minibatch) or ``fixed`` (one sample).
        seed: seeds training order, dynamic binarization and the fixed training binarization.
        eval_seed: seeds the one fixed binarization of validation and test data, independent of
            ``seed`` so that every run is evaluated on the same binary images.
        eval_batch_size: images per evaluation batch.
        resample_eval: the paper's alternative: re-sample val/test binarization at every pass.

    ``steps_per_batch`` (set by the training run from the top-level key of that name): the
    training loader yields lists of that many minibatches (`MinibatchGroups`), one Lightning
    batch for several optimizer steps.
    """

    name = "data"
    steps_per_batch = 1

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 20,
        binarization: str = "dynamic",
        seed: int = 0,
        eval_seed: int = 12345,
        eval_batch_size: int = 500,
        resample_eval: bool = False,
    ) -> None:
        super().__init__()
        if binarization not in BINARIZATIONS:
            raise UserError(
                f"unknown data.binarization {binarization!r}; choose one of: "
                + ", ".join(BINARIZATIONS)
            )
        self.root = root
        self.batch_size = check_positive_int("data.batch_size", batch_size)
        self.eval_batch_size = check_positive_int("data.eval_batch_size", eval_batch_size)
        self.binarization, self.seed, self.eval_seed = binarization, seed, eval_seed
        self.resample_eval = resample_eval
        self.splits: DataSplits | None = None
        self._train: MinibatchIterable | None = None
        self._pending_state: dict | None = None

    # --- subclasses -------------------------------------------------------------------------
    def load_splits(self) -> DataSplits:
        """Return the dataset's three splits as float tensors of values in [0, 1]."""
        raise NotImplementedError

    # --- loading ----------------------------------------------------------------------------
    def prepare(self) -> DataSplits:
        """Load, validate and binarize once (on the CPU); later calls return the cached splits."""
        if self.splits is None:
            splits = self.load_splits()
            validate_splits(splits, self.name)
            if not splits.prebinarized:
                if self.binarization == "fixed":
                    splits.train = binarize_once(splits.train, self.seed)
                if not self.resample_eval:
                    splits.val = binarize_once(splits.val, self.eval_seed)
                    splits.test = binarize_once(splits.test, self.eval_seed + 1)
            self.splits = splits
        return self.splits

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.prepare().image_shape

    @property
    def input_dim(self) -> int:
        return math.prod(self.image_shape)

    def train_pixel_mean(self) -> Tensor:
        """Mean of each training pixel (``[D]``), for the output bias initialisation."""
        return self.prepare().train.float().mean(0)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        splits = self.prepare()
        device = self._device()
        self.train_x, self.val_x, self.test_x = (
            t.to(device, torch.float32) for t in (splits.train, splits.val, splits.test)
        )

    # --- loaders ----------------------------------------------------------------------------
    @property
    def dynamic(self) -> bool:
        return self.binarization == "dynamic" and not self.prepare().prebinarized

    def train_dataloader(self) -> MinibatchIterable | MinibatchGroups:
        if self._train is None:
            trainer = getattr(self, "trainer", None)
            rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
            self._train = MinibatchIterable(
                self.train_x, self.batch_size, True, self.dynamic, self.seed, rank, world
            )
            if self._pending_state is not None:
                self._train.load_state_dict(self._pending_state)
        if self.steps_per_batch > 1:
            return MinibatchGroups(self._train, self.steps_per_batch)
        return self._train

    def _eval_loader(self, x: Tensor, seed: int) -> MinibatchIterable:
        resample = self.resample_eval and not self.prepare().prebinarized
        return MinibatchIterable(x, self.eval_batch_size, False, resample, seed)

    def val_dataloader(self) -> MinibatchIterable:
        return self._eval_loader(self.val_x, self.eval_seed)

    def test_dataloader(self) -> MinibatchIterable:
        return self._eval_loader(self.test_x, self.eval_seed + 1)

    def state_dict(self) -> dict:
        return {"train": self._train.state_dict()} if self._train is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "train" in state:
            self._pending_state = state["train"]
            if self._train is not None:
                self._train.load_state_dict(state["train"])


def validate_splits(splits: DataSplits, name: str) -> None:
    """Stop with one line naming the dataset and split if a split is unusable."""
    dim = math.prod(splits.image_shape)
    for split in ("train", "val", "test"):
        x = getattr(splits, split)
        if x.ndim != 2 or x.shape[1] != dim:
            raise UserError(
                f"{name}: {split} split has shape {tuple(x.shape)}, expected [N, {dim}] "
                f"for images of shape {tuple(splits.image_shape)}"
            )
        if x.shape[0] == 0:
            raise UserError(f"{name}: the {split} split is empty; check the split sizes")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise UserError(
                f"{name}: {split} split has values outside [0, 1]; scale pixels to [0, 1]"
            )


def split_rows(x: Tensor, sizes: list[int] | tuple[int, ...], seed: int, name: str) -> list[Tensor]:
    """Shuffle rows with a fixed seed and cut them into consecutive splits of ``sizes``."""
    if any(s < 1 for s in sizes):
        raise UserError(f"{name}: split sizes must be positive, got {list(sizes)}")
    if sum(sizes) > len(x):
        raise UserError(
            f"{name}: split sizes {list(sizes)} need {sum(sizes)} images but the data has "
            f"{len(x)}; lower data.split"
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for s in sizes:
        out.append(x[order[start : start + s]])
        start += s
    return out
