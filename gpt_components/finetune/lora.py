"""lora finetuning (stub: filled in by the finetuning issue)."""

__all__: list[str] = []
