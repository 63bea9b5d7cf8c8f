"""Layer 0, the library every stage uses: errors, atomic IO, the CLI generator, device/precision rules, NVML,
fingerprints, statistics, run-directory facts, GPU table, NLTK data.  Imports nothing else of sftbench."""
