"""sftbench: the library behind the laptop-GPU SFT + IFEval workbench.

The pipeline stays visible from the repository root:
data (conversation_func.py) -> loss (loss_functions.py) -> train (train_hw_parallel.py)
-> eval (ifeval/) -> analysis (analysis/).  This package holds the shared pieces.
"""

__version__ = "0.1.0"
