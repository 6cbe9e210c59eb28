"""Where the experts live, and how tokens reach them: the MoE layer's exchange strategy.

An exchange tells the layer which of the E experts this process holds (:meth:`shard`), how many tokens a capacity
is computed from (:meth:`capacity_tokens`), and runs the expert block on the routed tokens (:meth:`__call__`).
:class:`LocalExchange` holds every expert and moves nothing; the expert-parallel exchange
(:class:`moe_course.parallel.AllToAllExchange`) holds E/P of them and moves rows between ranks.
"""

from dataclasses import dataclass

from .experts import Experts


@dataclass(frozen=True)
class Traffic:
    """Rows one dispatch moved, per rank of the expert-parallel group (the combine moves the same back):
    ``sent_rows[s]`` to rank s, ``received_rows[s]`` from rank s, each row ``row_bytes`` bytes."""

    sent_rows: list
    received_rows: list
    row_bytes: int

    @property
    def sent_bytes(self) -> list:
        return [r * self.row_bytes for r in self.sent_rows]

    @property
    def received_bytes(self) -> list:
        return [r * self.row_bytes for r in self.received_rows]


class LocalExchange:
    """Every expert on this process: the backend runs on the tokens where they are."""

    local = True

    def shard(self, E: int) -> tuple:
        """(global id of the first expert held here, experts held here)."""
        return 0, E

    def capacity_tokens(self, T: int) -> int:
        """The T that expert capacity ``ceil(cf · T · k / E)`` is computed from: this batch's."""
        return T

    def __call__(self, x, indices, weights, keep, experts: Experts, backend, capacity: int | None) -> tuple:
        """(y [T, d_model], None: nothing moved). ``keep`` already holds the capacity limit."""
        return backend(x, indices, weights, keep, experts), None
