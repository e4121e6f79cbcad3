"""The manual cannot drift from the code: every ``python train.py`` command in README.md and
docs/*.md passes the project's own pre-check, and the quick start row in the README is the one
recorded in docs/reproduction.md.

How a command is read from the manual:

- Every line inside a fenced (```) block of README.md or docs/*.md that contains
  ``python train.py`` is a command (``.venv/bin/python train.py`` too); lines ending in ``\\``
  are joined with the next. A ``$`` prompt and anything before ``train.py`` (``OMP_NUM_THREADS=1``)
  are dropped; the command ends at a ``#`` comment, ``;``, ``&&``, ``|`` or a redirection.
- Placeholders are written in angle brackets: ``<run>``, ``<date>/<time>``, ``<ckpt>``. Inside a
  word they are replaced by ``placeholder``: they stand for paths (run directories, checkpoints),
  which the pre-check does not open. A word that is only a placeholder (``<same overrides>``) or
  ``...`` stands for "your other overrides" and is left out.
- A command followed in its block by a line starting with ``error:`` shows a refusal: the
  checks must refuse it with exactly that line. Every other command must pass.

What is checked, without training and without reading any data: the group options and keys
(``check_overrides`` and ``check_override_keys``, the pre-check ``train.py`` runs before
Hydra), then the composed config's values as a run checks them before it builds anything:
the top-level keys, ``eval.*``, the optimizer, ``steps_per_batch``, and every group's keys
against its class's constructor. Not checked: data files and other paths, memory and the
accelerator, which are properties of the machine the command runs on, not of the line.
"""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from iwae.errors import UserError
from iwae.launch import cli, config_check

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
COMMAND = re.compile(r"python3? train\.py(?=\s|$)")
ENDS = {";", "&&", "||", "|", "&"}


def commands(text: str, name: str) -> list[tuple[str, list[str], str | None]]:
    """``(where, argv, expected error)`` for every ``python train.py`` line in ``text``'s
    fenced blocks; ``where`` is ``name:line``."""
    found: list[tuple[str, list[str], str | None]] = []
    lines = text.splitlines()
    in_block, i = False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_block = not in_block
            i += 1
            continue
        start = i
        if in_block and COMMAND.search(line):
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            following = lines[i + 1] if i + 1 < len(lines) else ""
            expected = following.strip() if following.startswith("error:") else None
            found.append((f"{name}:{start + 1}", arguments(line), expected))
        i += 1
    return found


def arguments(line: str) -> list[str]:
    """The words after ``train.py``, placeholders substituted as the module docstring says."""
    rest = COMMAND.split(line, maxsplit=1)[1]
    rest = re.sub(r"(?:(?<=\s)|^)<[^<>\n]+>(?=\s|$)", " ", rest)  # a whole-word placeholder
    rest = PLACEHOLDER.sub("placeholder", rest)
    argv: list[str] = []
    for word in shlex.split(rest, comments=True):
        if word in ENDS or word.startswith((">", "<", "2>")):
            break
        if word != "...":
            argv.append(word)
    return argv


@cache
def _options():
    return cli._option_lister(CONF_DIR)  # every group's options, listed once for all commands


def check(argv: list[str]) -> str | None:
    """The line ``train.py`` would print for ``argv`` before training (without ``error: ``),
    or None if it would start."""
    if cli.hydra_overrides(argv) is None:
        return None  # --help, shell completion: no job runs
    # hydra.searchpath adds options of the user's own folders: listed for that command alone
    searched = any(a.lstrip("+").startswith("hydra.searchpath=") for a in argv)
    options = None if searched else _options()
    message = cli.check_overrides(argv, CONF_DIR, options) or config_check.check_override_keys(
        argv, CONF_DIR
    )
    if message:
        return message
    overrides = config_check._first_choices(config_check._overrides(argv))
    assert not isinstance(overrides, str), overrides  # check_override_keys reports those
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    try:
        check_values(cfg)
    except UserError as err:
        return str(err)
    return None


def check_values(cfg) -> None:
    """`config_check.check_run_values` up to where it builds the data: the checks that depend
    on the line alone."""
    mode = str(cfg.get("mode", "train"))
    config_check.check_top_level(cfg)
    config_check.check_eval_values(cfg.eval, mode=mode)
    if mode == "eval":
        return  # the model, data and optimizer come from the checkpoint
    config_check.check_optimizer(cfg.optimizer)
    max_epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if max_epochs is not None:
        config_check.check_positive_int("trainer.max_epochs", max_epochs)
    for group in ("model", "objective", "data", "schedule", "optimizer"):
        config_check.check_arguments(group, cfg[group])
    config_check.check_steps_per_batch(cfg)


