"""Back-translation: English → pivot language → English, through a translation engine.

Engines implement `translate(texts, direction) -> list[str]` for direction "forward" (source → pivot) and
"back". The offline default is Apertium (rule-based, Debian `apertium-eng-spa`, unpacked into the asset cache
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


def make_engine(spec) -> ApertiumEngine:
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
