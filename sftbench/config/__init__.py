"""Layer 1, the composite training settings (torch-free): TrainConfig, built from the sub-configs of the layers below.  Each value has one
default, one help text and one validation, here; every CLI is generated from these dataclasses."""
