"""Write the files the README's "Your own model and data" commands read, as a user would have them.

    python examples/make_own_data.py [--out own_data]

Real data that ships with scikit-learn (no download): the 8x8 digits as PNG folders and a teacher trained on
them in plain PyTorch (its module and its state dict); the wine table as CSV files; and the class
probabilities of a random forest on the wine training rows, as a model served elsewhere would give them.
"""
from __future__ import annotations

import argparse
import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_predict, train_test_split

TEACHER_MODULE = '''
"""The user's own teacher architecture: any nn.Module their code builds."""
from torch import nn


def make_teacher(width=64, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, num_classes))
'''


def write_images(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """digits as images/{train,test}/<digit>/<n>.png; returns the training images (uint8) and labels."""
    digits = load_digits()
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)
    train_x, test_x, train_y, test_y = train_test_split(pixels, digits.target, test_size=0.2, random_state=0,
                                                        stratify=digits.target)
    for split, images, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = out / "images" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{index:04d}.png")
    return train_x, train_y


def train_teacher(out: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The teacher, trained in plain PyTorch on inputs scaled to [0, 1] then normalised with mean 0.5, std 0.5."""
    (out / "my_teacher.py").write_text(textwrap.dedent(TEACHER_MODULE).lstrip())
    spec = importlib.util.spec_from_file_location("my_teacher", out / "my_teacher.py")  # the module just written
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.make_teacher(width=64)
    inputs = (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.5
    targets = torch.from_numpy(labels).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    torch.save(model.state_dict(), out / "teacher.pt")


def write_tables(out: Path) -> None:
    """wine_train.csv and wine_test.csv (13 measurements, a `cultivar` label), and a random forest's class
    probabilities for every training row, in file order: forest_probabilities.npy."""
    import pyarrow as pa
    import pyarrow.csv

    wine = load_wine()
    train_x, test_x, train_y, test_y = train_test_split(wine.data, wine.target, test_size=0.3, random_state=0,
                                                        stratify=wine.target)
    for name, features, labels in (("wine_train.csv", train_x, train_y), ("wine_test.csv", test_x, test_y)):
        columns = {feature: features[:, index] for index, feature in enumerate(wine.feature_names)}
        columns["cultivar"] = [str(wine.target_names[label]) for label in labels]
        pyarrow.csv.write_csv(pa.table(columns), out / name)
    forest = RandomForestClassifier(n_estimators=200, random_state=0).fit(train_x, train_y)
    # Probabilities on the training rows themselves would be near one-hot; out-of-fold ones are honest targets.
    probabilities = cross_val_predict(forest, train_x, train_y, cv=5, method="predict_proba")
    np.save(out / "forest_probabilities.npy", probabilities.astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("own_data"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    images, labels = write_images(out)
    train_teacher(out, images, labels)
    write_tables(out)
    print(f"wrote {out}/images, {out}/my_teacher.py, {out}/teacher.pt, {out}/wine_train.csv, {out}/wine_test.csv, "
          f"{out}/forest_probabilities.npy")


if __name__ == "__main__":
    main()
