"""Where a saved LoRA adapter's base model is (light: read by the loader without the training code)."""

from __future__ import annotations

import json
from pathlib import Path


def base_of(adapter_dir: Path) -> Path | None:
    """The base model folder an adapter folder names (trainopt.json's, else adapter_config.json's)."""
    meta = adapter_dir / "trainopt.json"
    ref = json.loads(meta.read_text()).get("lora", {}).get("base") if meta.is_file() else None
    ref = ref or json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return Path(ref) if ref else None
