"""The data stage: records -> normalised rounds -> masked examples (input_ids, labels) -> packed rows.
`conversation_func.py` at the repository root is the homework-compatible entry point."""
