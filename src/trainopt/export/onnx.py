"""ONNX export through `torch.onnx.export(dynamo=True)`, run by onnxruntime.

- The graph: the model's forward from token ids (and the attention mask) to logits, batch and sequence length dynamic,
  no KV cache (a causal LM is exported for scoring, not for incremental decoding). Pruned shapes are exported as
  they are: the graph is as small as the model.
- optimize: onnxruntime's transformer optimizer fuses LayerNorm (+ residual) and GELU for the families it knows (BERT
  here; its attention fusion does not match the dynamo exporter's graph); the fused graph is checked against the
  unfused one and dropped, with a note, when it does not match. Float exports only: an int8 export quantizes the
  unfused graph, which ran faster than the fused one once quantized (quickstart student, batch 32: 97–105 vs
  109–120 ms in benchmarks/onnx_variants_cpu.py).
- quantize int8: onnxruntime's dynamic quantization (`quantize_dynamic`: int8 weights per output channel, each
  MatMul's input quantized per call), after its shape-inference pre-processing.
- `OrtModel` wraps an InferenceSession as a torch module that returns `.logits`, so that the runner evaluates and
  times the export with the same code, inputs and interleaving as every other stage, while onnxruntime computes.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

MODEL_FILE = "model.onnx"
FUSED_FAMILIES = {"bert": "bert"}  # our model_type -> onnxruntime.transformers optimizer model_type


class _Logits(torch.nn.Module):
    """The exported function: ids (+ mask) -> logits. An encoder gets its padding mask as the additive 4-D float
    mask transformers accepts as it is: the graph then adds it to the attention scores instead of rebuilding it from
    the 0/1 mask with index and select operators (on the quickstart student in onnxruntime, int8 at batch 32 × 128:
    97–108 ms instead of 123–152 ms, the same logits: benchmarks/onnx_variants_cpu.py). A decoder keeps its 0/1 mask:
    transformers adds the causal part."""

    def __init__(self, model, additive_mask: bool):
        super().__init__()
        self.model, self.additive_mask = model, additive_mask

    def forward(self, input_ids, attention_mask):
        if self.additive_mask:
            attention_mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export(model, sample: dict, path: Path, opset: int) -> None:
    """Write the model's ids -> logits graph to `path` (a float model on the CPU)."""
    import contextlib
    import io
    import warnings

    from torch.export import Dim

    import logging

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed": not ours to fix
    model = model.float().cpu().eval()
    encoder = not type(model).__name__.endswith("ForCausalLM")
    if encoder and hasattr(model, "set_attn_implementation"):  # plain MatMul/Softmax attention in the exported
        model.set_attn_implementation("eager")                   # graph (eager and SDPA within noise of each other)
    ids = sample["input_ids"]
    mask = sample.get("attention_mask", torch.ones_like(ids))
    batch, seq = Dim("batch", min=1, max=4096), Dim("sequence", min=2, max=65536)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # torch.onnx prints its progress
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model, encoder).eval(), (ids, mask), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=opset,
                          dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False)


def optimize(path: Path, out: Path, model_type: str) -> bool:
    """onnxruntime's transformer fusions for a known family; False (nothing written) when there are none."""
    family = FUSED_FAMILIES.get(model_type)
    if family is None:
        return False
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    optimized = optimize_model(str(path), model_type=family, num_heads=0, hidden_size=0, opt_level=1,
                               use_gpu=False, only_onnxruntime=False)
    optimized.save_model_to_file(str(out), use_external_data_format=False)
    return True


def quantize_int8(path: Path, out: Path) -> None:
    """onnxruntime dynamic int8: weights per output channel (signed), activations quantized per call. The exporter's
    intermediate shape annotations are dropped first (onnx's shape inference, which the quantizer runs, rejects some
    of them); tensors of fused operators it cannot type are float."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process, printed on every call
    graph = onnx.load(str(path))
    graph.graph.ClearField("value_info")
    bare = out.with_name(out.stem + ".bare.onnx")
    onnx.save(graph, str(bare))
    try:
        quantize_dynamic(str(bare), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        bare.unlink(missing_ok=True)


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()  # as many as the PyTorch stages use
    opts.inter_op_num_threads = 1
    # onnxruntime's worker threads otherwise spin after each call, taking the cores from the PyTorch model timed next
    # to it in the same rounds (timing.py): an interleaved comparison would slow the other model down
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtModel(torch.nn.Module):
    """An onnxruntime session behind the torch-module interface the runner's evaluation and timing call:
    model(input_ids=..., attention_mask=...) -> .logits (a CPU tensor)."""

    def __init__(self, path: Path, config, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.config = config
        self.session = session(self.path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        if token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError("the ONNX export takes single texts (token_type_ids all 0)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {"input_ids": input_ids.cpu().long().numpy(), "attention_mask": attention_mask.cpu().long().numpy()}
        logits = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.inputs})[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))


def count(path: Path) -> tuple[int, int]:
    """(parameters, non-zero parameters) of an ONNX graph: the elements of its float and 8-bit initializers (weights,
    their int8 forms, scales and zero points); 16-64-bit integer constants (positions, shapes) are not weights."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    total = nonzero = 0
    for init in onnx.load(str(path), load_external_data=True).graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype.kind in "iu" and values.itemsize > 1:  # positions, shapes, axes: indices, not weights
            continue
        total += int(values.size)
        nonzero += int(np.count_nonzero(values))
    return total, nonzero
