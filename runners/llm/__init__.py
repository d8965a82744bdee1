"""The ``llm`` runner family: Llama-family text generation via transformers, continuously batched.

``runner`` (the ``Runner`` class; imports no torch at module level), ``engine`` (the batching loop on
its own thread), ``sampling`` (the logits processors, in one documented order) and ``detokenize``
(streaming text: whole characters, stop sequences held back).
"""
