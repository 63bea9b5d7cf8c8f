"""Layer 1, models: Llama maths shared by training and decoding (llama), the ONE chat-template parser
(chat_template), Hugging Face loading -- tokenizer with that template, model, stop ids, tokenizer fingerprints
(hf) --, the offline SmolLM2 weights (offline), the tiny test model (tiny)."""
