"""LoRA: low-rank adapters trained on a frozen model through the PEFT library (docs/methods/lora.md)."""
