"""Typed configs and their loading from YAML and the command line."""

from .distributed import DistributedArgs
from .train import DataArgs, ModelArgs, SftConfig, TrainArgs, TunerArgs
from .loading import build_config, flatten_layout, read_yaml

__all__ = ["DataArgs", "DistributedArgs", "ModelArgs", "SftConfig", "TrainArgs", "TunerArgs", "build_config", "flatten_layout",
           "read_yaml"]
