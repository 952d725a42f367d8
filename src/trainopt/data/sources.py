"""Data sources: jsonl, csv, txt, parquet, a Hugging Face `datasets` folder saved to disk, and the built-ins.

Every reader returns rows as plain dicts. A source may carry its own splits (a folder with train/validation/
test files, a DatasetDict, the built-in sets); trainopt uses them where they exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
SUFFIX_FORMAT = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
                 ".txt": "txt", ".text": "txt", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class RawData:
    """Rows per split as read from the source, before cleaning and splitting."""

    train: list[dict]
    validation: list[dict] | None = None
    test: list[dict] | None = None
    text_column: str = "text"
    label_column: str | None = "label"
    decode_replaced: int = 0  # rows whose undecodable bytes were replaced by U+FFFD
    description: str = ""
    notes: list[str] = field(default_factory=list)


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() \
                or (path / "dataset_info.json").is_file():
            return "datasets"
        formats = {SUFFIX_FORMAT.get(p.suffix.lower()) for p in path.iterdir() if p.is_file()} - {None}
        if len(formats) == 1:
            return formats.pop()
        raise DataError(f"cannot tell the format of folder {path} (found {sorted(formats) or 'no data files'}); "
                        "set data.format")
    fmt = SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot tell the format of {path} from its suffix; set data.format "
                        "(jsonl, csv, txt, parquet, datasets)")
    return fmt


def _decode(raw: bytes, where: str, errors: str) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as e:
        if errors == "strict":
            raise DataError(f"{where}: invalid UTF-8 at byte {e.start}; fix the file or set "
                            "data.encoding_errors: replace") from None
        return raw.decode("utf-8", errors="replace"), True


def _lone_surrogates(row: dict, where: str, errors: str) -> int:
    """JSON may spell a lone UTF-16 surrogate (\\ud800), which no UTF-8 text holds and the tokenizers cannot
    encode: refused under encoding_errors: strict, replaced by U+FFFD otherwise. Returns the values replaced."""
    fixed = 0
    for k, v in row.items():
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                if errors == "strict":
                    raise DataError(f"{where}: column '{k}' holds a lone surrogate escape at character {e.start}; "
                                    "fix the file or set data.encoding_errors: replace") from None
                row[k] = v.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                fixed += 1
    return fixed


def read_jsonl(path: Path, errors: str) -> tuple[list[dict], int]:
    rows, replaced = [], 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            text, bad = _decode(raw, f"{path}:{lineno}", errors)
            replaced += bad
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") \
                    from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: JSON nested too deeply; each line must be one flat JSON "
                                "object") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            bad = _lone_surrogates(row, f"{path}:{lineno}", errors)
            replaced += bad
            rows.append(row)
    return rows, replaced


def read_csv(path: Path, errors: str) -> tuple[list[dict], int]:
    import pandas as pd

    raw = path.read_bytes()
    text, bad = _decode(raw, str(path), errors)
    if not text.strip():
        return [], 0
    import io

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises several parser error types
        raise DataError(f"{path}: cannot parse as CSV ({str(e).splitlines()[0]})") from None
    replaced = int(df.apply(lambda c: c.str.contains("\ufffd", regex=False)).any(axis=1).sum()) if bad else 0
    return df.to_dict("records"), replaced


def read_parquet(path: Path) -> list[dict]:
    import pandas as pd

    try:
        return pd.read_parquet(path).to_dict("records")
    except Exception as e:
        raise DataError(f"{path}: cannot read as parquet ({str(e).splitlines()[0]})") from None


def read_txt(path: Path, errors: str) -> tuple[list[dict], int]:
    """A text file is one document (language modelling); a folder of text files is one document each."""
    text, bad = _decode(path.read_bytes(), str(path), errors)
    return [{"text": text, "document": path.stem}], int(bad)


def read_file(path: Path, fmt: str, errors: str) -> tuple[list[dict], int]:
    if fmt == "jsonl":
        return read_jsonl(path, errors)
    if fmt == "csv":
        return read_csv(path, errors)
    if fmt == "parquet":
        return read_parquet(path), 0
    if fmt == "txt":
        return read_txt(path, errors)
    raise DataError(f"format {fmt} cannot read the single file {path}")


def read_datasets_folder(path: Path) -> dict[str, list[dict]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: cannot load as a saved `datasets` folder ({str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        return {name: ds[name].to_list() for name in ds}
    return {"train": ds.to_list()}


def read_source(path: Path, fmt: str, errors: str) -> tuple[dict[str, list[dict]], int]:
    """Read a path into {split: rows}. A folder of files named after splits gives those splits."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "datasets":
        return read_datasets_folder(path), 0
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and SUFFIX_FORMAT.get(p.suffix.lower()) == fmt)
        if not files:
            raise DataError(f"folder {path} holds no {fmt} files")
        by_split = {SPLIT_NAMES.get(p.stem.lower()) for p in files}
        unnamed = [p.name for p in files if SPLIT_NAMES.get(p.stem.lower()) is None]
        if unnamed and len(unnamed) < len(files):  # e.g. train.jsonl + tset.jsonl: the typo would train on the test
            raise DataError(f"folder {path} mixes split files with files of no split name ({', '.join(unnamed[:3])})"
                            f"; name every file after its split ({', '.join(sorted(set(SPLIT_NAMES)))}) or none of "
                            "them (then all are training data)")
        splits: dict[str, list[dict]] = {}
        replaced = 0
        for p in files:
            rows, bad = read_file(p, fmt, errors)
            replaced += bad
            # Files named train/validation/test are splits; any other names are all training data.
            split = SPLIT_NAMES.get(p.stem.lower()) if None not in by_split else "train"
            splits.setdefault(split, []).extend(rows)
        return splits, replaced
    rows, replaced = read_file(path, fmt, errors)
    return {"train": rows}, replaced
