"""Where a saved LoRA adapter's base model is (light: read by the loader without the training code)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TrainoptError
from ..meta import read_meta


def base_of(adapter_dir: Path) -> Path | None:
    """The base model folder an adapter folder names (trainopt.json's, else adapter_config.json's)."""
    ref = (read_meta(adapter_dir).get("lora") or {}).get("base")
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainoptError(f"{adapter_dir / 'adapter_config.json'} is not valid JSON "
                            f"({str(e).splitlines()[0][:100]}); restore the adapter folder") from None
    ref = ref or (config.get("base_model_name_or_path") if isinstance(config, dict) else None)
    if ref is not None and not isinstance(ref, str):
        raise TrainoptError(f"{adapter_dir}: the adapter's base model is not a path ({ref!r}); restore the folder")
    return Path(ref) if ref else None
