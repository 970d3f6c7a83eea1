"""Text-only decoder families (the whole model is the LLM)."""

from .family import Family
from .tiny import build_qwen2

QWEN2 = Family(name="qwen2", model_types=("qwen2",), auto_class="AutoModelForCausalLM", llm=("model",),
               build_tiny=build_qwen2)
