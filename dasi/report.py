"""``dasi logs report``: one self-contained HTML page about run folders, for a person to browse.

The page holds the runs (status, where, when), their curves (inline SVG, one chart per metric, the
runs of one stage overlaid), their summaries, the data stats (curate, tokenizer, mix, SFT data), the
evaluation table with peer models, and each run's environment. It loads nothing: no script, no
stylesheet, no font, no image from anywhere, so it opens offline and can be attached to an issue.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dasi.curves import finite, jsonl_records, with_token_rate

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# Metrics first in this order, the others after them alphabetically; never the bookkeeping ones.
FIRST = ("loss", "valid_loss", "lr", "grad_norm", "tokens_per_s_per_device", "tflops_per_device", "mfu",
         "train/loss", "heldout_loss/all", "heldout_loss/ko", "heldout_loss/en", "train/learning_rate",
         "train/grad_norm", "tokens_per_s")
NOT_CURVES = {"step", "time", "elapsed_s", "consumed_samples"}
MAX_POINTS = 1500  # per series: a long run's page stays small (evenly thinned, the last point kept)
DATA_FILES = (("curate", "curate.json"), ("tokenizer", "tokenizer.json"), ("pack mix", "mix.json"),
              ("SFT data", "sft_data.json"))
TASK_METRICS = ("acc", "pass@1", "exact_match", "acc_norm", "f1")  # the first a task has is shown
W, H, LEFT, RIGHT, TOP, BOTTOM = 520, 250, 62, 14, 12, 36

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;padding:0 16px;color:#222}
h1{font-size:24px}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:16px}table{border-collapse:collapse;margin:6px 0 14px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid #e4e4e4;padding:6px;width:520px}
figcaption{font-weight:600;margin-bottom:2px}.legend span{margin-right:12px;white-space:nowrap}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
.ok{color:#1a7f37}.bad{color:#cf222e}.peer td{background:#fafafa}.muted{color:#777}
details{margin:4px 0}summary{cursor:pointer}svg text{font:11px system-ui,sans-serif;fill:#444}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# -- one run -----------------------------------------------------------------------------------

class Run:
    """What the page shows of one run folder."""

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder)
        if not (self.dir / "run.json").is_file():
            raise ValueError(f"{folder}: not a run folder (no run.json); pass logs/<stage>/<run-id>")
        self.run = _json(self.dir / "run.json") or {}
        self.env = _json(self.dir / "env.json") or {}
        self.summary = _json(self.dir / "summary.json") or {}
        self.events = jsonl_records(self.dir / "events.jsonl")
        self.records = with_token_rate(jsonl_records(self.dir / "metrics.jsonl"))
        self.stage = self.run.get("stage") or self.dir.parent.name
        self.id = self.run.get("run_id") or self.dir.name

    def series(self, metric: str) -> list[tuple[float, float]]:
        """(step, value) of ``metric``, in the order logged."""
        return [(float(r["step"]), v) for r in self.records
                if isinstance(r.get("step"), int) and (v := finite(r.get(metric))) is not None]

    def metrics(self) -> set[str]:
        return {k for r in self.records if isinstance(r.get("step"), int)
                for k, v in r.items() if k not in NOT_CURVES and finite(v) is not None}


# -- charts ------------------------------------------------------------------------------------

def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round values covering [lo, hi], about ``n`` of them."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def _range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def chart(title: str, series: list[tuple[str, list[tuple[float, float]]]], x_label: str = "step") -> str:
    """An SVG line chart: one coloured line per (label, points); markers where points are few."""
    series = [(label, _thin(pts)) for label, pts in series if pts]
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    (x0, x1), (y0, y1) = _range(xs), _range(ys)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + (y1 - y) / (y1 - y0) * ph

    parts = [f'<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
             f'aria-label="{_esc(title)}">',
             f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#bbb"/>']
    for t in ticks(y0, y1):
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 5}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in ticks(x0, x1):
        parts.append(f'<text x="{px(t):.1f}" y="{TOP + ph + 15}" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{H - 4}" text-anchor="middle">{_esc(x_label)}</text>')
    for i, (label, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        d = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(pts))
        parts.append(f'<path class="series" data-points="{len(pts)}" d="{d}" fill="none" stroke="{color}" '
                     f'stroke-width="1.6"><title>{_esc(label)}</title></path>')
        if len(pts) <= 50:
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.6" fill="{color}">'
                      f'<title>{_esc(label)}: step {_fmt(x)}, {_fmt(y)}</title></circle>' for x, y in pts]
    parts.append("</svg>")
    legend = "".join(f'<span><i class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></i>'
                     f"{_esc(label)}</span>" for i, (label, _) in enumerate(series))
    return (f'<figure><figcaption>{_esc(title)}</figcaption>{"".join(parts)}'
            f'<div class="legend">{legend}</div></figure>')


def _ordered(metrics: set[str]) -> list[str]:
    return [m for m in FIRST if m in metrics] + sorted(metrics - set(FIRST))


# -- tables ------------------------------------------------------------------------------------

def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def value_html(value: Any) -> str:
    """Any JSON value as HTML: a dict of records as one table, a dict as key/value rows (nested
    values as nested tables), a list of scalars as a line."""
    if isinstance(value, dict) and value and all(isinstance(v, dict) and v and all(map(_scalar, v.values()))
                                                 for v in value.values()):
        return matrix(value)
    if isinstance(value, dict):
        if not value:
            return '<span class="muted">none</span>'
        rows = "".join(f"<tr><th>{_esc(k)}</th>{_cell(v)}</tr>" for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, list) and all(map(_scalar, value)):
        return _esc(", ".join(_fmt(v) for v in value)) or '<span class="muted">none</span>'
    if isinstance(value, list):
        return "<ol>" + "".join(f"<li>{value_html(v)}</li>" for v in value) + "</ol>"
    return _esc(_fmt(value))


def _cell(value: Any) -> str:
    cls = ' class="num"' if finite(value) is not None else ""
    return f"<td{cls}>{value_html(value)}</td>"


def matrix(rows: dict[str, dict[str, Any]], corner: str = "") -> str:
    """Rows by columns: the union of the rows' keys, in first-seen order."""
    cols = list(dict.fromkeys(k for r in rows.values() for k in r))
    head = f"<tr><th>{_esc(corner)}</th>" + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr>"
    body = "".join(f"<tr><th>{_esc(name)}</th>" + "".join(_cell(r.get(c)) for c in cols) + "</tr>"
                   for name, r in rows.items())
    return f"<table>{head}{body}</table>"


