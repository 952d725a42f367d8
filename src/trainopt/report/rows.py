"""One row per stage: the side-by-side table the Markdown, the console and the HTML report all show."""

from __future__ import annotations

from ..results import latency_key


def _fmt(v, spec: str = "", none: str = "—") -> str:
    if v is None:
        return none
    return format(v, spec) if spec else str(v)


def _delta(v, spec: str) -> str:
    return "" if v is None else f" ({v:+{spec}})"


def _ratio(v, suffix: str = "x") -> str:
    return "" if v is None else f" ({v:.2f}{suffix})"


def rows(report: dict) -> tuple[list[str], list[list[str]]]:
    task = report["recipe"]["task"]
    sizes = report["recipe"]["measure"]["batch_sizes"]
    head = ["stage", "kind", "effect"]
    head += ["accuracy", "macro-F1"] if task == "classification" else ["loss", "perplexity"]
    head += ["params", "non-zero", "disk MB"] + [f"b{b} p50 ms" for b in sizes]
    if task == "causal_lm":
        head.append("generate tok/s b1")
    head += ["train s", "tokens/s", "MFU", "peak mem MB"]
    classical = report.get("classical")
    if classical:
        head.append("vs classical")
    body = []
    for s in report["stages"]:
        q, z, sp, c, vs = s["quality"], s["size"], s["speed"], s["cost"], s["vs_baseline"]
        row = [s["name"], s["kind"], s["effect"]]
        mark = _quality_mark(s)
        if task == "classification":
            row += [_fmt(q.get("accuracy"), ".4f") + _delta(vs.get("quality_delta"), ".4f") + mark,
                    _fmt(q.get("f1_macro"), ".4f")]
        else:
            row += [_fmt(q.get("loss"), ".4f"),
                    _fmt(q.get("perplexity"), ".2f") + _delta(vs.get("quality_delta"), ".2f") + mark]
        row += [f"{z['params']:,}", f"{z['nonzero_params']:,}",
                f"{z['disk_bytes'] / 1e6:.1f}" + _ratio(vs.get("size_ratio"))]
        flag = "" if sp.get("timing", {}).get("reliable", True) else " ⚠"  # why: timing_notes
        for b in sizes:
            row.append(_fmt(sp.get(latency_key(b)), ".2f") + _ratio(vs.get(f"speedup_b{b}")) + flag)
        if task == "causal_lm":
            row.append(_fmt(sp.get("generate_tokens_per_s_b1"), ".1f") + _ratio(vs.get("speedup_generate_b1")))
        row += [_fmt(c.get("wall_s"), ".1f") if s.get("training") else "—",
                _fmt(c.get("tokens_per_s"), ",.0f"), _fmt(c.get("mfu"), ".1%"),
                _fmt(None if c.get("peak_mem_bytes") is None else c["peak_mem_bytes"] / 1e6, ",.0f")]
        if classical:
            row.append(_versus(s.get("vs_classical")))
        body.append(row)
    if classical:
        body.append(_classical_row(classical, report, task, sizes))
    return head, body


def _versus(vs: dict | None) -> str:
    """A stage against the classical row: its macro-F1 (or perplexity) difference, ✓ where the stage is better."""
    if not vs:
        return "—"
    spec = "+.4f" if vs["metric"] == "f1_macro" else "+.2f"
    return f"{vs['delta']:{spec}} {'✓' if vs['beats'] else '✗ worse'}"


def _classical_row(c: dict, report: dict, task: str, sizes) -> list[str]:
    """The classical baseline as a row of the same table; its speed ratios against the baseline stage."""
    base = next((s for s in report["stages"] if s["effect"] == "baseline"), None)
    q, z, sp = c["quality"], c["size"], c.get("speed") or {}
    row = [c["name"], "classical", "reference"]
    if task == "classification":
        row += [_fmt(q.get("accuracy"), ".4f"), _fmt(q.get("f1_macro"), ".4f")]
    else:
        row += [_fmt(q.get("loss"), ".4f"), _fmt(q.get("perplexity"), ".2f")]
    disk, base_disk = z.get("disk_bytes"), (base or {}).get("size", {}).get("disk_bytes")
    row += [f"{z['params']:,}", f"{z['nonzero_params']:,}",
            _fmt(None if disk is None else disk / 1e6, ".1f") + (_ratio(disk / base_disk) if disk and base_disk
                                                                 else "")]
    for b in sizes:
        mine, theirs = sp.get(latency_key(b)), (base or {}).get("speed", {}).get(latency_key(b))
        row.append(_fmt(mine, ".2f") + (_ratio(theirs / mine) if mine and theirs else ""))
    if task == "causal_lm":
        row.append("—")
    return row + [_fmt(c.get("cost", {}).get("wall_s"), ".1f"), "—", "—", "—", "—"]



def timing_notes(report: dict, unreliable_only: bool = False) -> list[str]:
    """One line per stage on how far its speed figures can be trusted: each ratio against the model it came from with
    its 95% interval (timed interleaved), and every warning of a busy machine or a noisy figure (⚠ in the table)."""
    lines = []
    for s in report["stages"]:
        sp, parent = s["speed"], s.get("vs_parent") or {}
        timing = sp.get("timing") or {}
        if not timing or (unreliable_only and timing.get("reliable", True)):
            continue
        parts = []
        for b in report["recipe"]["measure"]["batch_sizes"]:
            ci = parent.get(f"speedup_b{b}_ci95")
            if ci:
                parts.append(f"b{b} {parent[f'speedup_b{b}']:.2f}x vs {parent['stage']} (95% interval {ci[0]:.2f}–"
                             f"{ci[1]:.2f}x)")
        where = f"timed with {', '.join(timing['interleaved_with'])} in {timing.get('rounds')} alternating rounds" \
            if timing.get("interleaved_with") else f"timed alone in {timing.get('rounds')} rounds"
        state = "reliable" if timing.get("reliable", True) else "UNRELIABLE: " + "; ".join(timing.get("warnings", []))
        lines.append(f"{s['name']}: " + ", ".join(parts + [where]) + f" — {state}")
    return lines


def classical_lines(report: dict) -> list[tuple[str, bool]]:
    """What the classical row says about the chain, one line per stage that trained or compressed a model:
    (text, the stage is better)."""
    c = report.get("classical")
    if not c:
        return []
    out = []
    for s in report["stages"]:
        vs = s.get("vs_classical")
        if not vs:
            continue
        name = "macro-F1" if vs["metric"] == "f1_macro" else "perplexity"
        verdict = "beats" if vs["beats"] else "does NOT beat"
        out.append((f"{s['name']} {verdict} the classical baseline ({c['name']}) on {name}: {vs['stage']} vs "
                    f"{vs['classical']}", vs["beats"]))
    return out


def _quality_mark(stage: dict) -> str:
    """✗ beside the quality of a stage over its budget, or that lost more than 1 pt of test quality (budget.py)."""
    if (stage.get("budget") or {}).get("over"):
        return " ✗ over budget"
    if any(n.startswith("QUALITY LOST") for n in stage.get("notes") or []):
        return " ✗ lost > 1 pt"
    return ""


def quality_flags(report: dict) -> list[str]:
    """The lines that say a stage lost too much (over its budget, or > 1 pt of test quality without one)."""
    return [f"{s['name']}: {n}" for s in report["stages"] for n in s.get("notes") or []
            if n.startswith(("OVER BUDGET", "QUALITY LOST"))]
