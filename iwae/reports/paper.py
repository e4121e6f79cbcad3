"""The paper's published numbers, in one place: Burda, Grosse & Salakhutdinov, "Importance
Weighted Autoencoders" (arXiv 1509.00519, ICLR 2016).

Copied from the project's reference notes (``iwae-paper.md``), which copy the paper. The report
shows them beside a sweep's own numbers only where the data is the paper's: the mnist and
omniglot datamodules with the paper's dynamic binarization, and Larochelle's fixed-binarized
MNIST (``binarized_mnist``) for the appendix's one-layer IWAE numbers. The 5,000 bundled digits
(``mnist_subset``) and Fashion-MNIST are not the paper's data: no numbers for them.
"""

from __future__ import annotations

# Table 1: test NLL in nats (k = 5000 estimate) and active units ("first + second layer").
# MNIST NLLs are checked against a second source; Omniglot's are unchecked except 103.38;
# the active-unit counts are unchecked (see iwae-paper.md).
# Key: (data, stochastic layers, objective, training k) -> (test NLL, active units).
_TABLE1 = {
    "mnist": {
        (1, 1): ((86.76, "19"), (86.76, "19")),  # (VAE, IWAE); k = 1: the same model
        (1, 5): ((86.47, "20"), (85.54, "22")),
        (1, 50): ((86.35, "20"), (84.78, "25")),
        (2, 1): ((85.33, "16+5"), (85.33, "16+5")),
        (2, 5): ((85.01, "17+5"), (83.89, "21+5")),
        (2, 50): ((84.78, "17+5"), (82.90, "26+7")),
    },
    "omniglot": {
        (1, 1): ((108.11, "28"), (108.11, "28")),
        (1, 5): ((107.62, "28"), (106.12, "34")),
        (1, 50): ((107.80, "28"), (104.67, "41")),
        (2, 1): ((107.58, "28+4"), (107.58, "28+4")),
        (2, 5): ((106.31, "30+5"), (104.79, "38+6")),
        (2, 50): ((106.30, "30+5"), (103.38, "44+7")),
    },
}

PAPER: dict[tuple[str, int, str, int], tuple[float, str]] = {
    (data, layers, objective, k): values[i]
    for data, cells in _TABLE1.items()
    for (layers, k), values in cells.items()
    for i, objective in enumerate(("vae", "iwae"))
}
# The paper's appendix, fixed-binarized MNIST, one stochastic layer, IWAE (no unit counts).
PAPER.update(
    {
        ("binarized_mnist", 1, "iwae", 1): (88.71, ""),
        ("binarized_mnist", 1, "iwae", 5): (87.63, ""),
        ("binarized_mnist", 1, "iwae", 50): (87.10, ""),
    }
)

# The binarization each of the paper's datasets used; None: the files carry their own.
PAPER_BINARIZATION = {"mnist": "dynamic", "omniglot": "dynamic", "binarized_mnist": None}


def is_paper_data(data: str, binarization: str | None) -> bool:
    """Whether a run's data is one of the paper's datasets, binarized as the paper did."""
    if data not in PAPER_BINARIZATION:
        return False
    wanted = PAPER_BINARIZATION[data]
    return wanted is None or binarization == wanted


def paper_value(
    data: str, binarization: str | None, layers: int, objective: str, k: int
) -> tuple[float, str] | None:
    """(published test NLL, active units) of a Table 1 cell, or None where the paper has none."""
    if not is_paper_data(data, binarization):
        return None
    return PAPER.get((data, layers, objective, k))


# Table 2 (sec. 5.2, one stochastic layer, MNIST; unchecked): a model trained for the 3,280
# epochs, then 2,187 more at lr 1e-4 with the other objective. Key: (trained as, continued as),
# each (objective, k) -> ((NLL before, active units), (NLL after, active units)).
PAPER_TABLE2: dict[tuple[tuple[str, int], tuple[str, int]], tuple[tuple[float, int], ...]] = {
    (("vae", 1), ("iwae", 50)): ((86.76, 19), (84.88, 22)),
    (("iwae", 50), ("vae", 1)): ((84.78, 25), (86.02, 23)),
}
