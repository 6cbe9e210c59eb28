"""Serving an MoE: generation with a KV cache and routing traces. One concept per module:

- ``generate``  incremental decoding of ``TinyLM`` (prefill, then one token at a time) recording each layer's routing
"""
