"""Which architectures LRP explains, and the clear refusal (HTTP 422) for the others."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.explainers.propagation.prop_models import (
    CLASSES,
    forward_overrides,
    handle_for,
    images,
)
from workers.explainers import ExplainerError
from workers.explainers.propagation.lrp import lrp_relevance


class Residual(nn.Module):
    """A residual block written by hand (no torchvision class, no Zennit canonizer)."""

    def __init__(self, channels: int, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class Head(nn.Module):
    """Stem, a middle part, global average pooling and a dense classifier."""

    def __init__(self, middle: nn.Module, act: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.act = act()
        self.middle = middle
        self.fc = nn.Linear(8, CLASSES, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.middle(self.act(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def conserved(model: nn.Module, composite: str = "epsilon", epsilon: float = 1e-9) -> None:
    """Σ R = target logit (bias-free model, ε rule; ε takes its share of small logits)."""
    model = model.double().eval()
    handle = handle_for(model)
    x, targets = images(2, dtype=torch.float64), torch.tensor([0, 3])
    relevance, logits = lrp_relevance(handle, x, targets, composite=composite, epsilon=epsilon)
    expected = logits.gather(1, targets.view(-1, 1))[:, 0]
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), expected, rtol=1e-6, atol=1e-9)


def test_hand_written_residual_additions_conserve_relevance() -> None:
    conserved(Head(nn.Sequential(Residual(8), Residual(8))))


def test_leaky_relu_conserves_relevance() -> None:
    conserved(Head(nn.Sequential(Residual(8)), act=lambda: nn.LeakyReLU(0.1)))


def test_concatenation_and_reuse_of_the_input_work_without_a_special_first_layer() -> None:
    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Conv2d(3, 5, 3, padding=1, bias=False)
            self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.fc = nn.Linear(8, CLASSES, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            h = torch.cat([torch.relu(self.a(x)), x], dim=1)
            return self.fc(torch.relu(self.b(h)).mean(dim=(2, 3)))

    conserved(Concat(), composite="epsilon")
    with pytest.raises(ExplainerError, match="first-layer rule"):
        lrp_relevance(handle_for(Concat().eval()), images(1), torch.tensor([0]))
    relevance, _ = lrp_relevance(
        handle_for(Concat().eval()), images(1), torch.tensor([0]), composite="epsilon_plus"
    )
    assert torch.isfinite(relevance).all()


class Gate(nn.Module):
    """A squeeze-and-excitation style gate written functionally."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True))


class Bilinear(nn.Module):
    """The product of two activations."""

    def forward(self, x: Tensor) -> Tensor:
        return x * x


class Shift(nn.Module):
    """An added constant outside any layer."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 1.0


class FunctionalConv(nn.Module):
    """A convolution applied with ``F.conv2d`` by a module that also has a child."""

    def __init__(self, frozen: bool = False) -> None:
        super().__init__()
        weight = torch.randn(8, 8, 3, 3) * 0.1
        if frozen:  # a buffer: not a parameter of the module, seen only in the graph
            self.register_buffer("weight", weight)
        else:
            self.weight = nn.Parameter(weight)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(F.conv2d(x, self.weight, padding=1))


class LearntShift(nn.Module):
    """A learnt bias added by a module that also has a child."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.full((8, 1, 1), 0.1))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.shift)


class Leaf(nn.Module):
    """A leaf module with a parameter and no LRP rule."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class NormAfterActivation(nn.Module):
    """Registered conv then norm, but the norm acts after the ReLU: it cannot be merged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.norm.running_mean.fill_(0.3)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(torch.relu(self.conv(x)))


