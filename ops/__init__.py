"""The op library. Importing it registers every op (see registry.REGISTRY)."""

from graphc.ops import (  # noqa: F401 - imported for registration
    activations,
    conv,
    dense,
    dropout,
    fused,
    losses,
    math,
    norm,
    pool,
    recurrent,
    tensor,
    upsample,
)
from graphc.ops.registry import REGISTRY, all_ops, get_op

__all__ = ["REGISTRY", "all_ops", "get_op"]
