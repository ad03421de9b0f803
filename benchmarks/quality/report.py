"""The Markdown table of the quality benchmark and the README section it fills."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from benchmarks.quality.run import Bench, Row, standard_error
from workers.explainers.metrics import default_step, pointing_tolerance

START = "<!-- quality:start -->"
END = "<!-- quality:end -->"

HEADER = (
    "| method | family | pointing ↑ | energy pointing ↑ | deletion ↓ | insertion ↑ "
    "| sanity ρ ↓ | s / image | passes / image | parameters changed |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _passes(row: Row) -> str:
    if row.forward_passes is None:
        return "—"
    text = f"{row.forward_passes:.0f} F"
    if row.backward_passes:
        text += f" + {row.backward_passes:.0f} B"
    return text


def _params(changed: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in changed.items()) or "defaults"


def table_row(row: Row) -> str:
    """One Markdown line; missing and failed methods keep their line, with the reason."""
    if row.scores is None:
        reason = row.message.replace("|", "\\|").replace("\n", " ")[:160]
        cells = [f"**{row.status}**: {reason}"] + [""] * 6 + [_params(row.changed)]
        return f"| {row.name} | {row.family} | " + " | ".join(cells) + " |"
    s = row.scores
    cells = [
        f"{100 * float(s.pointing.mean()):.1f} %",
        f"{100 * float(s.energy.mean()):.1f} %",
        f"{float(s.deletion.mean()):.3f}",
        f"{float(s.insertion.mean()):.3f}",
        _fmt(None if row.sanity is None else float(row.sanity.mean()), ".2f"),
        _fmt(row.seconds_per_image, ".4f"),
        _passes(row),
        _params(row.changed) if row.status != "reference" else "",
    ]
    return f"| {row.name} | {row.family} | " + " | ".join(cells) + " |"


def _errors(rows: list[Row]) -> str:
    scored = [r.scores for r in rows if r.scores is not None]
    if not scored:
        return ""
    worst = {
        "pointing": max(100 * standard_error(s.pointing) for s in scored),
        "energy pointing": max(100 * standard_error(s.energy) for s in scored),
        "deletion": max(standard_error(s.deletion) for s in scored),
        "insertion": max(standard_error(s.insertion) for s in scored),
    }
    sanity = [standard_error(r.sanity) for r in rows if r.sanity is not None]
    tail = f", sanity ρ {max(sanity):.2f}" if sanity else ""
    return (
        f"Largest standard error of a mean in this run: pointing {worst['pointing']:.1f} points, "
        f"energy pointing {worst['energy pointing']:.1f} points, deletion "
        f"{worst['deletion']:.3f}, insertion {worst['insertion']:.3f}{tail}; smaller "
        "differences between two methods are noise. The reference rows calibrate the "
        "scales: a method near the constant map's value has learned nothing about the scene, "
        "and deletion and insertion reward the pixels the model relies on, which need not be "
        "the whole object (the object's own mask is not the best map by those two)."
    )


def setup_text(bench: Bench, accuracy: float, seconds: float) -> str:
    """How the numbers were obtained (model, scenes, metric settings, machine)."""
    n, _, height, width = bench.inputs.shape
    step = bench.settings.step or default_step((height, width))
    steps = -(-height * width // step)
    layers = ", ".join(f"`{name}`" for name in bench.randomised_layers)
    device = bench.settings.device
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    style = "" if bench.settings.style == "plain" else f', style="{bench.settings.style}"'
    if device.startswith("cuda") and torch.cuda.is_available():
        machine = torch.cuda.get_device_name(torch.device(device))
    return "\n".join(
        [
            f"Model `{bench.handle.name}` ({height}×{width}), {n} held-out synthetic scenes "
            f"(`make_scenes({n}, seed=1_000_000{style})`, never seen in training); top-1 "
            "accuracy "
            f"{100 * accuracy:.1f} %. Every map explains the scene's true class.",
            "",
            f"* **pointing**: the map's maximum within {pointing_tolerance((height, width)):g} px "
            "(15 px at 224, scaled) of the object's mask; ties share the hit.",
            "* **energy pointing**: share of the min-max-normalised map's mass inside the "
            "object's bounding box (Score-CAM's definition).",
            f"* **deletion / insertion**: RISE-paper AUC of the true class's softmax "
            f"probability, {step} px per step ({steps} steps), zero fill / blurred start.",
            "* **sanity ρ**: Spearman correlation between the map on the trained model and on "
            f"a copy with {layers} re-initialised (seed {bench.settings.sanity_seed}), mean "
            f"over the first {min(bench.settings.sanity_scenes, n)} scenes; near 1 = the map "
            "ignores what the model learned, a faithful method's drops.",
            f"* **s / image**: wall time of the explainer calls ({bench.settings.group} images "
            f"per call) divided by the images, on {machine} (torch {torch.__version__}), "
            "excluding a warm-up call; **passes**: forward (F) and backward (B) passes per "
            "image as the method reports them.",
            f"* One run took {seconds / 60:.1f} min.",
        ]
    )


def body(
    bench: Bench, rows: list[Row], references: list[Row], accuracy: float, seconds: float
) -> str:
    """The results as Markdown, without the figure."""
    lines = [setup_text(bench, accuracy, seconds), "", HEADER]
    lines += [table_row(r) for r in rows]
    lines += ["", "Reference maps (no method):", "", HEADER]
    lines += [table_row(r) for r in references]
    lines += ["", _errors(rows + references)]
    return "\n".join(lines)


def write_markdown(path: Path, text: str, figure: str, model: str = "shapes") -> None:
    """``quality.md``: a title, the results and the figure."""
    which = "the demo model" if model == "shapes" else f"the evaluation model `{model}`"
    path.write_text(
        f"# Quality of the saliency methods on {which}\n\n"
        "Written by `python -m benchmarks.quality`; do not edit by hand.\n\n"
        f"{text}\n\n![every method on a few scenes]({figure})\n",
        encoding="utf-8",
    )


def update_readme(readme: Path, text: str, figure: str) -> bool:
    """Replace the README section between the markers; False when the markers are absent."""
    if not readme.exists():
        return False
    content = readme.read_text(encoding="utf-8")
    if START not in content or END not in content.split(START, 1)[1]:
        return False
    before, rest = content.split(START, 1)
    after = rest.split(END, 1)[1]
    section = (
        f"{START}\n{text}\n\n![every method on a few held-out scenes of the demo model]"
        f"({figure})\n\n(`python -m benchmarks.quality` writes this section, "
        "`benchmarks/results/quality-summary.md`, each model's table and figure.)\n"
        f"{END}"
    )
    readme.write_text(before + section + after, encoding="utf-8")
    return True
