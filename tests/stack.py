"""The stack the tests run: `paylayer.ops.stack`, shared with the benchmarks."""

from paylayer.ops.processes import free_port
from paylayer.ops.stack import Stack, make_stack

__all__ = ["Stack", "free_port", "make_stack"]
