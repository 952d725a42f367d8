"""The report: report.json (the contract in DESIGN.md) and report.md (one row per stage, deltas vs baseline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.table import Table

from ..compress.prune.summary import describe
from ..export.summary import describe as describe_export
from ..data.dedup import describe as describe_data
from .html import to_html
from .rows import classical_lines, quality_flags, rows, timing_notes



def write_report(run_dir: Path, report: dict) -> None:
    """report.json (the contract), report.md and report.html (self-contained: charts inline), each atomically."""
    from ..train.monitor import read_metrics

    run_dir = Path(run_dir)
    for name, text in (("report.json", json.dumps(report, indent=1)), ("report.md", to_markdown(report)),
                       ("report.html", to_html(report, read_metrics(run_dir)))):
        tmp = run_dir / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, run_dir / name)


def load_report(run_dir: Path) -> dict:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        from ..errors import TrainoptError

        raise TrainoptError(f"{run_dir} has no report.json (is it a trainopt run directory that finished?)")
    return json.loads(path.read_text())


def to_markdown(report: dict) -> str:
    hw = report["hardware"]
    head, body = rows(report)
    lines = [f"# trainopt report: {report['recipe']['name']}", "",
             f"Hardware: {hw.get('name')} ({hw['device']}, {hw['threads']} threads), torch {hw['torch']}. "
             f"Total wall time {report.get('total_wall_s', 0):.1f} s.", "",
             "Deltas and ratios are against the baseline stage: quality delta in the metric's units, "
             "latency speedup (above 1 is faster), disk-size ratio (below 1 is smaller). Peak memory on CPU is "
             "the process's peak resident set.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    notes = timing_notes(report)
    if notes:
        lines += ["", "## Timing", "", "Each stage is timed again next to the model it came from and the baseline, "
                  "in alternating rounds; ⚠ in the table marks figures measured on a busy machine or with a wide "
                  "spread (`speed.timing` in report.json).", ""] + [f"- {n}" for n in notes]
    flags = quality_flags(report)
    if flags:
        lines += ["", "## Quality lost", "", "✗ in the table: a stage over its quality budget (validation split, "
                  "`budget:`), or one that lost more than 1 pt of test quality against the baseline.", ""]
        lines += [f"- ✗ {f}" for f in flags]
    c = report.get("classical")
    if c:
        st = c.get("settings", {})
        lines += ["", "## Classical baseline", "",
                  f"{c['name']}, trained on the same training split in {c['cost']['wall_s']} s"
                  + (f" ({st['features']}; C = {st['C']:g}, class weights {st['class_weight'] or 'none'}, chosen on "
                     f"{st['chosen_on']})" if "C" in st else
                     f" (bigram weight {st.get('bigram_weight')}, chosen on {st.get('chosen_on')})")
                  + (f"; its latency includes {c['speed']['includes']}" if c.get("speed", {}).get("includes") else "")
                  + ".", ""] + [f"- {'✓' if ok else '✗'} {text}" for text, ok in classical_lines(report)]
    data = report.get("data", {})
    lines += ["", "## Data", "", f"- source: {data.get('source')} (text column `{data.get('text_column')}`"
              + (f", label column `{data.get('label_column')}`)" if data.get("label_column") else ")"),
              f"- rows: {data.get('rows')}", f"- cleaning: {describe_data(data)}",
              f"- cleaning counts: {data.get('cleaning') or 'nothing changed'}"]
    if data.get("label_counts"):
        lines.append(f"- labels per split: {data['label_counts']}")
    if data.get("tokens"):
        lines.append(f"- tokens: {data['tokens']}")
    for a in report.get("augmentation") or []:
        lines += ["", f"## Augmentation `{a['name']}`", "",
                  f"{a['originals']} training examples → {a['train_rows']} ({a['added']} added: "
                  + ", ".join(f"{op} {n}" for op, n in a["per_operation"].items())
                  + f"); dropped as identical to a source or an original {a['dropped']['identical']}, as duplicates "
                  f"{a['dropped']['duplicate']}; mean word edit distance {a['mean_word_edit_distance']}. "
                  f"The stages after it train on the augmented split; validation and test are not augmented."]
        for ex in a.get("examples", [])[:2]:
            lines += ["", f"- source: {ex['source'][:160]}", f"  augmented: {ex['augmented'][:160]}"]
    for s in report["stages"]:
        extra = []
        q = s["quality"]
        if q.get("confusion_matrix"):
            labels = q.get("labels") or [str(i) for i in range(len(q["confusion_matrix"]))]
            extra += ["", "Confusion matrix (rows: true, columns: predicted):", "",
                      "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
            extra += [f"| **{labels[i]}** | " + " | ".join(str(x) for x in r) + " |"
                      for i, r in enumerate(q["confusion_matrix"])]
            extra += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
            extra += [f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
                      for c, v in q.get("per_class", {}).items()]
        t = s.get("training")
        if t:
            extra += ["", f"Training: {t['steps']} steps ({t['epochs_done']} epochs), {t['tokens_seen']:,} tokens, "
                          f"best validation {t['metric']} {t['best_val_metric']} at step {t['best_step']}, "
                          f"non-finite steps skipped: {t['skipped_nonfinite_steps']}"
                      + (f", rollbacks {t['rollbacks']} (learning rate x{t['lr_scale']:g}, {t['skipped_batches']} "
                         "batches skipped)" if t.get("rollbacks") else "")
                      + (f", spikes skipped {t['spikes_skipped']}" if t.get("spikes_skipped") else "")
                      + (", stopped early" if t["stopped_early"] else "")
                      + (f", resumed from step {t['resumed_from_step']}" if t.get("resumed_from_step") else "")]
        if t and t.get("tokens_per_s"):
            extra += ["", "Throughput: " + _throughput(t)]
        if s.get("pruning"):
            extra += ["", "Pruning: " + describe(s["pruning"])]
        if s.get("export"):
            extra += ["", "Export: " + describe_export(s["export"])]
        lo = s.get("lora")
        if lo:
            extra += ["", f"LoRA: rank {lo['rank']}, alpha {lo['alpha']:g}" + (", DoRA" if lo["dora"] else "")
                      + (", rsLoRA" if lo["rslora"] else "") + f" on {', '.join(lo['target_modules'])}; "
                      f"{lo['trainable_params']:,} of {lo['total_params']:,} parameters trained "
                      f"({lo['trainable_fraction']:.2%}); adapter `{lo['adapter']}` ({lo['adapter_bytes'] / 1e6:.1f} "
                      "MB, a PEFT folder)" + ("; the stage's model is the merged weights" if lo["merged"] else
                                             f"; the stage's model is the adapter on `{lo['base']}`")]
            if lo.get("quantized_layers"):
                extra += [f"QLoRA: the base's {lo['quantized_layers']} Linear layers "
                          f"({lo['quantized_params']:,} weights) trained in {lo['quantize_base']} (bitsandbytes"
                          + (", double quantisation" if lo["double_quant"] else "") + f"), "
                          f"{lo['quantized_weight_bytes'] / 1e6:.1f} MB as stored"
                          + ("; merged into the dequantised base" if lo["merged"] else "")]
        for x in s.get("samples") or []:
            extra += ["", f"- **{x['question']}** → {x['answer'][:300]}", f"  (reference: {x['reference'][:200]})"]
        if s.get("notes"):
            extra += [""] + [f"- {n}" for n in s["notes"]]
        if extra:
            lines += ["", f"## Stage `{s['name']}`"] + extra
    return "\n".join(lines) + "\n"


def _throughput(t: dict) -> str:
    """The steady state next to the whole stage, and where the difference went (compile, evaluations)."""
    def rate(tps, mfu):
        return f"{tps:,.0f} tokens/s" + (f" (MFU {mfu:.1%})" if mfu else "")

    parts = [f"{rate(t['tokens_per_s'], t.get('mfu'))} over the whole stage"]
    if t.get("steady_tokens_per_s"):
        parts.insert(0, f"{rate(t['steady_tokens_per_s'], t.get('steady_mfu'))} in the steady state")
    spent = []
    if t.get("first_step_s") is not None:
        spent.append(f"first step {t['first_step_s']:.1f} s" + (" (compile)" if t.get("compiled") else ""))
    if t.get("eval_s"):
        spent.append(f"evaluations {t['eval_s']:.1f} s")
    return ", ".join(parts) + (f"; {', '.join(spent)}" if spent else "")


def print_summary(report: dict) -> None:
    head, body = rows(report)
    table = Table(title=f"trainopt: {report['recipe']['name']} — {report['hardware'].get('name')}")
    for h in head:
        table.add_column(h)
    for r in body:
        table.add_row(*r)
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out = Console(width=200)
    out.print(table)
    out.print(f"data: {describe_data(report.get('data') or {})}")
    for line in quality_flags(report):
        out.print(f"[bold red]✗ {line}[/bold red]")
    for text, ok in classical_lines(report):
        out.print(f"[green]{text}[/green]" if ok else f"[bold red]{text}[/bold red]")
    for line in timing_notes(report, unreliable_only=True):
        out.print(f"[yellow]⚠ {line}[/yellow]")
    out.print(f"report: {Path(report['run_dir']) / 'report.md'} (and report.html)")
