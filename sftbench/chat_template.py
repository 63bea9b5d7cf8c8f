"""Chat templates the project ships.

PLAIN_CHATML is the homework's template: ChatML with no injected system prompt.  It is used when a
tokenizer has no template (the SmolLM2 *base* model has none) and for the offline demo model, so
training and IFEval see the same format.  Special tokens: <|im_start|> opens a turn, <|im_end|> ends it.
"""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

PLAIN_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
