"""Real data through the readers a user's own data goes through: image folders and CSV tables.

1. Fashion-MNIST written out as PNG folders (train/ and test/, one subfolder per class) and read back through
   `imagefolder` trains the same student to the same accuracy as the built-in IDX reader (within noise).
2. An RGB image folder: the 8x8 digits, each tinted one of six colours drawn per image (3 channels through the
   same path; the colour carries no label information).
3. Real tables through `csv`: scikit-learn's breast-cancer and wine data; teacher, student from scratch and
   distilled student.

Every run goes through the same code as `distillery train/distill`. Prints Markdown for BENCHMARKS.md.

    OMP_NUM_THREADS=2 python benchmarks/own_data.py [--seeds 0 1 2] [--out bench-out/own-data]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.model_selection import train_test_split

from distillery.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_labels import finished  # noqa: E402
from kd_vs_scratch import provenance  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
TINTS = np.array([[1, 0.2, 0.2], [0.2, 1, 0.2], [0.2, 0.2, 1], [1, 1, 0.2], [1, 0.2, 1], [0.2, 1, 1]])


def write_fashion_folders(out: Path) -> Path:
    if (out / "done").is_file():
        return out
    train, test = load_dataset("fashion-mnist")
    for split, data in (("train", train), ("test", test)):
        pixels = np.round(data.inputs[:, 0].numpy() * 255).astype(np.uint8)
        for index, (image, label) in enumerate(zip(pixels, data.labels.tolist())):
            folder = out / split / f"{label}-{data.class_names[label].replace('/', '-')}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{index:05d}.png")
    (out / "done").write_text("")
    return out


def write_tinted_digits(out: Path) -> Path:
    if (out / "done").is_file():
        return out
    digits = load_digits()
    tints = TINTS[np.random.default_rng(0).integers(0, len(TINTS), len(digits.target))]
    for index, (image, label, tint) in enumerate(zip(digits.images / 16, digits.target, tints)):
        rgb = np.round(image[:, :, None] * tint[None, None, :] * 255).astype(np.uint8)
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, mode="RGB").save(folder / f"{index:04d}.png")
    (out / "done").write_text("")
    return out


def write_table(out: Path, name: str, bunch) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    train_x, test_x, train_y, test_y = train_test_split(bunch.data, bunch.target, test_size=0.3, random_state=0,
                                                        stratify=bunch.target)
    for split, features, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
        columns = {str(feature): features[:, index] for index, feature in enumerate(bunch.feature_names)}
        columns["label"] = [str(bunch.target_names[label]) for label in labels]
        pyarrow.csv.write_csv(pa.table(columns), out / f"{name}_{split}.csv")
    return out / f"{name}_train.csv"


def accuracy(document: dict, run_dir: Path) -> float:
    return finished(document, run_dir)["accuracy"]


def interval(values: list[float], samples: int) -> str:
    mean = statistics.mean(values)
    spread = f" ± {statistics.stdev(values):.2%}" if len(values) > 1 else ""
    # The binomial standard error of one run's accuracy on this test set, for "within noise".
    noise = (mean * (1 - mean) / samples) ** 0.5
    return f"{mean:.2%}{spread} (one run's binomial s.e. {noise:.2%}, n = {samples:,})"


def fashion_rows(out: Path, seeds: list[int]) -> list[str]:
    folders = write_fashion_folders(out / "fashion-png")
    student = {"model": {"name": "mlp", "hidden": [128]}, "train": {"epochs": 10, "batch_size": 128, "lr": 0.002}}
    rows = []
    for label, data in (("built-in IDX reader", {"dataset": "fashion-mnist"}),
                        ("PNG folders through imagefolder", {"dataset": "imagefolder", "path": str(folders)})):
        started = time.perf_counter()
        values = [accuracy({**student, "seed": seed, "data": data}, out / f"fashion-{data['dataset']}-{seed}")
                  for seed in seeds]
        rows.append(f"| Fashion-MNIST, MLP 128, 10 epochs | {label} | {interval(values, 10000)} | "
                    f"{time.perf_counter() - started:.0f} s |")
    return rows


def rgb_rows(out: Path, seeds: list[int]) -> list[str]:
    folder = write_tinted_digits(out / "tinted-digits")
    data = {"dataset": "imagefolder", "path": str(folder), "test_fraction": 0.2}
    student = {"model": {"name": "cnn", "channels": [16, 32]}, "train": {"epochs": 20, "batch_size": 64, "lr": 0.003}}
    values = [accuracy({**student, "seed": seed, "data": data}, out / f"tinted-{seed}") for seed in seeds]
    return [f"| digits tinted in 6 colours (RGB 8x8), CNN 16-32, 20 epochs | imagefolder, 3 channels | "
            f"{interval(values, 360)} | |"]


def table_rows(out: Path, seeds: list[int]) -> list[str]:
    rows = []
    for name, bunch in (("breast-cancer", load_breast_cancer()), ("wine", load_wine())):
        train_path = write_table(out / "tables", name, bunch)
        data = {"dataset": "csv", "path": str(train_path), "test_path": str(train_path).replace("_train", "_test"),
                "val_fraction": 0.15}
        budget = {"train": {"epochs": 60, "batch_size": 16, "lr": 0.003}}
        teacher_dir = out / f"{name}-teacher"
        accuracy({**budget, "data": data, "role": "teacher", "model": {"name": "mlp", "hidden": [128, 128]}},
                 teacher_dir)
        test_size = len(load_dataset("csv", train_path, test_path=data["test_path"])[1])
        arms = {"teacher MLP 128-128": None, "student MLP 4, from scratch": {},
                "student MLP 4, distilled (T 2, alpha 0.5)": {"teacher": str(teacher_dir), "temperature": 2.0,
                                                               "alpha": 0.5}}
        for arm, distill in arms.items():
            if distill is None:
                values = [json.loads((teacher_dir / "evaluation.json").read_text())["accuracy"]]
            else:
                document = {**budget, "data": data, "model": {"name": "mlp", "hidden": [4]},
                            **({"distill": distill} if distill else {})}
                values = [accuracy({**document, "seed": seed}, out / f"{name}-{'kd' if distill else 'scratch'}-{seed}")
                          for seed in seeds]
            rows.append(f"| {name} ({bunch.data.shape[1]} features), csv | {arm} | {interval(values, test_size)} | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench-out/own-data"))
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [*fashion_rows(args.out, args.seeds), *rgb_rows(args.out, args.seeds), *table_rows(args.out, args.seeds)]
    source = provenance()
    print(f"Machine: {source['machine']}. Commit `{source['commit']}`. Seeds {args.seeds}. "
          f"Wall time {time.perf_counter() - started:.0f} s.\n")
    print("| data | reader / model | test accuracy (mean ± std over seeds) | time |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
