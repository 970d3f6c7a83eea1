"""The trainer, losses, callbacks and the sft/pt recipes."""
