"""Layer 6, the composite training settings (torch-free): TrainConfig, composed of the sub-configs that the layers
below define (DataConfig and AugmentConfig in sftbench.data) and its own (OptimConfig, EngineConfig, LogConfig in
train.py).  Each value has one default, one help text and one check, where it is defined; every CLI is generated
from these dataclasses (sftbench/core/cli.py)."""
