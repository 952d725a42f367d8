"""`trainopt export MODEL_DIR --format onnx|hf|gguf [--quantize int8|q4_0|q4_k_m|q8_0|f16] --out DIR`: one saved
folder exported and checked against trainopt's model on a few fixed sentences. To measure an export on a data set
(quality, latency next to the source), put an `export` stage in a recipe, or run `trainopt eval DIR` on the exported
folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import TrainoptError
from ..meta import read_meta
from .spec import ExportStage

SENTENCES = ["The snack was fresh and tasty, I would buy it again.",
             "Terrible packaging: half of the cookies arrived broken.",
             "It is a truth universally acknowledged that a single man in possession of a good fortune must be in want "
             "of a wife.", "Delivery took two weeks.", "Good.", "My dog loves these treats more than anything else.",
             "The coffee tastes burnt and bitter, not worth the price.", "Sweet, crunchy and not too salty."]


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a saved model in another runtime's format (ONNX, GGUF, plain HF)",
                       description="Export a saved model folder to ONNX (run by onnxruntime, optionally int8), to "
                                   "GGUF (llama.cpp; Llama-family LMs) or to a plain transformers folder, and check "
                                   "it against trainopt's model.")
    p.add_argument("model_dir", help="a saved model folder (any stage's model/)")
    p.add_argument("--format", choices=["onnx", "hf", "gguf"], default="onnx")
    p.add_argument("--quantize", choices=["none", "int8", "q4_0", "q4_k_m", "q8_0", "f16"], default="none",
                   help="onnx: int8 (onnxruntime's dynamic int8); gguf: q4_0, q8_0, f16, or q4_k_m (llama.cpp's "
                        "quantizer: `make llama-cpp`); none: float32")
    p.add_argument("--no-optimize", action="store_true", help="onnx: skip onnxruntime's transformer graph fusions")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="hf: weight dtype")
    p.add_argument("--out", metavar="DIR", help="the exported folder (default: exports/<model folder>-<format>)")
    p.add_argument("--overwrite", action="store_true", help="replace an export trainopt wrote before")


def main(args) -> int:
    from pydantic import ValidationError

    from .stage import export_folder

    src = Path(args.model_dir).expanduser()
    if not src.is_dir():
        raise TrainoptError(f"{src} is not a folder; give a saved model folder (a stage's model/)")
    suffix = args.format + (f"-{args.quantize}" if args.quantize != "none" else "")
    out = Path(args.out).expanduser() if args.out else Path("exports") / f"{src.resolve().name}-{suffix}"
    _check_out(src, out, args.overwrite)
    settings = {"kind": "export", "format": args.format, "quantize": args.quantize}
    if args.no_optimize:  # options for another format are refused by the spec, not ignored
        settings["optimize"] = False
    if args.dtype != "float32":
        settings["dtype"] = args.dtype
    try:
        spec = ExportStage(**settings)
    except ValidationError as e:
        raise TrainoptError(f"--format {args.format}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    _, details = export_folder(src, out, spec, _sample(src))
    print(f"exported {src} → {out} ({details['runtime']}): {details['disk_bytes'] / 1e6:.1f} MB, "
          f"{details['params'][0]:,} parameters")
    print(f"checked on {details['compared_on'][0]} sentences: max |logit difference| "
          f"{details['max_abs_logit_diff']:.3g}, same prediction {details['same_prediction']:.1%}")
    for note in details.get("notes", []):
        print(f"note: {note}")
    return 0


def _check_out(src: Path, out: Path, overwrite: bool) -> None:
    """Never write into the source, and replace only an export trainopt wrote (its trainopt.json says so)."""
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise TrainoptError(f"--out {out} is inside the model folder {src}; choose another folder")
    if not out.exists():
        return
    export_marked = out.is_dir() and (out / "trainopt.json").is_file() and "export" in read_meta(out)
    if not overwrite or not export_marked:
        raise TrainoptError(f"--out {out} exists" + (" (pass --overwrite to replace it)" if export_marked else
                            " and is not an export trainopt wrote: choose another folder"))
    shutil.rmtree(out)


def _sample(src: Path) -> dict:
    """The fixed sentences through the folder's tokenizer: padded for a classifier; for a causal LM cut to the
    shortest one's length, so that every position is a real token."""
    import torch
    from transformers import AutoTokenizer

    from ..hf import quiet_transformers

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = [tok(s)["input_ids"] for s in SENTENCES]
    if (read_meta(src).get("task") or "classification") == "causal_lm":
        n = max(2, min(len(e) for e in enc))
        ids = torch.tensor([(e * n)[:n] for e in enc])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
