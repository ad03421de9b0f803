"""One-time check of a model's autograd graph under the LRP rules.

The modified-gradient form of LRP is exact when, between the ruled layers, the graph holds only
operations whose gradient *is* their LRP rule: ReLU-type activations and max pooling (relevance
passes to the active input), linear operations without a constant term (sums, means, average
pooling, reshaping, concatenation and splits, cyclic shifts, a LayerNorm's centring: Zennit's
``Norm``/``Pass``), and products with a constant (scaling, attention probabilities held
constant). Any other operation (a sigmoid gate, a product of two activations, a functional
convolution, an un-merged batch norm, a softmax in the model) would give a map that no Zennit
composite defines, so the request is refused with the name of the operation instead.

The same walk tells which ruled layers only ever see non-negative inputs (fed by a ReLU, possibly
through pooling, sums and reshapes), so the cheaper form of their rule applies, and checks that
a first-layer rule that returns relevance itself (``Flat``, ``ZBox``) is the only consumer of the
model input.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from workers.explainers.base import ExplainerError
from workers.explainers.propagation.lrp_rules import RuleFunction

Node = Any

SIGN_KEEPING = frozenset(
    {
        "MaxPool2DWithIndicesBackward0",
        "AdaptiveMaxPool2DBackward0",
        "AvgPool2DBackward0",
        "AdaptiveAvgPool2DBackward0",
        "MeanBackward0",
        "MeanBackward1",
        "SumBackward0",
        "SumBackward1",
        "AddBackward0",
        "CatBackward0",
        "StackBackward0",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "CloneBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "UnsqueezeBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "TBackward0",
        "ExpandBackward0",
        "ConstantPadNdBackward0",
        "AsStridedBackward0",  # a view of a channels-last tensor (how models run on CUDA)
        "AsStridedBackward1",
        "AliasBackward0",  # x[:, 0:], a full slice
        "RollBackward0",  # Swin's cyclic shift of its windows
        "SplitBackward0",  # x.chunk(2, dim=1): ShuffleNet's two branches
        "SplitWithSizesBackward0",
    }
)
"""Linear, constant-free operations: gradient = LRP rule; non-negative in, non-negative out."""
LINEAR = frozenset({"SubBackward0"})
"""Linear, constant-free operations that can change signs (a LayerNorm's centring)."""
PRODUCTS = frozenset({"MulBackward0", "BmmBackward0", "MmBackward0"})
"""Products: linear when one factor is a constant (attention probabilities held constant)."""
RECTIFIERS = frozenset({"ReluBackward0"})
"""Operations with a non-negative output."""
ALLOWED = SIGN_KEEPING | LINEAR | RECTIFIERS | {"LeakyReluBackward0", "LeakyReluBackward1"}


def children(node: Node) -> list[Node]:
    """The nodes that ``node`` back-propagates into (``None`` for inputs without gradient)."""
    return [child for child, _ in node.next_functions]


def judge(node: Node, x: Tensor) -> str | None:
    """Why ``node`` breaks the rules, or ``None`` if it is fine."""
    name = type(node).__name__
    kids = children(node)
    if isinstance(node, RuleFunction._backward_cls) or name in RECTIFIERS:
        return None
    if name == "AccumulateGrad":
        return None if node.variable is x else "a parameter used outside a ruled layer"
    if name == "AddBackward0" and any(kid is None for kid in kids):
        return "an added constant (a bias outside a ruled layer)"
    if name in ALLOWED:
        return None
    if name in PRODUCTS:
        if sum(kid is not None for kid in kids) == 1:
            return None  # scaling by a constant, mixing with constant weights
        return "a product of two activations (a gate or attention)"
    if name == "DivBackward0" and kids[0] is not None and kids[1] is None:
        return None  # division by a constant
    return f"operation {name.removesuffix('Backward0')}"


def walk(root: Node, x: Tensor) -> tuple[list[Node], dict[Node, int]]:
    """Every node reachable from ``root`` (checked) and how many edges lead into each."""
    seen: set[Node] = set()
    order: list[Node] = []
    fan_in: dict[Node, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        order.append(node)
        problem = judge(node, x)
        if problem is not None:
            raise ExplainerError(
                f"LRP: the model's forward contains {problem}, for which no LRP rule is "
                "defined; architecture not supported"
            )
        for kid in children(node):
            if kid is not None:
                fan_in[kid] = fan_in.get(kid, 0) + 1
                stack.append(kid)
    return order, fan_in


def is_nonneg(node: Node, memo: dict[Node, bool]) -> bool:
    """Whether the tensor produced by ``node`` is non-negative by construction."""
    if node is None:
        return False
    if node not in memo:
        name = type(node).__name__
        if name in RECTIFIERS:
            memo[node] = True
        elif name in SIGN_KEEPING:
            memo[node] = False  # provisional, guards against cycles
            memo[node] = all(is_nonneg(kid, memo) for kid in children(node) if kid is not None)
        else:
            memo[node] = False
    return memo[node]


def check_graph(logits: Tensor, x: Tensor, emits_relevance: bool) -> dict[str, bool]:
    """Validate the graph of ``logits``; return, per ruled layer, whether its input is ≥ 0."""
    if logits.grad_fn is None:
        raise ExplainerError("LRP: the model output does not depend on its input")
    order, fan_in = walk(logits.grad_fn, x)
    memo: dict[Node, bool] = {}
    nonneg: dict[str, bool] = {}
    emitters = []
    for node in order:
        if isinstance(node, RuleFunction._backward_cls):
            rule = node.rule
            first = children(node)[0]
            ok = is_nonneg(first, memo)
            nonneg[rule.name] = nonneg.get(rule.name, True) and ok
            if rule.emits_relevance:
                emitters.append((node, first))
    if not nonneg:
        raise ExplainerError("LRP: no ruled layer was executed in the forward pass")
    if emits_relevance:
        source = [n for n in order if type(n).__name__ == "AccumulateGrad"]
        single = len(emitters) == 1 and len(source) == 1 and emitters[0][1] is source[0]
        if not single or fan_in.get(source[0], 0) != 1:
            raise ExplainerError(
                "LRP: the first-layer rule (flat / z-box) needs the model input to feed the "
                "first convolution or dense layer directly and only; use a composite without "
                "a special first layer (e.g. epsilon_plus)"
            )
    return nonneg
