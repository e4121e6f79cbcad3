"""``report.html``: a sweep's Table 1 and figures in one self-contained page.

Every image is embedded as a base64 ``data:`` URI and the page loads nothing else (no scripts,
no fonts, no style sheets from elsewhere), so the file can be mailed, archived or opened on a
machine with no network and no copy of the sweep.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path

from iwae.reports import paper
from iwae.training.outputs import write_text_atomic

FIGURES = {  # report order, with what each figure shows
    "nll_vs_k": "Test NLL against the training k (bars: 1 standard error; grey: the paper)",
    "learning_curves": "Validation bound during training",
    "bound_vs_k": "Test L_k against the evaluation k, one model (bars: 2 standard errors)",
    "unit_variances": "Variance of each latent unit's posterior mean (active units)",
    "samples_reconstructions": "Data, reconstructions and samples of the best models",
}
STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #999; padding: 3px 8px; text-align: right; }
th { background: #eee; }
img { max-width: 100%; border: 1px solid #ddd; }
.missing { color: #a00; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
"""


def data_uri(path: str | Path) -> str:
    """The PNG at ``path`` as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(markdown: str) -> str:
    """``table1.md`` as HTML: its paragraphs, **bold** section headings and pipe tables (the
    only markdown `iwae.reports.table1.table1_markdown` writes), so the page shows the same
    table as the file."""
    out: list[str] = []
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            continue
        if line.startswith("| "):
            tag = "th" if i + 1 < len(lines) and lines[i + 1].startswith("|---") else "td"
            if tag == "th":
                out.append("<table>")
            out.append(
                "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in _cells(line)) + "</tr>"
            )
            if i + 1 == len(lines) or not lines[i + 1].startswith("|"):
                out.append("</table>")
        elif line.startswith("**"):
            name, _, rest = line[2:].partition("**")
            out.append(f"<h3>{html.escape(name)}{html.escape(rest)}</h3>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out)


def _figure(src: str, caption: str) -> str:
    return (
        f'<figure><img src="{src}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_report(
    root: Path,
    table_markdown: str,
    figure_paths: Mapping[str, Path],
    missing: Mapping[str, str],
    samples: Mapping[str, Path],
) -> Path:
    """Write ``root / "report.html"``: the table, each figure of `FIGURES` (or why it is
    missing), and the runs' ``samples.png`` grids, titled by their labels."""
    parts = [
        f"<h1>IWAE sweep report: {html.escape(root.name)}</h1>",
        f"<p>From <code>{html.escape(str(root))}</code>; the paper's numbers (Burda et al. "
        f"2016, Table 1 and appendix) appear only for its datasets: "
        f"{html.escape(', '.join(sorted(paper.PAPER_BINARIZATION)))}.</p>",
        "<h2>Table 1</h2>",
        markdown_to_html(table_markdown),
    ]
    for name, title in FIGURES.items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if name in figure_paths:
            parts.append(_figure(data_uri(figure_paths[name]), f"{name}.png"))
        else:
            why = missing.get(name, "not drawn")
            parts.append(f'<p class="missing">{html.escape(f"{name}.png: {why}")}</p>')
    if samples:
        parts.append("<h2>Samples of each run (samples.png)</h2>")
        parts += [_figure(data_uri(path), label) for label, path in samples.items()]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>IWAE report: {html.escape(root.name)}</title><style>{STYLE}</style></head>"
        "<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = root / "report.html"
    write_text_atomic(path, page)  # a link named report.html is replaced, not followed
    return path
