"""Cascading model randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS
2018, §3.1) for the CAM family, layer by layer, on an evaluation model.

The quality benchmark's sanity column re-initialises the layers from the CAM layer up (the
"top layers") once. Here the randomisation cascades: the top ``k`` randomisable layers are
re-initialised for ``k = 1 … all`` (logits first, then downwards to the input, as in the
paper's Fig. 2), and each method's maps on the randomised copy are compared with its maps on
the trained model (Spearman rank correlation, mean over the scenes; the |map| variant too).

To tell a method's nature from a flaw of the check, two references share the table:

* ``activation energy``: ``Σ_k A_k`` at the CAM layer, the channels summed with equal weights:
  no class, no gradient, only how strongly the layer responds to each place of the input. A
  method whose maps follow it keeps its correlation whatever the layers above do;
* ``image edges``: the Sobel gradient magnitude of the input (no model at all), the paper's
  edge-detector control; a method that follows it survives even full randomisation.

And one column per method: its correlation with the activation energy on the *trained* model.

    .venv/bin/python -m benchmarks.sanity --out benchmarks/results/sanity.md
    .venv/bin/python -m benchmarks.sanity --models-file benchmarks/quality/models.toml \
        --model shapes_residual --style textured --out benchmarks/results/sanity-shapes_residual.md

What it showed (issue 14, item 4): the high ρ of Grad-CAM++, LayerCAM, Smooth Grad-CAM++ and
Score-CAM in the quality benchmark is the methods' nature, not a flaw of the check. On both
evaluation models their maps correlate 0.94–0.99 with the class-free activation energy on the
trained model, keep ρ 0.94–0.99 when only the classifier is re-initialised, and then fall
layer by layer exactly as the activation-energy row does (demo model: to 0.21–0.23 with every
layer random). Their channel weights (positive parts of gradients, or the class scores of
masked inputs) are all non-negative and vary little between channels, so the map is mostly
where the CAM layer responds, which the layers *below* decide. They are not edge detectors
(ρ 0.07–0.11 with the image's edges). Grad-CAM and XGrad-CAM (signed mean gradients; equal
here, as they are for a linear head after global pooling) drop to 0.38 (demo) / 0.51 (second
model) with the classifier alone. The check's cut (the CAM layer and everything above it)
is the one that matters for a CAM method, and the |map| variant equals the signed one for
these non-negative maps; nothing in the check needed fixing.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.demo.scenes import EVAL_SEED, make_scenes
from workers.explainers import ModelHandle, get_explainer
from workers.explainers.metrics import randomisable_layers, randomised_handle, spearman
from workers.zoo import load_models

METHODS = ("gradcam", "gradcam_pp", "xgradcam", "layercam", "scorecam", "smooth_gradcam_pp")
MapFn = Callable[[ModelHandle, Tensor, Tensor], Tensor]


def method_map(name: str) -> MapFn:
    """A catalogue method at its defaults, as ``(handle, inputs, targets) -> maps``."""
    explainer = get_explainer(name)
    return lambda handle, inputs, targets: explainer(handle, inputs, targets).saliency.float()


def activation_energy(handle: ModelHandle, inputs: Tensor, targets: Tensor) -> Tensor:
    """``Σ_k A_k`` at the model's default layer, up-sampled to the input (no class, no
    gradient)."""
    del targets
    layer = handle.model.get_submodule(handle.default_layer or "")
    captured: list[Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with torch.inference_mode():
            handle.model(inputs)
    finally:
        hook.remove()
    energy = captured[0].sum(dim=1, keepdim=True)
    return F.interpolate(energy, size=inputs.shape[-2:], mode="bilinear")[:, 0]


def image_edges(inputs: Tensor) -> Tensor:
    """Sobel gradient magnitude of the input, summed over channels ``(B, H, W)``."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1).repeat(inputs.shape[1], 1, 1, 1)
    grads = F.conv2d(F.pad(inputs, (1, 1, 1, 1), mode="replicate"), kernels, groups=inputs.shape[1])
    return grads.pow(2).sum(dim=1).sqrt()


def cascade(
    handle: ModelHandle, inputs: Tensor, targets: Tensor, seed: int
) -> tuple[list[str], dict[str, list[tuple[float, float]]], dict[str, float]]:
    """(layers top first, per map: (ρ, ρ of |map|) for k = 1 … all, per method: ρ with the
    activation energy on the trained model)."""
    maps: dict[str, MapFn] = {name: method_map(name) for name in METHODS}
    maps["activation energy"] = activation_energy
    layers = randomisable_layers(handle.model)[::-1]
    trained = {name: fn(handle, inputs, targets) for name, fn in maps.items()}
    energy = trained["activation energy"]
    versus_energy = {name: float(spearman(trained[name], energy).mean()) for name in METHODS}
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in maps}
    for k in range(1, len(layers) + 1):
        randomised = randomised_handle(handle, layers[:k], seed)
        for name, fn in maps.items():
            other = fn(randomised, inputs, targets)
            rho = float(spearman(trained[name], other).mean())
            rho_abs = float(spearman(trained[name].abs(), other.abs()).mean())
            rows[name].append((rho, rho_abs))
    return layers, rows, versus_energy


def markdown(
    model: str,
    layers: list[str],
    rows: dict[str, list[tuple[float, float]]],
    versus_energy: dict[str, float],
    edges: dict[str, float],
    scenes: int,
    seconds: float,
) -> str:
    """The results file."""
    header = "| map | ρ with activation energy | ρ with image edges | " + " | ".join(
        f"+`{layer}`" for layer in layers
    )
    lines = [
        f"# Cascading randomisation of the CAM family on `{model}`",
        "",
        "Written by `python -m benchmarks.sanity`; do not edit by hand.",
        "",
        f"{scenes} held-out scenes, each method at its defaults, explaining the true class. "
        "Column `+layer`: that layer and every layer to its left re-initialised (logits first, "
        "cascading to the input); cell: mean Spearman ρ between the maps on the trained and the "
        "randomised model (|map| in brackets). `ρ with activation energy`: the method's map "
        "against Σ_k A_k at the CAM layer on the trained model; `ρ with image edges`: against "
        "the input's Sobel magnitude. "
        f"One run: {seconds:.0f} s on {platform.machine()} CPU, torch {torch.__version__}.",
        "",
        header + " |",
        "|---|---:|---:|" + "---:|" * len(layers),
    ]
    for name, values in rows.items():
        energy = "1.00" if name == "activation energy" else f"{versus_energy[name]:.2f}"
        cells = " | ".join(f"{rho:.2f} ({rho_abs:.2f})" for rho, rho_abs in values)
        lines.append(f"| {name} | {energy} | {edges[name]:.2f} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the cascade and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models-file", default=None)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--style", default="plain")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    handle = load_models(args.models_file, torch.device("cpu"))[args.model]
    scenes = make_scenes(args.scenes, seed=EVAL_SEED, size=handle.input_size[0], style=args.style)
    inputs, targets = handle.from_display(scenes.images), scenes.labels
    layers, rows, versus_energy = cascade(handle, inputs, targets, args.seed)
    edge_map = image_edges(scenes.images)
    edges = {
        name: float(spearman(method_map(name)(handle, inputs, targets), edge_map).mean())
        for name in METHODS
    }
    edges["activation energy"] = float(
        spearman(activation_energy(handle, inputs, targets), edge_map).mean()
    )
    text = markdown(
        args.model, layers, rows, versus_energy, edges, args.scenes, time.perf_counter() - started
    )
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
