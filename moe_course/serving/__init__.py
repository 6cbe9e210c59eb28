"""Serving an MoE: generation with a KV cache and routing traces, expert caches and their eviction policies,
offloaded experts, speculative loading, and the memory and bandwidth model of decoding. One concept per module:

- ``generate``  incremental decoding of ``TinyLM`` (prefill, then one token at a time) recording each layer's routing
- ``cache``     expert caches on routing traces: LRU, LFU and Belady's optimal offline policy
- ``offload``   an MoE layer with its experts in a slow tier and a cache of them in a fast one
- ``prefetch``  guessing the next layer's experts from the previous layer's output, and the guesses' recall
- ``memory``    resident versus touched bytes, distinct experts per batch, memory- or compute-bound decoding,
                moving a missing expert versus computing it where it is
"""
