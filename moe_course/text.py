"""The course's text data: the shipped corpus, a character-level tokenizer, random training batches, and two
labellings of its characters (the kind of text around each one, its character class)."""

import re
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


def windows(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """1-D ``ids`` cut into consecutive windows of ``seq_len`` tokens, the incomplete last one left out:
    [len(ids) // seq_len, seq_len]."""
    check_positive_int("seq_len", seq_len)
    return ids[: len(ids) // seq_len * seq_len].reshape(-1, seq_len)


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


TEXT_KINDS = ("prose", "arithmetic", "code", "weather")


def lines_of(line: str) -> re.Pattern:
    """A block of one or more lines that each match the pattern ``line``."""
    return re.compile(rf"{line}(\n{line})*")


# The block formats of data/make_corpus.py, matched against a whole block (its lines without the newlines after them)
BLOCK_FORMATS = {
    "arithmetic": lines_of(r"\d+ [-+*] \d+ = -?\d+"),  # "12 * 7 = 84"
    "code": re.compile(r"def \w+\(.*\):(\n    .*)+"),  # a def line, then its indented body
    "weather": lines_of(r"\d{4}-\d\d-\d\d .*"),  # "2024-03-17 temp 12.5C wind 20 km/h rain 40%"
}


def check_text(text) -> str:
    """Return ``text`` if it is a str, else raise ``ValueError`` naming it."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return text


def kind_of(block: str) -> int:
    """The index in TEXT_KINDS of a block (its lines, without the newlines after them)."""
    for kind, block_format in BLOCK_FORMATS.items():
        if block_format.fullmatch(block):
            return TEXT_KINDS.index(kind)
    return TEXT_KINDS.index("prose")


def text_kinds(text: str) -> torch.Tensor:
    r"""str -> [len(text)] int64: the index in TEXT_KINDS of the kind of block each character belongs to.

    Blocks are separated by blank lines, as ``data/make_corpus.py`` writes them: each block's lines, the last one
    ending in "\n", then one more "\n". Every newline after a block's last line belongs to that block, so a block
    owns the blank line that separates it from the next; newlines at the very start of the text end no block in it
    and count as prose.

    A block is arithmetic if each line is ``a op b = c`` (op one of + - *), weather if each line starts with a date
    ``YYYY-MM-DD`` and a space, code if it is a ``def`` line followed by lines indented by four spaces, and prose
    otherwise: the generator's prose is one line of sentences, and prose is also the fallback for text in none of
    these formats, such as a block cut in two by slicing the text. Label the whole corpus, then slice the labels.
    """
    check_text(text)
    # cut where a block starts after a blank line: each piece is one block and the newlines after it
    pieces = re.split(r"(?<=\n\n)(?=[^\n])", text)
    kinds = torch.tensor([kind_of(piece.strip("\n")) for piece in pieces])
    return kinds.repeat_interleave(torch.tensor([len(piece) for piece in pieces]))


CHAR_CLASSES = ("letter", "digit", "space", "newline", "punctuation", "operator")
OPERATORS = set("+-*/=%<>")


def char_class(c: str) -> int:
    """The index in CHAR_CLASSES of the character ``c``."""
    if c == "\n":
        name = "newline"
    elif c in " \t":
        name = "space"
    elif c in OPERATORS:
        name = "operator"
    elif c.isalpha():
        name = "letter"
    elif c.isdigit():
        name = "digit"
    else:
        name = "punctuation"
    return CHAR_CLASSES.index(name)


def char_classes(text: str) -> torch.Tensor:
    r"""str -> [len(text)] int64: the index in CHAR_CLASSES of each character's class.

    newline: "\n"; space: " " and tab; operator: one of ``+-*/=%<>`` (so also the hyphens of a date and the "/" of
    "km/h"); letter: ``str.isalpha``; digit: ``str.isdigit``; punctuation: every other character (``.,:()[]_``,
    other whitespace such as "\r").
    """
    check_text(text)
    classes = {c: char_class(c) for c in set(text)}
    return torch.tensor([classes[c] for c in text], dtype=torch.int64)
