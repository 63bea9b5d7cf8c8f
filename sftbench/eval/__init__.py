"""Layer 9, evaluation: one checkpoint end to end (run; `bash ifeval/run.sh`), every checkpoint of a run (sweep),
the results schema shared by writers and readers (results)."""
