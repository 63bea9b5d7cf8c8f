"""IFEval for SFT checkpoints: prompt sets (data), generation (generate, fast_generate), lm-eval's checkers
(scoring), one checkpoint end to end (run; `bash ifeval/run.sh MODEL OUT`) and a whole run (sweep)."""
