"""Triton's interpreter when Triton was imported before :mod:`moe_course.kernels`.

``@triton.jit`` chooses when it decorates: an interpreted function if ``triton.knobs.runtime.interpret``
(``TRITON_INTERPRET``) is true, else a compiled ``JITFunction`` (``triton/runtime/jit.py``, ``jit``). Part of
``triton.language`` is itself written in Triton (``tl.zeros``, ``tl.sum``, ``tl.cdiv``, ... in
``triton/language/standard.py``) and is decorated when ``triton`` is first imported. If that happened before
``TRITON_INTERPRET`` was set (the learner, ``torch._inductor`` or another library imported Triton first), those
functions are compiled ones, and an interpreted kernel that calls one fails with "Cannot call @triton.jit'd outside
of the scope of a kernel". :func:`interpret_triton_language` re-decorates them as importing Triton afterwards would.
"""

import sys

import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


def interpret_triton_language() -> None:
    """Replace every compiled function of ``triton.language`` by an interpreted one, wherever the package holds it.

    Every holder matters: the functions call one another through their module's globals, the interpreter compares
    reduction combiners with ``tl.standard``'s (``_sum_combine``, ...), and ``tl.tensor`` has some as methods
    (``x.sum()``). Nothing to do when Triton was first imported with the interpreter on."""
    modules = [m for name, m in list(sys.modules.items()) if name.split(".")[:2] == ["triton", "language"] and m]
    # keyed by id (a JITFunction hashes its source); holding the originals in ``compiled`` keeps their ids unique
    compiled = {id(f): f for m in modules for f in vars(m).values() if isinstance(f, JITFunction)}
    interpreted = {key: InterpretedFunction(f.fn) for key, f in compiled.items()}
    for module in modules:
        for name, value in list(vars(module).items()):
            if id(value) in interpreted:
                setattr(module, name, interpreted[id(value)])
    for name, value in list(vars(tl.tensor).items()):
        if id(value) in interpreted:
            setattr(tl.tensor, name, _as_method(interpreted[id(value)]))


def _as_method(fn):
    """``fn`` wrapped in a plain function, so that as a method of ``tl.tensor`` it receives the tensor: an
    interpreted function is no descriptor, and the class attribute alone would drop ``self`` (Triton wraps its
    interpreted tensor methods the same way, ``_tensor_member_fn`` in ``triton/language/core.py``)."""

    def method(*args, **kwargs):
        return fn(*args, **kwargs)

    return method
