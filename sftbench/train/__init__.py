"""The train stage.  `train_hw_parallel.py` at the repository root is the homework-compatible entry point.

config.py      TrainConfig (every setting once) and its CLI (sftbench/core/cli.py), --effective_batch arithmetic
loop.py        train(): the loop, on one screen
setup.py       what the loop calls before, around and after each step (validation, data, model, resume, logs)
engines.py     ReferenceEngine / FastEngine behind one `window()` (one accumulation window forward/backward)
step.py        one optimizer step (window, clip, step, schedule), the optimizer + schedule, the model set-up: also the benches'
fast_model.py  the fast engine's packed forward (Llama blocks from sftbench/model/llama.py)
checkpoint.py  checkpoint IO (atomic, no pickles), list_checkpoints(run_dir)
oom.py         the CUDA out-of-memory policy: release, shrink and retry, or advise and exit 3
stop.py        stopping early: Ctrl-C/SIGTERM (130/143), non-finite loss or weights (4), the resume command
dist.py        rank / world size and the two collectives the trainer uses
"""
