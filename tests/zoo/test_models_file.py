"""models.toml parsing: accepted forms, defaults, and every refusal with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.zoo import ModelsFileError, read_models_file

FACTORY = """
[[models]]
name = "tiny"
factory = "tests.zoo.factories:tiny"
weights = "none"
input_size = [32, 32]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_design_example_parses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[models]]
name = "resnet50"                  # the name clients use
torchvision = "resnet50"           # a torchvision architecture
weights = "IMAGENET1K_V2"

[[models]]
name = "shapes"
factory = "mypkg.nets:build"
weights = "/models/shapes.pt"
input_size = [112, 112]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
labels = ["disc", "square"]
target_layer = "features.4"
""",
    )
    resnet, shapes = read_models_file(path)
    assert (resnet.name, resnet.torchvision, resnet.weights, resnet.weights_path) == (
        "resnet50",
        "resnet50",
        "IMAGENET1K_V2",
        None,
    )
    assert shapes.factory == "mypkg.nets:build"
    assert shapes.weights is None and shapes.weights_path == Path("/models/shapes.pt")
    assert shapes.input_size == (112, 112)
    assert shapes.mean == (0.5, 0.5, 0.5) and shapes.std == (0.25, 0.25, 0.25)
    assert shapes.labels == ("disc", "square")
    assert shapes.target_layer == "features.4"


def test_weights_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[models]]
name = "a"
torchvision = "resnet18"
weights = "ResNet18_Weights.IMAGENET1K_V1"
[[models]]
name = "b"
torchvision = "resnet18"
weights = "DEFAULT"
[[models]]
name = "c"
torchvision = "resnet18"
weights = "None"
[[models]]
name = "d"
torchvision = "resnet18"
weights = "weights/r18.pth"
[[models]]
name = "e"
factory = "x:y"
weights = "e.pt"
input_size = 64
""",
    )
    a, b, c, d, e = read_models_file(path)
    assert a.weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert b.weights == "DEFAULT"
    assert c.weights is None and c.weights_path is None
    # Relative paths are relative to the models file's folder.
    assert d.weights_path == (tmp_path / "weights" / "r18.pth").resolve()
    assert e.weights_path == (tmp_path / "e.pt").resolve()
    assert e.input_size == (64, 64)


def test_labels_files(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog \n", encoding="utf-8")
    (tmp_path / "labels.json").write_text('["x", "y", "z"]', encoding="utf-8")
    path = write(
        tmp_path,
        FACTORY.replace('name = "tiny"', 'name = "t1"')
        + 'labels_file = "labels.txt"\n'
        + FACTORY.replace('name = "tiny"', 'name = "t2"')
        + 'labels_file = "labels.json"\n',
    )
    first, second = read_models_file(path)
    assert first.labels == ("cat", "dog")
    assert second.labels == ("x", "y", "z")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no [[models]] entries"),
        ("models = 3", "no [[models]] entries"),
        ("title = 'x'\n" + FACTORY, "unknown top-level key(s) ['title']"),
        (FACTORY + "colour = 'red'\n", "models[0] (tiny): unknown key(s) ['colour']"),
        (FACTORY.replace('name = "tiny"', ""), "missing key 'name'"),
        (FACTORY.replace('"tiny"', '"a b"'), "name 'a b' must be"),
        (FACTORY + FACTORY, "duplicate model name(s) ['tiny']"),
        (FACTORY.replace('weights = "none"', ""), "missing key 'weights'"),
        (FACTORY.replace("input_size = [32, 32]", ""), "needs 'input_size'"),
        (FACTORY.replace("[32, 32]", "[32, 0]"), "'input_size' must be [height, width]"),
        (FACTORY.replace("[32, 32]", "[32, 32, 3]"), "'input_size' must be [height, width]"),
        (FACTORY.replace("tests.zoo.factories:tiny", "no_colon"), "must look like"),
        (FACTORY + 'torchvision = "resnet18"\n', "exactly one of 'torchvision'"),
        ('[[models]]\nname = "x"\nweights = "none"\n', "exactly one of 'torchvision'"),
        (
            '[[models]]\nname = "x"\ntorchvision = "resnet5"\nweights = "none"\n',
            "unknown torchvision architecture 'resnet5'",
        ),
        (
            '[[models]]\nname = "x"\ntorchvision = "resnet18"\nweights = "IMAGENET1K_V9"\n',
            "neither a weights enum of resnet18 (IMAGENET1K_V1, DEFAULT)",
        ),
        (FACTORY + "mean = [0.5, 0.5]\nstd = [1, 1, 1]\n", "same length"),
        (FACTORY + "std = [1, 0, 1]\n", "'std' must be positive"),
        (FACTORY + "mean = ['a']\n", "'mean' must be a list of numbers"),
        (FACTORY + "labels = ['a']\nlabels_file = 'l.txt'\n", "not both"),
        (FACTORY + "labels = []\n", "non-empty list of strings"),
        (FACTORY + "labels_file = 'missing.txt'\n", "cannot read labels_file"),
        (FACTORY + "num_classes = 0\n", "'num_classes' must be a positive integer"),
        (FACTORY + "num_classes = 2\nlabels = ['a']\n", "1 labels but num_classes = 2"),
        (FACTORY + "target_layer = 3\n", "'target_layer' must be a non-empty string"),
        ("[[models]\n", "is not valid TOML"),
    ],
)
def test_refusals_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ModelsFileError) as caught:
        read_models_file(write(tmp_path, text))
    assert message in str(caught.value)
    assert str(tmp_path / "models.toml") in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="does not exist"):
        read_models_file(tmp_path / "absent.toml")


def test_the_example_file_parses_with_its_commented_entries(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "models.toml"
    assert [entry.name for entry in read_models_file(example)] == ["shapes"]
    lines = example.read_text(encoding="utf-8").splitlines()
    # Uncomment the example entries: "# [[models]]" and "# key = value" lines.
    uncommented = [
        line[2:] if line.startswith(("# [[models]]", "# ")) and " = " in line[:30] else line
        for line in lines
    ]
    uncommented = [line.replace("# [[models]]", "[[models]]") for line in uncommented]
    (tmp_path / "birds.txt").write_text("wren\nrobin\n", encoding="utf-8")
    text = "\n".join(uncommented).replace("/models/birds.txt", str(tmp_path / "birds.txt"))
    for name in ("classifier.ts", "classifier.onnx", "labels.txt"):  # parsed, not loaded
        (tmp_path / name).write_text("wren\nrobin\n", encoding="utf-8")
        text = text.replace(f"/models/{name}", str(tmp_path / name))
    text = text.replace("../workers/", str(example.parents[1] / "workers") + "/")
    entries = read_models_file(write(tmp_path, text))
    assert [entry.name for entry in entries] == [
        "shapes",
        "resnet50",
        "resnet18-random",
        "my-densenet",
        "scripted",
        "onnx-classifier",
    ]
