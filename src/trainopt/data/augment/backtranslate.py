"""Back-translation: English → pivot language → English, through a translation engine.

Engines implement `translate(texts, direction) -> list[str]` for direction "forward" (source → pivot) and
"back". A pair of local Hugging Face translation folders (MarianMT, or any seq2seq model) is one engine; the
offline default is Apertium (rule-based, Debian `apertium-eng-spa`, unpacked into the asset cache
by `trainopt data fetch --only apertium`): each batch runs once through Apertium's own pipeline for the pair
(the `.mode` file: analyser, tagger, transfer, generator), one text per line, between `apertium-destxt` and
`apertium-retxt`, the same programs the `apertium` script chains. We run the pipeline directly because the script
needs gawk for a stream-variable feature we do not use.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from ...errors import TrainoptError


class EngineError(TrainoptError):
    pass


_MARKS = re.compile(r"(?<!\S)[@#*](?=\w)")  # Apertium's marks for untranslated / ungenerated words


def _one_line(text: str) -> str:
    return " ".join(text.split())  # the engine works line by line


def _clean(text: str) -> str:
    return " ".join(_MARKS.sub("", text).split())


class ApertiumEngine:
    """Apertium for `pair` (e.g. eng-spa): forward = eng→spa, back = spa→eng."""

    def __init__(self, root: Path, pair: str = "eng-spa", timeout_s: float = 300.0):
        self.root = Path(root)
        src, pivot = pair.split("-")
        self.modes = {"forward": self.root / "modes" / f"{src}-{pivot}.mode",
                      "back": self.root / "modes" / f"{pivot}-{src}.mode"}
        for mode in self.modes.values():
            if not mode.is_file():
                raise EngineError(f"Apertium mode {mode.name} is missing in {self.root}; run `trainopt data fetch "
                                  "--only apertium`")
        self.timeout_s = timeout_s
        bin_dir, lib_dir = self.root / "usr/bin", self.root / "usr/lib/x86_64-linux-gnu"
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "LD_LIBRARY_PATH": f"{lib_dir}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}"}
        # $1: generator flag (-n: no marks on unknown words, as `apertium -u`); $2: tagger option (none).
        self.pipelines = {d: f"apertium-destxt | {m.read_text().strip().replace('$1', '-n').replace('$2', '')} "
                             f"| apertium-retxt" for d, m in self.modes.items()}

    def translate(self, texts: list[str], direction: str) -> list[str]:
        lines = [_one_line(t) for t in texts]
        try:
            r = subprocess.run(["bash", "-o", "pipefail", "-c", self.pipelines[direction]],
                               input="\n".join(lines) + "\n", capture_output=True, text=True, env=self.env,
                               timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise EngineError(f"Apertium took longer than {self.timeout_s:.0f} s for {len(texts)} texts; lower "
                              "backtranslate.batch_size or raise backtranslate.timeout_s") from None
        if r.returncode != 0:
            raise EngineError(f"Apertium failed ({r.returncode}): {r.stderr.strip()[-300:]}")
        out = r.stdout.split("\n")
        if out and out[-1] == "":
            out = out[:-1]
        if len(out) != len(lines):  # alignment lost: translate one by one (slow, but never mismatched)
            if len(lines) == 1:
                return [_clean(" ".join(out))]
            return [self.translate([t], direction)[0] for t in lines]
        return [_clean(o) for o in out]


class Seq2SeqEngine:
    """A pair of local Hugging Face translation models (MarianMT, or any seq2seq folder): batched generation."""

    def __init__(self, forward_dir: str, back_dir: str, max_new_tokens: int = 256, num_beams: int = 1,
                 device: str = "auto"):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from ...hf import quiet_transformers

        quiet_transformers()
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.pairs = {}
        for direction, path in (("forward", forward_dir), ("back", back_dir)):
            try:
                tok = AutoTokenizer.from_pretrained(path)
                model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
            except (OSError, ValueError) as e:
                raise EngineError(f"cannot load the {direction} translation model from {path} "
                                  f"({str(e).splitlines()[0][:160]})") from None
            self.pairs[direction] = (tok, model)
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    def translate(self, texts: list[str], direction: str) -> list[str]:
        import torch

        tok, model = self.pairs[direction]
        enc = tok([_one_line(t) for t in texts], return_tensors="pt", padding=True, truncation=True,
                  max_length=512)
        with torch.inference_mode():
            out = model.generate(**{k: v.to(self.device) for k, v in enc.items()}, max_new_tokens=self.max_new_tokens,
                                 num_beams=self.num_beams, do_sample=False)
        return [" ".join(t.split()) for t in tok.batch_decode(out, skip_special_tokens=True)]


def make_engine(spec):
    if spec.engine == "marian":
        from ...models import resolve_model_ref

        return Seq2SeqEngine(str(resolve_model_ref(spec.forward_model)), str(resolve_model_ref(spec.back_model)),
                             spec.max_new_tokens, spec.num_beams, spec.device)
    from ... import assets

    return ApertiumEngine(assets.asset_path("apertium"), f"eng-{spec.pivot}", spec.timeout_s)


def back_translate(texts: list[str], engine, batch_size: int, progress=None) -> list[str]:
    """Round trip in batches; returns one text per input (possibly equal to it)."""
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        batch = texts[i: i + batch_size]
        out.extend(engine.translate(engine.translate(batch, "forward"), "back"))
        if progress is not None:
            progress(len(out))
    return out
