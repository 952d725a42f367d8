"""Recipe schema of the `augment` stage (docs/methods/augment.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ...specbase import BUILTIN_MODELS, NAME, Doc, StageBase, Strict


class EdaSpec(Strict):
    """EDA operation rates (Wei & Zou 2019's alpha): the share of a text's words each one touches; 0 turns it off."""

    synonym: float = Field(0.1, ge=0.0, le=1.0)
    """synonym replacement: share of a text's words replaced by a WordNet synonym (0 = off)"""
    insert: float = Field(0.1, ge=0.0, le=1.0)
    """random insertion: that share of synonyms inserted at random positions"""
    swap: float = Field(0.1, ge=0.0, le=1.0)
    """random swap: that share of word pairs swapped"""
    delete: float = Field(0.1, ge=0.0, le=1.0)
    """random deletion: each word dropped with this probability"""

    @model_validator(mode="after")
    def _some(self):
        if not (self.synonym or self.insert or self.swap or self.delete):
            raise ValueError("eda needs at least one operation rate above 0 (synonym, insert, swap, delete)")
        return self


class BackTranslateSpec(Strict):
    """English → pivot → English through an offline engine: Apertium (Debian apertium-eng-spa), or a pair of
    local Hugging Face translation models (MarianMT or any seq2seq folder)."""

    engine: Literal["apertium", "marian"] = "apertium"
    """Apertium (from `trainopt data fetch --only apertium`), or a pair of local HF translation folders"""
    pivot: Literal["spa"] = "spa"
    """Apertium's pivot language"""
    forward_model: str | None = None
    """`marian`: the English → pivot model folder (MarianMT or any seq2seq model)"""
    back_model: str | None = None
    """`marian`: the pivot → English model folder"""
    batch_size: int = Field(256, ge=1)
    """texts per engine call"""
    max_new_tokens: int = Field(256, ge=1)
    """`marian`: the longest translation, in tokens"""
    num_beams: int = Field(1, ge=1, le=16)
    """`marian`: beam width (1: greedy)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`marian`: where the translation models run (auto: CUDA when available)"""
    timeout_s: float = Field(600.0, gt=0.0)
    """Apertium: per call; longer is an error naming this key"""

    @model_validator(mode="after")
    def _marian_models(self):
        if self.engine == "marian" and not (self.forward_model and self.back_model):
            raise ValueError("backtranslate.engine: marian needs backtranslate.forward_model and back_model "
                             "(local translation model folders)")
        return self


class ContextualSpec(Strict):
    """Replace words with a model's suggestions: a masked LM's predictions, or input-embedding neighbours."""

    source: Literal["embedding", "mlm"] = "embedding"
    """nearest whole-word neighbours in a model's input embeddings, or a masked LM's predictions"""
    model: str | None = None
    """a local HF folder (`mlm`: with an MLM head, required); `embedding`: default the run's `model.path`"""
    rate: float = Field(0.15, gt=0.0, le=1.0)
    """share of a text's words replaced"""
    per_example: int = Field(1, ge=1, le=16)
    """contextual variants per training example"""
    top_k: int = Field(5, ge=1, le=100)
    """each replacement is drawn from the top k candidates"""

    @model_validator(mode="after")
    def _mlm_needs_model(self):
        if self.source == "mlm" and not self.model:
            raise ValueError("contextual.source: mlm needs contextual.model (a local folder with an MLM head)")
        return self


class AugmentStage(StageBase):
    """Enlarge the training split for the stages after it (classification); trains nothing, measures nothing, and is
    listed under "Augmentation" in the report. See [methods/augment.md](methods/augment.md)."""

    kind: Literal["augment"]
    name: str = Field("augment", pattern=NAME)
    """stage name (its folder caches `augmented.jsonl`)"""
    per_example: int = Field(4, ge=0, le=64)
    """new EDA examples made per training example, before filtering (0: EDA off)"""
    eda: EdaSpec = EdaSpec()
    backtranslate: BackTranslateSpec | None = None
    """add one back-translated example per training example (keys below)"""
    contextual: ContextualSpec | None = None
    """add model-suggested variants per training example (keys below)"""
    synonyms: Literal["wordnet"] = "wordnet"
    """the synonym source (WordNet 3.0 from `trainopt data fetch --only wordnet`)"""
    max_senses: int = Field(3, ge=1)
    """synonyms come from the word's most frequent senses only"""
    max_words: int | None = Field(256, ge=1)
    """augmented texts longer than this are cut"""
    seed: Annotated[int | None, Doc(default="`run.seed`")] = None
    """the augmentation's own seed"""

    @model_validator(mode="after")
    def _no_model(self):
        if self.from_stage is not None:
            raise ValueError("augment changes the training data, not a model; remove from_stage")
        if self.per_example == 0 and self.backtranslate is None and self.contextual is None:
            raise ValueError("augment needs per_example > 0 (EDA), a backtranslate: or a contextual: block")
        return self


    def paths(self):
        out = []
        if self.contextual is not None and self.contextual.model:
            out.append(("contextual.model", self.contextual.model, BUILTIN_MODELS))
        if self.backtranslate is not None:
            out += [(f"backtranslate.{k}", getattr(self.backtranslate, k), ()) for k in ("forward_model", "back_model")
                    if getattr(self.backtranslate, k)]
        return out