REFUSED: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "sigmoid module": (lambda: nn.Sequential(nn.Conv2d(8, 8, 1), nn.Sigmoid()), "Sigmoid"),
    "softplus module": (lambda: nn.Softplus(), "Softplus"),
    "functional gate": (Gate, "product of two activations"),
    "product of activations": (Bilinear, "product of two activations"),
    "added constant": (Shift, "constant"),
    "functional convolution": (FunctionalConv, "no rule for layer 'middle' \\(FunctionalConv\\)"),
    "learnt bias outside a layer": (LearntShift, "no rule for layer 'middle' \\(LearntShift\\)"),
    "frozen functional convolution": (lambda: FunctionalConv(frozen=True), "Convolution"),
    "leaf with a parameter": (Leaf, "no rule for layer 'middle' \\(Leaf\\)"),
    "norm merged into the wrong layer": (NormAfterActivation, "changed the model's output"),
    "layer norm": (lambda: nn.GroupNorm(2, 8), "no rule for layer"),
    "3-d convolution": (lambda: nn.Conv3d(8, 8, 1), "supported layers"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_architectures_are_refused_with_a_clear_message(case: str) -> None:
    build, message = REFUSED[case]
    model = Head(build()).eval()
    handle = handle_for(model)
    for _ in range(2):  # the refusal is remembered, and said again
        with pytest.raises(ExplainerError, match=message):
            lrp_relevance(handle, images(1), torch.tensor([0]))
        assert forward_overrides(model) == []


def test_a_softmax_output_is_refused() -> None:
    model = nn.Sequential(Head(nn.Identity()), nn.Softmax(dim=1)).eval()
    with pytest.raises(ExplainerError, match="Softmax"):
        lrp_relevance(handle_for(model), images(1), torch.tensor([0]))


class DenseBlock(nn.Module):
    """DenseNet's pattern: the input concatenated with a new feature map, then a batch norm that
    follows the concatenation (no layer to merge it into), a ReLU and a 1×1 convolution."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.grow = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(16).eval()
        self.norm.weight.data, self.norm.bias.data = scale.clone(), shift.clone()
        self.reduce = nn.Conv2d(16, 8, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(torch.relu(self.norm(torch.cat([x, torch.relu(self.grow(x))], 1))))


def test_a_norm_after_a_concatenation_is_ruled_on_its_own() -> None:
    """With no shift, the ε-rule on the norm passes relevance on (``s·x / (s·x) = 1``): the map
    equals that of the same function with the positive scale folded into the next
    convolution, and relevance is conserved."""
    scale = torch.linspace(0.5, 2.0, 16)
    block = DenseBlock(scale, torch.zeros(16))
    model = Head(block).double().eval()
    folded = Head(DenseBlock(torch.ones(16), torch.zeros(16))).double().eval()
    folded.load_state_dict(model.state_dict())
    folded.middle.norm.weight.data.fill_(1.0)
    folded.middle.reduce.weight.data *= scale.double().view(1, -1, 1, 1)
    x, targets = images(2, dtype=torch.float64), torch.tensor([0, 3])
    for composite in ("epsilon", "epsilon_plus"):
        kw = {"composite": composite, "epsilon": 1e-12}  # ε only stabilises here
        ours, logits = lrp_relevance(handle_for(model), x, targets, **kw)
        theirs, same = lrp_relevance(handle_for(folded), x, targets, **kw)
        torch.testing.assert_close(logits, same)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    conserved(Head(DenseBlock(scale, torch.zeros(16))))


def test_a_shifted_norm_after_a_concatenation_gives_its_shift_its_share() -> None:
    """The ε-rule's known answer for ``y = s·x + t`` on one channel: ``R_x = s·x / (s·x + t)``
    of ``R_y``; a positive shift takes the rest, so less relevance reaches the input."""
    scale, shift = torch.linspace(0.5, 2.0, 16), torch.full((16,), 0.2)
    model = Head(DenseBlock(scale, shift)).double().eval()
    x, targets = images(2, dtype=torch.float64), torch.tensor([0, 3])
    relevance, logits = lrp_relevance(handle_for(model), x, targets, composite="epsilon")
    no_shift = Head(DenseBlock(scale, torch.zeros(16))).double().eval()
    no_shift.load_state_dict(model.state_dict())
    no_shift.middle.norm.bias.data.zero_()
    assert torch.isfinite(relevance).all()
    assert not torch.allclose(relevance, lrp_relevance(handle_for(no_shift), x, targets)[0])
    # the shift took its share: the input no longer receives the whole logit
    total, logit = relevance.sum(dim=(1, 2, 3)), logits.gather(1, targets.view(-1, 1))[:, 0]
    assert ((total - logit).abs() > 1e-3 * logit.abs()).all()


def test_a_torchvision_densenet_conserves_relevance() -> None:
    """A small torchvision DenseNet (every norm of a dense layer's input follows a
    concatenation), bias-free and with shift-free norms: the ε composite conserves the logit."""
    from torchvision.models import DenseNet

    torch.manual_seed(0)
    model = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                     num_classes=CLASSES)  # fmt: skip
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_var.uniform_(0.5, 2.0)
    model.classifier.bias.data.zero_()
    conserved(model)
    relevance, _ = lrp_relevance(handle_for(model.float().eval()), images(2), torch.tensor([0, 3]))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0


def test_a_torchvision_shufflenet_conserves_relevance_through_its_channel_split() -> None:
    """ShuffleNet v2 splits the channels in two (``chunk``), convolves one half, concatenates
    and shuffles them: a split only routes values, so relevance follows it unchanged."""
    from torchvision.models import ShuffleNetV2

    torch.manual_seed(0)
    model = ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64], num_classes=CLASSES)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_var.uniform_(0.5, 2.0)
    model.fc.bias.data.zero_()
    conserved(model, epsilon=1e-14)  # small logits: ε would take a visible share
    relevance, _ = lrp_relevance(handle_for(model.float().eval()), images(2), torch.tensor([0, 3]))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0


@pytest.mark.parametrize("act", [nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.ReLU6, nn.Tanh])
def test_gated_activations_take_the_identity_rule_and_conserve_relevance(act: type) -> None:
    model = Head(nn.Sequential(Residual(8)), act=act)
    conserved(model, epsilon=1e-14)
    relevance, _ = lrp_relevance(handle_for(model.float()), images(2), torch.tensor([0, 3]))
    assert torch.isfinite(relevance).all() and relevance.std() > 0  # the default composite


def test_the_identity_rule_known_answer_on_a_silu_network() -> None:
    """``f = W2·silu(W1·x)``: the ε-rule (ε → 0) gives the hidden units ``R_j = a_j·W2[c, j]``,
    SiLU passes them on unchanged, and the inputs get ``R_i = Σ_j x_i·W1[j, i] / z_j · R_j``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6, bias=False), nn.SiLU(),
                          nn.Linear(6, CLASSES, bias=False)).double().eval()  # fmt: skip
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    relevance, _ = lrp_relevance(
        handle_for(model), x, torch.tensor([2]), composite="epsilon", epsilon=1e-12
    )
    w1, w2 = model[1].weight, model[3].weight
    z = w1 @ x.flatten()
    hidden = F.silu(z) * w2[2]
    expected = (x.flatten()[None, :] * w1 / z[:, None] * hidden[:, None]).sum(dim=0)
    torch.testing.assert_close(relevance.flatten(), expected.detach(), rtol=1e-8, atol=1e-12)


def test_a_squeeze_excitation_gate_is_held_constant_and_conserves_relevance() -> None:
    """torchvision's SE block (its own biases live inside the gate, which takes no relevance)."""
    from torchvision.ops.misc import SqueezeExcitation

    torch.manual_seed(0)
    block = nn.Sequential(Residual(8), SqueezeExcitation(8, 4), nn.Hardswish())
    conserved(Head(block, act=nn.SiLU), epsilon=1e-14)


def test_torchvision_mobilenet_v3_and_efficientnet_conserve_relevance() -> None:
    """Hardswish or SiLU, SE gates, merged batch norms: bias-free and shift-free, the ε
    composite conserves the logit."""
    from torchvision.models import efficientnet_b0, mobilenet_v3_small

    for build in (mobilenet_v3_small, efficientnet_b0):
        torch.manual_seed(0)
        model = build(num_classes=CLASSES)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.data.uniform_(0.5, 1.5)
            elif isinstance(module, nn.Linear):
                module.weight.data.normal_(0, 0.5)
                module.bias.data.zero_()
        conserved(model, epsilon=1e-14)  # randomly initialised, their logits are ~1e-8
