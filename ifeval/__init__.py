"""IFEval for SFT checkpoints: typed configs (config), prompt sets (data), generation behind one interface
(generate: hf and fast backends; fast_generate), lm-eval's checkers (scoring), the results schema shared
by writers and readers (results), one checkpoint end to end (run; `bash ifeval/run.sh MODEL OUT`) and a
whole run (sweep)."""
