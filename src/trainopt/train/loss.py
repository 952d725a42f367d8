"""The training loss as a module: the model and its loss in one forward.

`TrainLoss(model)(input_ids, attention_mask, labels)` returns the summed loss of the batch (cross-entropy on the
labels, or on the next token for a causal LM). Training wraps the model in it so that torch.compile compiles the
loss into the same graph as the model (the logits' upcast and softmax fuse with the head instead of running eagerly
on a materialised logits tensor), and DDP/FSDP wrap one module. With `lm_loss: chunked | liger` a causal LM's head
and loss run through train/linear_ce.py without the full logits tensor. Without labels it is the model's own forward
(evaluation through the same, possibly FSDP-sharded, root module). The model, its weights and its state dict are
unchanged (its keys carry a `model.` prefix only inside the wrapper).
"""

from __future__ import annotations

import torch

from ..evaluate import classification_loss_sum, lm_loss_sum
from .linear_ce import DEFAULT_CHUNK, chunked_linear_cross_entropy, liger_linear_cross_entropy


class TrainLoss(torch.nn.Module):
    def __init__(self, model, task: str, label_smoothing: float = 0.0, lm_loss: str = "full",
                 chunk: int = DEFAULT_CHUNK, opaque_head: bool = False, vocab_multiple: int = 1,
                 sparse_targets: bool = False):
        super().__init__()
        # lm_loss: chunked on data where most positions have no target (SFT prompts): the head on the targets only
        self.sparse_targets = sparse_targets
        self.model, self.task, self.label_smoothing, self.lm_loss, self.chunk = model, task, label_smoothing, \
            lm_loss, chunk
        self.vocab_multiple = vocab_multiple  # lm_loss: chunked — matmuls on the vocabulary padded to a multiple
        # Under DDP + torch.compile, the chunked head runs outside dynamo: on torch 2.11 + CUDA, inductor failed on
        # the graph that DDP's graph splitting cut around it ("'int' object has no attribute 'meta'").
        self.opaque_head = opaque_head
        self._lm_loss_sum, self._classification_loss_sum = lm_loss_sum, classification_loss_sum

    def compile_loss(self, mode: str | None = None, dynamic: bool | None = None) -> bool:
        """Compile the loss on its own (the logits' upcast and log-softmax fused), for when the model is compiled
        block by block (FSDP2) rather than together with its loss. False where nothing is compiled: the chunked and
        Liger heads run as they are."""
        if self.task == "causal_lm" and self.lm_loss != "full":
            return False
        self._lm_loss_sum = torch.compile(lm_loss_sum, mode=mode, dynamic=dynamic)
        self._classification_loss_sum = torch.compile(classification_loss_sum, mode=mode, dynamic=dynamic)
        return True

    @property
    def config(self):  # evaluation reads the model's config (e.g. num_labels) through this wrapper under FSDP
        return self.model.config

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None, **kwargs):
        if position_ids is not None:  # packed SFT rows: positions restart at each example (data/sft.py)
            kwargs["position_ids"] = position_ids
        if labels is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if self.task == "classification":
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
            return self._classification_loss_sum(logits, labels, self.label_smoothing)
        if self.lm_loss == "full":
            # use_cache=False: training builds no KV cache (transformers otherwise fills one per layer, which also
            # makes a compiled block see the cache's state change and recompile)
            return self._lm_loss_sum(self.model(input_ids=input_ids, attention_mask=attention_mask,
                                                use_cache=False, **kwargs).logits, labels)
        hf = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # PEFT: the HF model
        out = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        hidden = out[0][:, :-1].reshape(-1, out[0].shape[-1])
        targets = labels[:, 1:].reshape(-1)
        head = hf.get_output_embeddings()
        if self.lm_loss == "liger":
            return liger_linear_cross_entropy(hidden, head.weight, head.bias, targets)
        if self.sparse_targets:
            return _targets_only(hidden, head.weight, head.bias, targets, self.chunk, self.vocab_multiple)
        fn = _opaque_chunked if self.opaque_head else chunked_linear_cross_entropy
        return fn(hidden, head.weight, head.bias, targets, self.chunk, vocab_multiple=self.vocab_multiple)


_opaque_chunked = torch.compiler.disable(chunked_linear_cross_entropy)


@torch.compiler.disable  # the selection's size depends on the data: eager, after the compiled model body
def _targets_only(hidden, weight, bias, targets, chunk: int, vocab_multiple: int) -> torch.Tensor:
    """The chunked head and loss on the positions that have a target only. On SFT data the prompts have none (two
    thirds of the tokens of builtin:definitions): their logits would be computed and thrown away, and their hidden
    states get no gradient from the loss either way. The same sum, in another order."""
    keep = (targets != -100).nonzero().squeeze(1)
    return chunked_linear_cross_entropy(hidden.index_select(0, keep), weight, bias, targets.index_select(0, keep),
                                        chunk, vocab_multiple=vocab_multiple)


def module_loss(wrapped, batch: dict, denom: int) -> torch.Tensor:
    """The loss_fn of the training loop for a (compiled / DDP-wrapped) TrainLoss: summed loss / denom."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids", "labels",
                                                      "position_ids")}
    return wrapped(**inputs) / denom


def unwrapped(state: dict) -> dict:
    """The model's own keys of a state dict taken from a TrainLoss (drop the `model.` prefix)."""
    return {k.removeprefix("model."): v for k, v in state.items()}


def task_loss(task: str, label_smoothing: float = 0.0):
    """The default objective as a loss_fn(model, batch, denom): cross-entropy on the labels (classification) or on
    the next token (LM), summed over the micro-batch and divided by `denom`, the item/token count of the whole
    accumulated batch — train/loss.py's TrainLoss around the model."""
    return lambda model, batch, denom: module_loss(TrainLoss(model, task, label_smoothing), batch, denom)
