"""Tiny stand-in for echo840/Monkey-Chat's remote configuration (Qwen-VL layout)."""

from transformers import PreTrainedConfig


class MonkeyConfig(PreTrainedConfig):
    model_type = "monkey"

    def __init__(self, vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, layer_norm_epsilon=1e-6, visual=None, image_pad_id=None, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.layer_norm_epsilon, self.visual, self.image_pad_id = layer_norm_epsilon, visual or {}, image_pad_id
        super().__init__(**kwargs)
