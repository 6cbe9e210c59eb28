"""The course's text data: the shipped corpus, a character-level tokenizer, and random training batches."""

from pathlib import Path

import torch

from .checks import check_positive_int

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"


def load_corpus(path: Path = CORPUS) -> str:
    """The text of ``data/corpus.txt`` (made by ``data/make_corpus.py``)."""
    if not Path(path).is_file():
        raise ValueError(f"path {path} is not a file: run from a clone of the course repository")
    return Path(path).read_text()


class CharTokenizer:
    """One token per character of a fixed alphabet (the characters of the text it was built from)."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """str -> [len(text)] int64 token ids."""
        unknown = set(text) - self.index.keys()
        if unknown:
            raise ValueError(f"text contains characters outside the alphabet: {sorted(unknown)}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in torch.as_tensor(ids).tolist())


def split(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple:
    """The first 1 - val_fraction of the ids for training, the rest for validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


def get_batch(ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple:
    """Random windows: inputs x and next-token targets y, both [batch_size, seq_len]."""
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    if len(ids) <= seq_len:
        raise ValueError(f"seq_len must be shorter than the data ({len(ids)} tokens), got {seq_len}")
    starts = torch.randint(len(ids) - seq_len, (batch_size,), generator=generator)
    x = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
    y = torch.stack([ids[s + 1 : s + 1 + seq_len] for s in starts.tolist()])
    return x, y
