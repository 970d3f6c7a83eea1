"""Tiny stand-in for echo840/Monkey-Chat's remote configuration (Qwen-VL layout): the QWen fields plus
``visual`` (image_size, patch_size, width, layers, heads, n_queries, and image_start_id: the id of <img>,
followed by </img> and <imgpad>)."""

from transformers import PreTrainedConfig


class MonkeyConfig(PreTrainedConfig):
    model_type = "monkey"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=151936, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 intermediate_size=22016, layer_norm_epsilon=1e-6, initializer_range=0.02, use_cache=True,
                 bf16=False, fp16=False, fp32=False, visual=None, tie_word_embeddings=False, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.layer_norm_epsilon, self.initializer_range, self.use_cache = layer_norm_epsilon, initializer_range, use_cache
        self.bf16, self.fp16, self.fp32 = bf16, fp16, fp32
        self.visual = visual or {}
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
