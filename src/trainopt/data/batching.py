"""Batches: length-bucketed, dynamically padded classification batches; packed fixed blocks for causal LM; packed
(or padded) supervised fine-tuning rows with response-only labels.

The order of an epoch is a pure function of (seed, epoch), so that a resumed run can rebuild it and skip
to the batch where it stopped.
"""

from __future__ import annotations

import torch

BUCKET_WINDOW = 50  # batches per sorting window: long enough to group lengths, short enough to stay random


def _generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def bucketed(lengths: list[int], batch_size: int, seed: int, epoch: int, shuffle: bool,
             bucket: bool) -> list[list[int]]:
    """Batches of row indices for rows of varied lengths. Training (shuffle): a seeded order; with `bucket`, rows of
    similar length batched together within windows of BUCKET_WINDOW batches (less padding), the batches shuffled.
    Evaluation: in order, sorted by length with `bucket` (metrics do not depend on order)."""
    n = len(lengths)
    if not shuffle:
        order = list(range(n))
        if bucket:
            order.sort(key=lambda i: lengths[i])
        return [order[i: i + batch_size] for i in range(0, n, batch_size)]
    g = _generator(seed, epoch)
    order = torch.randperm(n, generator=g).tolist()
    if not bucket:
        return [order[i: i + batch_size] for i in range(0, n, batch_size)]
    window = batch_size * BUCKET_WINDOW
    batches, carry = [], []
    for w in range(0, n, window):
        # A window's leftovers (fewer than a batch) join the next window, so that only the epoch's last batch
        # can be short: one batch shape per width, which a static-shape compile (one graph per shape) needs.
        chunk = sorted(carry + order[w: w + window], key=lambda i: lengths[i])
        full = len(chunk) if w + window >= n else len(chunk) // batch_size * batch_size
        batches.extend(chunk[i: i + batch_size] for i in range(0, full, batch_size))
        carry = chunk[full:]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def full_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    """Batches of rows of one width. Training (shuffle): full batches only — the epoch's last, partial batch is
    dropped (its rows come back in other epochs' shuffles), because a batch of another shape makes a compiled step
    compile again (issue 22 reported 21–30 s stalls on GPT-2 124M, H200; with the drop, 1,000 steps there had no
    10-step window over 2.3 s but the first checkpoint's 4.0 s), and padding it would spend a full step on a few
    rows. A split smaller than one batch keeps its one batch. Evaluation (no shuffle) keeps every row."""
    order = torch.randperm(n, generator=_generator(seed, epoch)).tolist() if shuffle else list(range(n))
    end = n // batch_size * batch_size if shuffle and n >= batch_size else n
    return [order[i: min(i + batch_size, end)] for i in range(0, end, batch_size)]


class ClassificationSplit:
    def __init__(self, input_ids: list[list[int]], labels: list[int], pad_id: int, pad_multiple: int | None = None,
                 max_width: int | None = None):
        self.input_ids = input_ids
        self.labels = labels
        self.pad_id = pad_id
        self.truncated = 0
        # batches padded to a multiple of pad_multiple tokens (never past max_width, the truncation length)
        self.pad_multiple, self.max_width = pad_multiple, max_width

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                bucket: bool = True) -> list[list[int]]:
        return bucketed([len(x) for x in self.input_ids], batch_size, seed, epoch, shuffle, bucket)

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        seqs = [self.input_ids[i] for i in idx]
        width = max(len(s) for s in seqs)
        if self.pad_multiple:
            rounded = -(-width // self.pad_multiple) * self.pad_multiple
            width = min(rounded, max(width, self.max_width or rounded))
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([self.labels[i] for i in idx], dtype=torch.long),
                "index": torch.tensor(idx, dtype=torch.long)}

    def count(self, idx: list[int]) -> tuple[int, int]:
        """(items, real tokens) of the batch of examples `idx`; the loss is normalised over items."""
        return len(idx), sum(len(self.input_ids[i]) for i in idx)


class LMSplit:
    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks  # [n_blocks, block_size] int64

    @classmethod
    def from_stream(cls, ids: list[int] | None, block_size: int, max_blocks: int | None = None):
        if not ids:
            return None
        n = len(ids) // block_size
        if max_blocks is not None:
            n = min(n, max_blocks)
        return cls(torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size))

    def __len__(self) -> int:
        return self.blocks.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.blocks.numel()

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                bucket: bool = True) -> list[list[int]]:
        return full_batches(len(self), batch_size, seed, epoch, shuffle)

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        x = self.blocks[idx]
        return {"input_ids": x, "labels": x, "index": torch.tensor(idx, dtype=torch.long)}

    def count(self, idx: list[int]) -> tuple[int, int]:
        """(predicted tokens, tokens) of the blocks `idx`: the loss is normalised over predicted tokens
        (block_size - 1 per row)."""
        t = self.blocks.shape[1]
        return len(idx) * (t - 1), len(idx) * t


class SFTSplit:
    """Supervised fine-tuning rows (data/sft.py): token ids, labels (-100 where no loss) and positions that restart at
    0 at each example of a packed row. Packed rows are `width` wide and carry no attention mask (transformers builds
    a block-diagonal causal mask from the positions); unpacked rows hold one example each, padded per batch."""

    def __init__(self, rows: list[list[tuple[list[int], list[int]]]], width: int, pad_id: int, packed: bool):
        n = len(rows)
        self.packed, self.pad_id = packed, pad_id
        self.blocks = torch.full((n, width), pad_id, dtype=torch.long)  # the ids (named like LMSplit's)
        self.labels = torch.full((n, width), -100, dtype=torch.long)
        self.positions = torch.zeros((n, width), dtype=torch.long)
        self.lengths = [0] * n
        self.examples = 0
        for r, row in enumerate(rows):
            at = 0
            for ids, labels in row:
                k = len(ids)
                self.blocks[r, at: at + k] = torch.tensor(ids, dtype=torch.long)
                self.labels[r, at: at + k] = torch.tensor(labels, dtype=torch.long)
                self.positions[r, at: at + k] = torch.arange(k)
                at += k
            self.positions[r, at:] = torch.arange(width - at)  # padding: a sequence of its own, never a target
            self.lengths[r] = at
            self.examples += len(row)
        self._targets = (self.labels[:, 1:] != -100).sum(1).tolist()

    def __len__(self) -> int:
        return self.blocks.shape[0]

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def n_targets(self) -> int:
        return sum(self._targets)

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                bucket: bool = True) -> list[list[int]]:
        if self.packed:
            return full_batches(len(self), batch_size, seed, epoch, shuffle)
        return bucketed(self.lengths, batch_size, seed, epoch, shuffle, bucket)

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        width = self.blocks.shape[1] if self.packed else max(self.lengths[i] for i in idx)
        out = {"input_ids": self.blocks[idx, :width], "labels": self.labels[idx, :width],
               "position_ids": self.positions[idx, :width], "index": torch.tensor(idx, dtype=torch.long)}
        if not self.packed:
            out["attention_mask"] = (torch.arange(width)[None, :] <
                                     torch.tensor([self.lengths[i] for i in idx])[:, None]).long()
        return out

    def count(self, idx: list[int]) -> tuple[int, int]:
        """(predicted tokens, real tokens) of the rows `idx`: the loss is normalised over the trained-on tokens."""
        return sum(self._targets[i] for i in idx), sum(self.lengths[i] for i in idx)
