"""The report's words for an export stage (no torch: the report imports it)."""

from __future__ import annotations


def describe(info: dict) -> str:
    """One line for the Markdown report: the format, the runtime that ran the row, and how the export agrees with
    trainopt's model on the compared inputs."""
    quant = f" ({info['quantize']})" if info.get("quantize") not in (None, "none") else ""
    shape = " × ".join(str(n) for n in info.get("compared_on", []))
    return (f"{info['format']}{quant}, files {', '.join(info.get('files', []))}; measured in {info['runtime']}; "
            f"against trainopt's model on {shape} inputs: largest |logit difference| {info['max_abs_logit_diff']:.3g},"
            f" same prediction {info['same_prediction']:.1%}")