# -- sections ----------------------------------------------------------------------------------

def runs_section(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        status = r.run.get("status", "?")
        git = r.env.get("git") or {}
        commit = (git.get("commit") or git.get("error") or "?")[:12]
        events = Counter(e.get("event", "?") for e in r.events)
        started = (r.run.get("started") or "")[:19].replace("T", " ")
        cells = (r.stage, r.id, status, r.run.get("profile"), started,
                 _fmt(r.run.get("elapsed_s")), r.env.get("hostname", ""),
                 commit + (" (dirty)" if git.get("dirty") else ""), len(r.records),
                 ", ".join(f"{k} x{n}" if n > 1 else k for k, n in events.items()))
        css = ("", "", "ok" if status == "ok" else "bad", "", "", "num", "", "", "num", "")
        tds = "".join(f'<td class="{c}">{_esc(_fmt(v))}</td>' for c, v in zip(css, cells, strict=True))
        rows.append(f"<tr>{tds}</tr>")
    head = ("<tr><th>stage</th><th>run</th><th>status</th><th>profile</th><th>started (UTC)</th>"
            "<th>elapsed s</th><th>host</th><th>git commit</th><th>metric records</th><th>events</th></tr>")
    return f'<section id="runs"><h2>Runs</h2><table>{head}{"".join(rows)}</table></section>'


def _by_stage(runs: list[Run]) -> dict[str, list[Run]]:
    stages: dict[str, list[Run]] = {}
    for r in runs:
        stages.setdefault(r.stage, []).append(r)
    return stages


def curves_section(runs: list[Run]) -> str:
    out = ['<section id="curves"><h2>Curves</h2>']
    for stage, group in _by_stage(runs).items():
        metrics = set().union(*(r.metrics() for r in group))
        out.append(f"<h3>{_esc(stage)}</h3>")
        if not metrics:
            out.append('<p class="muted">These runs logged no metric per step.</p>')
            continue
        charts = [chart(m, [(r.id, r.series(m)) for r in group]) for m in _ordered(metrics)]
        out.append(f'<div class="charts">{"".join(charts)}</div>')
    out.append("</section>")
    return "".join(out)


def summaries_section(runs: list[Run]) -> str:
    out = ['<section id="summaries"><h2>Summaries</h2>']
    for stage, group in _by_stage(runs).items():
        keys = list(dict.fromkeys(k for r in group for k in r.summary))
        out.append(f"<h3>{_esc(stage)}</h3>")
        if not keys:
            out.append('<p class="muted">No summary.</p>')
            continue
        out.append(matrix({k: {r.id: r.summary.get(k) for r in group} for k in keys}, "summary"))
    out.append("</section>")
    return "".join(out)


def data_section(metrics_dir: Path | None) -> str:
    out = ['<section id="data"><h2>Data</h2>']
    found = [(title, data) for title, name in DATA_FILES
             if metrics_dir is not None and (data := _json(Path(metrics_dir) / name)) is not None]
    for title, data in found:
        out.append(f"<h3>{_esc(title)}</h3>{value_html(data)}")
    if not found:
        out.append(f'<p class="muted">No data stats in {_esc(metrics_dir)}.</p>')
    out.append("</section>")
    return "".join(out)


def _task_metric(tasks: list[dict[str, Any]]) -> str | None:
    for key in TASK_METRICS:
        if any(finite(t.get(key)) is not None for t in tasks):
            return key
    return next((k for t in tasks for k, v in t.items() if k != "n" and finite(v) is not None), None)


def _results(model: dict[str, Any], task: str) -> dict[str, Any]:
    res = (model.get("tasks") or {}).get(task)
    return res if isinstance(res, dict) else {}


def _source(model: dict[str, Any]) -> str:
    """A peer's folder or hub id (with its revision), or the path of one of ours."""
    src = model.get("source") or model.get("path") or ""
    return ", ".join(f"{k}: {v}" for k, v in src.items()) if isinstance(src, dict) else str(src)


def eval_table(evals: dict[str, Any]) -> str:
    """One row per model, ours first, then peers: each task's main metric (± stderr) and bits
    per byte of each held-out set. Files without ``role`` (older ones) are all ours."""
    models = evals.get("models") or {}
    order = sorted(models, key=lambda n: (models[n].get("role", "ours") != "ours", list(models).index(n)))
    tasks = list(dict.fromkeys(t for m in models.values() for t in (m.get("tasks") or {})))
    metric = {t: _task_metric([_results(m, t) for m in models.values()]) for t in tasks}
    sets = list(dict.fromkeys(s for m in models.values() for s in (m.get("bpb") or {})))
    head = ("<tr><th>model</th><th>role</th><th>source</th>"
            + "".join(f"<th>{_esc(t)}<br><span class='muted'>{_esc(_fmt(metric[t]))}</span></th>"
                      for t in tasks)
            + "".join(f"<th>bits/byte {_esc(s)}<br><span class='muted'>lower is better</span></th>"
                      for s in sets) + "</tr>")
    rows = []
    for name in order:
        m = models[name]
        role = m.get("role", "ours")
        cells = []
        for t in tasks:
            res = _results(m, t)
            value, err = finite(res.get(metric[t])), finite(res.get(f"{metric[t]}_stderr"))
            text = "" if value is None else f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else "")
            n = f' <span class="muted">(n={_esc(res["n"])})</span>' if "n" in res and text else ""
            cells.append(f'<td class="num">{_esc(text)}{n}</td>')
        bpb = [finite((m.get("bpb") or {}).get(s)) for s in sets]
        cells += [f'<td class="num">{"" if v is None else f"{v:.3f}"}</td>' for v in bpb]
        rows.append(f'<tr class="{_esc(role)}"><th>{_esc(name)}</th><td>{_esc(role)}</td>'
                    f'<td>{_esc(_source(m))}</td>{"".join(cells)}</tr>')
    return f'<table class="eval">{head}{"".join(rows)}</table>'


