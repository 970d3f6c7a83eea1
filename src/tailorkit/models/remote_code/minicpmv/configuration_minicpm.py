"""Tiny stand-in for openbmb/MiniCPM-V-4_5's remote configuration: a Qwen3 config plus the vision fields
(``query_num``, ``image_size``, ``patch_size``, ``slice_config``, ``vision_config`` as a SigLIP config,
``use_image_id``, ``vision_batch_size``, ``drop_vision_last_layer``)."""

from transformers import PreTrainedConfig, Qwen3Config, SiglipVisionConfig


class MiniCPMVSliceConfig(PreTrainedConfig):
    model_type = "minicpmv"

    def __init__(self, patch_size=14, max_slice_nums=9, scale_resolution=448, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.max_slice_nums, self.scale_resolution = patch_size, max_slice_nums, scale_resolution


class MiniCPMVConfig(Qwen3Config):
    model_type = "minicpmv"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, use_cache=True, query_num=64, image_size=448, drop_vision_last_layer=True,
                 batch_vision_input=True, slice_config=None, vision_config=None, use_image_id=True,
                 vision_batch_size=16, **kwargs):
        self.use_cache, self.query_num, self.image_size = use_cache, query_num, image_size
        self.drop_vision_last_layer, self.batch_vision_input = drop_vision_last_layer, batch_vision_input
        self.use_image_id, self.vision_batch_size = use_image_id, vision_batch_size
        if isinstance(slice_config, PreTrainedConfig):
            slice_config = slice_config.to_dict()
        self.slice_config = MiniCPMVSliceConfig(**(slice_config or {"max_slice_nums": 1}))
        self.slice_mode = True
        if isinstance(vision_config, dict):
            vision_config = SiglipVisionConfig(**vision_config)
        self.vision_config = vision_config or SiglipVisionConfig()
        self.patch_size = self.vision_config.patch_size
        super().__init__(**kwargs)
