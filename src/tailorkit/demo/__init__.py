"""The embedded default: a tiny vision-language model fine-tuned on a synthetic shapes task."""
