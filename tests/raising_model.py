"""A user factory that fails, as a user's own code may: the CLI must name it and its exception in one line."""


def make(**_options):
    raise RuntimeError("the checkpoint folder of this factory is not mounted")


class BrokenDataset:
    """A map-style Dataset of 8x8 one-channel images whose ``__len__`` or ``__getitem__`` fails, as a user's may."""

    def __init__(self, failing: str | None) -> None:
        self.failing = failing

    def __len__(self) -> int:
        if self.failing == "len":
            raise OSError("the index file of this dataset is missing")
        return 12

    def __getitem__(self, index: int):
        if self.failing == "getitem" and index == 3:
            raise KeyError(f"no image for row {index}")
        import torch
        return torch.zeros(1, 8, 8), index % 2


def datasets(failing: str = "getitem"):
    """(train, test) for data.factory: the training split fails as ``failing`` says."""
    return BrokenDataset(failing), BrokenDataset(None)
