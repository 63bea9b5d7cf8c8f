"""The data stage: records -> normalised rounds -> masked examples (input_ids, labels) -> packed rows.

records.py (reading, file:line, bad-record policy) -> normalise.py (roles, ShareGPT, rounds; ALL_ROUNDS = -1)
-> masking.py (chat template, (input_ids, labels), truncation) -> build.py (build_examples, DataStats) with
cache.py (tokenised-data cache); collate.py (padding) and packing.py (fast engine) make batches;
cli.py (`python conversation_func.py`).  The tokenizer and its chat template: sftbench.model.hf.load_tokenizer.
`conversation_func.py` at the repository root is the homework-compatible entry point."""