def eval_section(metrics_dir: Path | None) -> str:
    evals = _json(Path(metrics_dir) / "eval.json") if metrics_dir is not None else None
    if not isinstance(evals, dict) or not evals.get("models"):
        return (f'<section id="eval"><h2>Evaluation</h2><p class="muted">No eval.json in '
                f"{_esc(metrics_dir)}.</p></section>")
    return f'<section id="eval"><h2>Evaluation</h2>{eval_table(evals)}</section>'


def environment_section(runs: list[Run]) -> str:
    out = ['<section id="environment"><h2>Environment</h2>']
    for r in runs:
        e = r.env
        gpus = (e.get("accelerator") or {}).get("gpus") or []
        gpus = f"{len(gpus)} x {', '.join(dict.fromkeys(gpus))}" if gpus else ("no CUDA" if e else "")
        line = ", ".join(_fmt(x) for x in (e.get("hostname"), f"Python {e.get('python')}",
                                           f"torch {(e.get('packages') or {}).get('torch')}", gpus) if x)
        out.append(f"<details><summary>{_esc(r.stage)} {_esc(r.id)}: {_esc(line or 'no env.json')}</summary>"
                   f"{value_html(e)}</details>")
    out.append("</section>")
    return "".join(out)


def render(run_dirs: list[Path], metrics_dir: Path | None = Path("metrics")) -> str:
    """The whole page for ``run_dirs``; data stats and eval.json from ``metrics_dir`` if there."""
    runs = [Run(d) for d in run_dirs]
    if not runs:
        raise ValueError("no run folders given")
    title = "dasi run report: " + ", ".join(dict.fromkeys(r.stage for r in runs))
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("runs", "runs"), ("curves", "curves"), ("summaries", "summaries"), ("data", "data"),
        ("eval", "evaluation"), ("environment", "environment")))
    body = "".join((runs_section(runs), curves_section(runs), summaries_section(runs),
                    data_section(metrics_dir), eval_section(metrics_dir), environment_section(runs)))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>"
            f'<p class="muted">{len(runs)} runs, made {made} by <code>dasi logs report</code></p>'
            f"<nav>{nav}</nav>{body}</body></html>\n")


def write_report(run_dirs: list[Path], out: Path, metrics_dir: Path | None = Path("metrics")) -> Path:
    from dasi.atomic import atomic_path

    page = render(run_dirs, metrics_dir)
    with atomic_path(Path(out)) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(out)
