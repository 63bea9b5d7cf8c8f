"""Layer 6, benchmark tasks: prompt sets (data, prompts/) and their scorers (scoring: IFEval via lm-eval's checkers;
ifbench).  Generation belongs to the engine; a task is data + scorer."""
