"""Layer-wise relevance propagation (Bach et al., "On Pixel-Wise Explanations for Non-Linear
Classifier Decisions by Layer-Wise Relevance Propagation", PLOS ONE 2015; rule choice after
Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019; composites of Zennit,
Anders et al. 2021).

Relevance starts as ``R = onehot(c) · S_c`` at the logits and is redistributed layer by layer
with ``z_jk = a_j w_jk``; composites (Zennit's, with their defaults) choose the rule per layer:

* ``epsilon_plus_flat`` (default): dense layers ε (``R_j = Σ_k z_jk / (z_k + ε sign z_k) R_k``),
  convolutions z⁺ (= α1β0, only positive contributions), first layer flat (uniform over the
  receptive field);
* ``epsilon_plus``: the same without the special first layer;
* ``epsilon_alpha2_beta1[_flat]``: convolutions α2β1;
* ``epsilon_gamma_box``: convolutions γ (0.25), first convolution z^B with the pixel box
  ``[(0 − mean)/std, (1 − mean)/std]``;
* ``epsilon``: ε everywhere (conserves relevance on a bias-free ReLU network: Σ R ≈ S_c).

``epsilon`` is the ε of the ε-rule layers; the stabiliser of the other rules is Zennit's 1e-6.
Batch norms are merged into the preceding layer; a batch norm that follows no layer with as
many outputs (DenseNet's, after a concatenation) is ruled on its own as the per-channel affine
map it is in eval mode, with the ε-rule (``lrp_plan.affine_rule``; no Zennit canonizer covers
it); ReLU and max pooling pass relevance; sums
(residual additions) and average pooling redistribute it in proportion to their inputs (Zennit's
``Norm``, without its 1e-6 stabiliser). Implementation: the rules as modified gradients
(``lrp_rules``), one forward and one backward for the whole batch, each row seeded with its own
target; the maps equal Zennit's ``Gradient`` attributor with the same composite and its
ResNet / VGG canonizers to float64 precision (tests), with two deliberate differences of order
1e-5: sums and average pools get no 1e-6 stabiliser (none is needed without a division), and
the batch-norm merge is exact (Zennit's merged norm still computes ``x / sqrt(1 + eps)``).
Rules are cached per model (invalidated when a parameter changes) and the layer replacement
lasts one forward pass. Vision transformers (torchvision's, timm's and Hugging Face's ViT,
``nn.MultiheadAttention``, ``nn.LayerNorm``) and ConvNeXt get CP-LRP / AttnLRP's rules
(``lrp_transformer``). Architectures with
operations that have no LRP rule (other activations, gates, a softmax output) are refused
(``lrp_check``).

Pixel map: the relevance **summed** over colour channels (sign kept, not normalised), so the
map sums to the total input relevance. The hybrid paper averages instead; the two differ only by
the factor 3, which normalisation removes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers.base import (
    ExplainerError,
    Explanation,
    ModelHandle,
    ProgressFn,
    no_progress,
    resolve_targets,
)
from workers.explainers.propagation.lrp_check import check_graph
from workers.explainers.propagation.lrp_plan import Plan, plan_for
from workers.explainers.registry import register

OUTPUT_TOLERANCE = 1e-3
"""Relative difference allowed between the merged model's logits and the model's own."""


def validate(plan: Plan, handle: ModelHandle, inputs: Tensor, x: Tensor, logits: Tensor) -> None:
    """First call for a plan: check the graph and that merging kept the model's output."""
    try:
        nonneg = check_graph(logits, x, plan.emits_relevance)
        with torch.inference_mode():
            reference = handle.model(inputs)
        scale = reference.abs().max().clamp(min=1e-6)
        if (logits.detach() - reference).abs().max() > OUTPUT_TOLERANCE * scale:
            raise ExplainerError(
                "LRP: merging the batch norms changed the model's output (a batch norm that "
                "does not act on the layer registered before it?); architecture not supported"
            )
    except ExplainerError as error:
        plan.error = str(error)
        raise
    plan.extra["nonneg"] = nonneg


INSTEAD = "; Grad-CAM and the perturbation methods (RISE, occlusion) explain any model"
"""What a refusal suggests instead."""


def lrp_relevance(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    composite: str = "epsilon_plus_flat",
    epsilon: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Input relevance ``(B, C, H, W)`` of each row's target (a top-1 request: of the class
    the row's logits rank first) and the logits ``(B, K)``."""
    plan = plan_for(handle.model, composite, epsilon, handle.mean, handle.std)
    if plan.error is not None:
        raise ExplainerError(plan.error + INSTEAD)
    first = not plan.validated
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        with plan.installed():
            logits = handle.model(x)
        if first:
            try:
                validate(plan, handle, inputs, x, logits)
            except ExplainerError as error:
                raise ExplainerError(f"{error}{INSTEAD}") from None
        targets = resolve_targets(targets, logits)
        if targets.min() < 0 or targets.max() >= logits.shape[1]:
            raise ExplainerError(f"target outside the model's {logits.shape[1]} classes")
        seed = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        (grad,) = torch.autograd.grad(logits, x, grad_outputs=seed)
    if first:  # the cheaper rule forms apply from the next call on (same values)
        for name, flag in plan.extra["nonneg"].items():
            plan.all_rules()[name].nonneg = flag
        plan.validated = True
    relevance = grad if plan.emits_relevance else x.detach() * grad
    return relevance, logits.detach()


@register("lrp")
def lrp(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    composite: str = "epsilon_plus_flat",
    epsilon: float = 1e-6,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """LRP maps ``(B, H, W)``: input relevance summed over channels."""
    checked = plan_for(handle.model, composite, epsilon, handle.mean, handle.std).validated
    relevance, logits = lrp_relevance(handle, inputs, targets, composite=composite, epsilon=epsilon)
    targets = resolve_targets(targets, logits)
    saliency = relevance.sum(dim=1).float()
    totals = saliency.flatten(1).sum(dim=1).tolist()
    scores = logits.gather(1, targets.view(-1, 1))[:, 0].tolist()
    progress(1, 1)
    meta = [
        {
            "composite": composite,
            "forward_passes": 1 if checked else 2,  # a plan's first call checks the merge
            "backward_passes": 1,
            "relevance_total": total,
            "target_logit": score,
        }
        for total, score in zip(totals, scores, strict=True)
    ]
    return Explanation(saliency, meta, logits.float())
