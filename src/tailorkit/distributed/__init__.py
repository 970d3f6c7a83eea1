"""Multi-process training: launching under torchrun, DeepSpeed presets, FSDP2, sequence parallel, media collectives."""
