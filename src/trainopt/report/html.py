"""report.html: one self-contained page beside report.json — inline CSS and SVG charts, no script, no network.

Sections: the stage table (deltas against the baseline coloured: better green, worse red, slowdowns included),
accuracy-or-perplexity vs latency vs size across stages, training curves (loss and validation metric, learning
rate, throughput over time), training events (skipped non-finite steps, spikes, rollbacks), confusion matrices and
the data summary. Charts are drawn with matplotlib into inline SVG (text kept as text); without matplotlib the
page still renders, without charts.
"""

from __future__ import annotations

import html
import io
import math
from collections import defaultdict

from ..results import latency_key
from .rows import rows, timing_notes

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#1f2933;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e4e7eb;padding-bottom:4px}
.meta{color:#616e7c;margin-bottom:12px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #e4e7eb;padding:4px 8px;text-align:right;white-space:nowrap}th{background:#f5f7fa}
td:first-child,th:first-child{text-align:left}.better{color:#0b7a3e;font-weight:600}.worse{color:#c81e1e;font-weight:600}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#e4e7eb}
.baseline{background:#d9e2ec}.accelerated{background:#c6f7d0}.smaller{background:#d3f0fb}.masked{background:#fff3c4}
.unchanged{background:#eceff1}.charts{display:flex;flex-wrap:wrap;gap:12px}.chart svg{max-width:100%;height:auto}
.note{color:#616e7c;font-size:12px}.scroll{overflow-x:auto}
"""

# report-table column → (vs_baseline key, "higher" or "lower" is better)
_COMPARED = {"accuracy": ("quality_delta", "higher"), "perplexity": ("quality_delta", "lower"),
             "disk MB": ("size_ratio", "lower"), "generate tok/s b1": ("speedup_generate_b1", "higher")}


def page(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections if content)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><div class='meta'>{subtitle}</div>{body}</body></html>\n")


def table(head: list[str], body: list[list[str]], classes: list[list[str]] | None = None, raw: bool = False) -> str:
    esc = (lambda x: x) if raw else html.escape
    out = ["<div class='scroll'><table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in head],
           "</tr></thead><tbody>"]
    for i, row in enumerate(body):
        out.append("<tr>")
        for j, cell in enumerate(row):
            cls = classes[i][j] if classes else ""
            out.append(f"<td class='{cls}'>{esc(cell)}</td>" if cls else f"<td>{esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return f"<div class='chart'>{text[text.index('<svg'):]}</div>"


# ----------------------------------------------------------------------------------------------- the run
def stage_table(report: dict) -> str:
    head, body = rows(report)
    classes = []
    for s in report["stages"]:
        vs, cls = s.get("vs_baseline") or {}, []
        for h in head:
            key = _COMPARED.get(h)
            if h.startswith("b") and h.endswith(" p50 ms"):
                key = (f"speedup_{h.split()[0]}", "higher")
            value = vs.get(key[0]) if key else None
            neutral = 0.0 if key and key[0] == "quality_delta" else 1.0
            if value is None or s["effect"] == "baseline" or abs(value - neutral) < 1e-9:
                cls.append("")
            else:
                good = (value > neutral) == (key[1] == "higher")
                cls.append("better" if good else "worse")
        classes.append(cls)
    classes += [[""] * len(head)] * (len(body) - len(classes))  # the classical row: no colours
    effect_col = head.index("effect")
    for row in body:
        row[effect_col] = f"<span class='badge {html.escape(row[effect_col])}'>{html.escape(row[effect_col])}</span>"
    body = [[c if j == effect_col else html.escape(c) for j, c in enumerate(r)] for r in body]
    return table(head, body, classes, raw=True) + (
        "<p class='note'>Against the baseline stage: quality delta in the metric's units, latency speedup (above 1 is "
        "faster), disk-size ratio (below 1 is smaller); green is better, red is worse. Effects: masked = zeros only, "
        "smaller = the tensors shrank, accelerated = a faster kernel runs (measured; the ratio's 95% interval clears "
        "1.10x). ⚠ marks speed figures measured on a busy machine or with a wide spread.</p>"
        + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in timing_notes(report)))


def tradeoff_chart(report: dict, plt) -> str:
    """Quality vs latency at the largest measured batch, marker area ∝ disk size: one point per stage."""
    task = report["recipe"]["task"]
    metric = "accuracy" if task == "classification" else "perplexity"
    b = max(report["recipe"]["measure"]["batch_sizes"])
    pts = [(s["name"], s["speed"].get(latency_key(b)), s["quality"].get(metric), s["size"]["disk_bytes"])
           for s in report["stages"]]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return ""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    biggest = max(p[3] for p in pts)
    for i, (name, lat, q, size) in enumerate(pts):
        ax.scatter([lat], [q], s=60 + 900 * size / biggest, alpha=0.55)
        ax.annotate(f"{name} ({size / 1e6:.1f} MB)", (lat, q), textcoords="offset points",
                    xytext=(8, 8 if i % 2 == 0 else -14))
    ax.set_xlabel(f"latency at batch {b}, p50 (ms) — lower is faster")
    ax.set_ylabel(f"test {metric}" + (" — lower is better" if metric == "perplexity" else ""))
    ax.set_title("quality vs latency vs size (marker area ∝ bytes on disk)")
    ax.grid(alpha=0.3)
    return svg(fig)


def curve_charts(metrics: list[dict], plt) -> str:
    by_stage: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in metrics:
        st = by_stage[r.get("stage", "?")]
        for k in ("loss", "lr", "tokens_per_s"):
            if isinstance(r.get(k), (int, float)) and math.isfinite(r[k]):
                st[k].append((r["step"], r[k]))
        for k, v in r.items():
            if k.startswith("val_") and k not in ("val_examples",) and isinstance(v, (int, float)):
                st[k].append((r["step"], v))
        if r.get("time") and "tokens_per_s" in r:
            st["_time"].append((r["time"], r["tokens_per_s"]))
    stages = [s for s, v in by_stage.items() if v.get("loss")]
    if not stages:
        return ""
    out = []
    fig, axes = plt.subplots(1, len(stages), figsize=(min(4.6 * len(stages), 13.5), 3.3), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], stages):
        st = by_stage[name]
        ax.plot(*zip(*st["loss"]), ".-", ms=3, label="train loss", color="#1f77b4")
        ax.set_title(f"{name}: loss")
        ax.set_xlabel("step")
        val = next((k for k in ("val_accuracy", "val_perplexity", "val_loss") if st.get(k)), None)
        if val:
            ax2 = ax.twinx()
            ax2.plot(*zip(*st[val]), "o-", ms=3, color="#d9480f", label=val.replace("_", " "))
            ax2.set_ylabel(val.replace("_", " "), color="#d9480f")
            ax2.spines["top"].set_visible(False)
        ax.set_ylabel("train loss", color="#1f77b4")
        ax.grid(alpha=0.3)
    out.append(svg(fig))
    fig, (ax_lr, ax_tp) = plt.subplots(1, 2, figsize=(11, 3.0), layout="constrained")
    for name in stages:
        st = by_stage[name]
        if st.get("lr"):
            ax_lr.plot(*zip(*st["lr"]), ".-", ms=2, label=name)
        if st.get("_time"):
            t0 = st["_time"][0][0]
            ax_tp.plot([t - t0 for t, _ in st["_time"]], [v for _, v in st["_time"]], ".-", ms=2, label=name)
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("step")
    ax_tp.set_title("training throughput")
    ax_tp.set_xlabel("seconds into the stage")
    ax_tp.set_ylabel("tokens/s")
    for ax in (ax_lr, ax_tp):
        ax.grid(alpha=0.3)
        if len(stages) > 1:
            ax.legend(fontsize=8)
    out.append(svg(fig))
    return "<div class='charts'>" + "".join(out) + "</div>"


def events_table(metrics: list[dict]) -> str:
    rows = [r for r in metrics if r.get("event")]
    if not rows:
        return ""
    keys = sorted({k for r in rows for k in r} - {"time", "stage", "step", "event"})
    body = [[str(r.get("stage")), str(r.get("step")), str(r.get("event")), *[_cell(r.get(k)) for k in keys]]
            for r in rows]
    return table(["stage", "step", "event", *keys], body)


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def confusion(stage: dict) -> str:
    q = stage["quality"]
    cm = q.get("confusion_matrix")
    if not cm:
        return ""
    labels = q.get("labels") or [str(i) for i in range(len(cm))]
    peak = max(max(r) for r in cm) or 1
    cells = ["<table><thead><tr><th>true \\ predicted</th>", *[f"<th>{html.escape(x)}</th>" for x in labels],
             "</tr></thead><tbody>"]
    for i, r in enumerate(cm):
        cells.append(f"<tr><th>{html.escape(labels[i])}</th>")
        for v in r:
            alpha = 0.08 + 0.6 * v / peak
            cells.append(f"<td style='background:rgba(31,119,180,{alpha:.2f})'>{v}</td>")
        cells.append("</tr>")
    cells.append("</tbody></table>")
    return f"<div><b>{html.escape(stage['name'])}</b>" + "".join(cells) + "</div>"


def to_html(report: dict, metrics: list[dict]) -> str:
    plt = _plt()
    hw = report["hardware"]
    subtitle = html.escape(f"{hw.get('name')} ({hw['device']}, {hw['threads']} threads), torch {hw['torch']}; "
                           f"total wall time {report.get('total_wall_s', 0):.1f} s; trainopt "
                           f"{report.get('trainopt_version')}")
    charts_missing = "" if plt else "<p class='note'>matplotlib is not installed: charts omitted.</p>"
    data = report.get("data", {})
    data_rows = [["source", str(data.get("source"))], ["rows", str(data.get("rows"))],
                 ["cleaning", str(data.get("cleaning") or "nothing changed")]]
    if data.get("label_counts"):
        data_rows.append(["labels per split", str(data["label_counts"])])
    for a in report.get("augmentation") or []:
        data_rows.append([f"augmentation {a['name']}", f"{a['originals']} → {a['train_rows']} training examples "
                          f"({a['per_operation']})"])
    sections = [
        ("Stages side by side", stage_table(report)),
        ("Quality, latency and size", (tradeoff_chart(report, plt) if plt else "") or charts_missing),
        ("Training curves", (curve_charts(metrics, plt) if plt else "") or charts_missing),
        ("Training events (non-finite steps, spikes, rollbacks)", events_table(metrics)),
        ("Confusion matrices (test split)",
         "<div class='charts'>" + "".join(confusion(s) for s in report["stages"]) + "</div>"
         if any(s["quality"].get("confusion_matrix") for s in report["stages"]) else ""),
        ("Data", table(["", ""], data_rows)),
    ]
    return page(f"trainopt report: {report['recipe']['name']}", subtitle, sections)
