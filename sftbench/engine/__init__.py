"""Layer 5, compute: the training forward (fast_model, row_graph) and the decode engine every caller of
generation uses (generate: the Generator interface; fast_generate, fast_llama, fast_attention: the CUDA decoder)."""
