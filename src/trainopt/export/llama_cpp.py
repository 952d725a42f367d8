"""A GGUF export's runtime: llama.cpp through llama-cpp-python when it is installed (`make llama-cpp`: a source
package built with cmake and gcc, kept out of the default install), else transformers' GGUF loader (the same weights,
dequantized, run by PyTorch: quality is the file's, speed is not llama.cpp's — the report row says which ran).

`LlamaCppModel` puts a llama.cpp context behind the torch-module interface the runner calls: forward(input_ids) ->
.logits (each row evaluated from an empty KV cache) and generate(...) (greedy, exactly max_new_tokens tokens, as
measure.measure_generation asks), so the export row is evaluated and timed by the same code as every stage.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from .gguf import MODEL_FILE, load_with_transformers


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def runtime(folder: Path):
    """llama.cpp on the folder's GGUF file where llama-cpp-python is installed, else transformers' GGUF loader."""
    if available():
        from ..portable import read_config

        return LlamaCppModel(Path(folder) / MODEL_FILE, read_config(folder))  # config.json: the exported model's
    return load_with_transformers(folder)


class LlamaCppModel(torch.nn.Module):
    def __init__(self, path: Path, config, threads: int | None = None, n_ctx: int = 2048):
        super().__init__()
        from llama_cpp import Llama

        self.path, self.config = Path(path), config
        self.threads = threads or torch.get_num_threads()  # as many as the PyTorch stages use
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=self.threads,
                         n_threads_batch=self.threads, logits_all=True, verbose=False)

    def describe(self) -> str:
        import llama_cpp

        return f"llama.cpp (llama-cpp-python {llama_cpp.__version__}, CPU, {self.threads} threads)"

    def forward(self, input_ids, attention_mask=None, **_):
        import numpy as np

        out = []
        for row, mask in zip(input_ids, attention_mask if attention_mask is not None else [None] * len(input_ids)):
            tokens = row[mask.bool()] if mask is not None else row
            self.llm.reset()
            self.llm.eval(tokens.tolist())
            logits = torch.from_numpy(np.array(self.llm.scores[: len(tokens)], dtype=np.float32))
            if len(tokens) < len(row):  # padded positions: no logits of their own
                logits = torch.cat([logits, logits.new_zeros(len(row) - len(tokens), logits.shape[1])])
            out.append(logits)
        return SimpleNamespace(logits=torch.stack(out))

    def generate(self, input_ids, max_new_tokens: int, **_):
        """Greedy decoding of exactly max_new_tokens tokens per row (EOS ignored), returns prompt + new ids."""
        rows = []
        for row in input_ids:
            self.llm.reset()
            new = []
            for token in self.llm.generate(row.tolist(), top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0,
                                           reset=True):
                new.append(token)
                if len(new) == max_new_tokens:
                    break
            rows.append(torch.cat([row.cpu(), torch.tensor(new, dtype=row.dtype)]))
        return torch.stack(rows)
