"""Learning-rate schedules as functions of the epoch (multipliers of the base learning rate)."""

from __future__ import annotations

from iwae.errors import UserError, check_number, check_positive_int

PAPER_STAGES = 8


class ConstantSchedule:
    """The base learning rate for ``epochs`` epochs."""

    def __init__(self, epochs: int) -> None:
        self.epochs = check_positive_int("schedule.epochs", epochs)

    def lr_factor(self, epoch: int) -> float:
        return 1.0


class PaperSchedule:
    """Burda et al. 2015, sec. 5: for i = 0..stages-1, 3^i epochs at lr * 10^(-i/7).

    ``stages=8`` is the paper's 3,280 epochs; fewer stages run its first part. ``epoch_scale``
    multiplies every stage's length (e.g. 0.1 for a quick look; each stage keeps >= 1 epoch).
    ``epochs`` stops after that many epochs of the schedule (null: all of it), which is what
    ``schedule.epochs`` of a preset such as ``experiment=quickstart`` means with ``schedule=paper``.
    """

    def __init__(
        self, stages: int = 8, epoch_scale: float = 1.0, epochs: int | None = None
    ) -> None:
        self.stages = check_positive_int("schedule.stages", stages)
        if self.stages > PAPER_STAGES:  # 3^(stages-1) epochs in the last stage alone
            raise UserError(
                f"schedule.stages must be at most {PAPER_STAGES} (the paper's 3,280 epochs), got "
                f"{stages}; for longer stages raise schedule.epoch_scale"
            )
        check_number("schedule.epoch_scale", epoch_scale)
        if epoch_scale <= 0:
            raise UserError(f"schedule.epoch_scale must be > 0, got {epoch_scale}")
        self.stage_epochs = [max(1, round(3**i * epoch_scale)) for i in range(self.stages)]
        self.epochs = sum(self.stage_epochs)
        if epochs is not None:
            self.epochs = min(self.epochs, check_positive_int("schedule.epochs", epochs))

    def stage(self, epoch: int) -> int:
        end = 0
        for i, n in enumerate(self.stage_epochs):
            end += n
            if epoch < end:
                return i
        return self.stages - 1

    def lr_factor(self, epoch: int) -> float:
        return 10.0 ** (-self.stage(epoch) / 7)
