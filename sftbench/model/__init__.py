"""Layer 2, models: Llama maths shared by training and decoding (llama), the ONE chat-template parser
(chat_template), the offline SmolLM2 weights (offline), the tiny test model (tiny)."""