@pytest.fixture(autouse=True)
def _any_machine(monkeypatch):
    """``trainer.accelerator=gpu`` is right in the manual whether or not this machine has one,
    and ``ckpt_path=<run>/...`` or ``data.path=my_images.npz`` whether or not the file exists:
    the pre-check's path checks (``iwae.launch.path_checks``) are left out here."""
    from iwae.launch import path_checks

    monkeypatch.setattr(config_check, "check_accelerator", lambda accelerator: None)
    monkeypatch.setattr(path_checks, "check_config_paths", lambda cfg: None)


MANUAL = [c for page in PAGES for c in commands(page.read_text(), page.relative_to(ROOT).name)]
# ``PYTHONPATH=examples/tempered_bound python train.py ...``: the folders the manual's commands
# put on the path, so that the pre-check can import a plug-in's class to check its arguments.
PLUGIN_DIRS = sorted(
    {
        folder
        for page in PAGES
        for found in re.findall(r"PYTHONPATH=(\S+)(?:\s|$)", page.read_text())
        for folder in found.split(":")
        if folder and not folder.startswith("$")
    }
)


@pytest.fixture(autouse=True)
def _plugins_importable(monkeypatch):
    monkeypatch.chdir(ROOT)  # the manual's relative paths (file://examples/...) start there
    for folder in PLUGIN_DIRS:
        monkeypatch.syspath_prepend(str(ROOT / folder))


def test_the_manual_has_commands():
    assert len(MANUAL) >= 20, [where for where, _, _ in MANUAL]
    assert any(expected for _, _, expected in MANUAL), "no refusal shown in the manual"


@pytest.mark.parametrize("where, argv, expected", MANUAL, ids=[c[0] for c in MANUAL])
def test_manual_command(where, argv, expected):
    message = check(argv)
    if expected is None:
        assert message is None, f"{where}: python train.py {shlex.join(argv)}\n  error: {message}"
    else:
        assert f"error: {message}" == expected, f"{where}: the manual shows another line"


FAKE_README = """\
Some text.

```bash
python train.py objective=iwae k=5 \\
    {override}        # a comment
```
"""


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.batch_sise=3", "unknown config key 'data.batch_sise'"),  # a misspelled key
        ("objective.kk=5", "unknown config key 'objective.kk'"),
        ("objective=iwea", "unknown objective 'iwea'"),  # an option that does not exist
        ("k=0", "k must be an integer >= 1"),  # a bad value
        ("eval.bound_ks=[0,5]", "eval.bound_ks"),
        ("experiment=table2_small schedule=constant", "is not a setting of"),  # a preset clash
    ],
)
def test_a_wrong_line_in_the_manual_is_caught(override, words):
    [(where, argv, expected)] = commands(FAKE_README.format(override=override), "FAKE.md")
    assert where == "FAKE.md:4" and expected is None
    assert argv[:2] == ["objective=iwae", "k=5"] and "#" not in " ".join(argv)
    message = check(argv)
    assert message is not None and words in message


def test_placeholders_and_refusals_are_read_as_documented():
    text = (
        "```\n$ OMP_NUM_THREADS=1 python train.py <same overrides> resume=true "
        "hydra.run.dir=outputs/<date>/<time> ... > log.txt\nerror: something\n```\n"
        "python train.py k=abc   (outside a block: not a command)\n"
    )
    [(_, argv, expected)] = commands(text, "FAKE.md")
    assert argv == ["resume=true", "hydra.run.dir=outputs/placeholder/placeholder"]
    assert expected == "error: something"
    assert check(argv) is None


def table_row(text: str, section: str) -> dict[str, str]:
    """The one data row of the first table in ``## <section>``, keyed by its header."""
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    header, rule, *data = rows
    assert set(rule) <= set("|-: ") and len(data) == 1, f"{section}: one measured row expected"
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in (header, data[0])]
    return dict(zip(*cells, strict=True))


def test_quick_start_row_is_the_recorded_one():
    readme = table_row((ROOT / "README.md").read_text(), "Quick start")
    record = table_row((ROOT / "docs" / "reproduction.md").read_text(), "Quick start")
    assert readme == record
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", readme["date"])
    assert re.fullmatch(r"`[0-9a-f]{7,40}`", readme["commit"])
    assert re.fullmatch(r"\d+\.\d+ ± \d+\.\d+", readme["test NLL (k=5000)"])


def test_readme_stays_a_manual():
    readme = (ROOT / "README.md").read_bytes()
    assert readme.count(b"\n") <= 400 and len(readme) <= 32 * 1024
