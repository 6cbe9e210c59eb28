import importlib.util
import random
from pathlib import Path

import pytest
import torch

from moe_course.text import CHAR_CLASSES, TEXT_KINDS, char_classes, load_corpus, text_kinds, windows


def load_make_corpus():
    path = Path(__file__).resolve().parents[1] / "data" / "make_corpus.py"
    spec = importlib.util.spec_from_file_location("make_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_corpus = load_make_corpus()


def labelled(parts: list) -> tuple:
    """(kind, block) pairs, each block as a generator returns it -> the text in the corpus's format (each block plus
    one "\\n", as make_corpus.corpus() writes it) and the kind of each of its characters."""
    text = "".join(block + "\n" for _, block in parts)
    kinds = [TEXT_KINDS.index(kind) for kind, block in parts for _ in block + "\n"]
    return text, torch.tensor(kinds)


@pytest.mark.parametrize("kind", TEXT_KINDS)
@pytest.mark.parametrize("seed", range(25))
def test_every_character_of_a_generated_text_gets_its_blocks_kind(kind, seed):
    rng = random.Random(seed)
    # the kind under test in every other block, between blocks of any kind: every neighbour, either side
    kinds = [kind if i % 2 == 0 else rng.choice(TEXT_KINDS) for i in range(7)]
    text, expected = labelled([(k, getattr(make_corpus, k)(rng)) for k in kinds])
    assert torch.equal(text_kinds(text), expected)


def test_the_corpus_is_labelled_as_it_was_made(monkeypatch):
    made = []

    def recording(kind, generator):
        def generate(rng):
            made.append((kind, generator(rng)))
            return made[-1][1]

        return generate

    for kind in TEXT_KINDS:  # corpus() looks its generators up when it runs: record what each one wrote
        monkeypatch.setattr(make_corpus, kind, recording(kind, getattr(make_corpus, kind)))
    generated = make_corpus.corpus()
    text, expected = labelled(made)
    corpus = load_corpus()
    assert text == generated == corpus  # the shipped file is the generator's output
    kinds = text_kinds(corpus)
    assert kinds.dtype == torch.int64 and kinds.shape == (len(corpus),)
    assert torch.equal(kinds, expected)
    assert set(kinds.tolist()) == set(range(len(TEXT_KINDS)))


def test_separators_belong_to_the_block_before_and_unknown_blocks_are_prose():
    arithmetic, code = "1 + 2 = 3\n\n", "def f(values):\n    return 1\n\n"
    prose = "= 3\n4 + 5 = 9\n"  # an arithmetic block cut in two is in no format: prose
    kinds = text_kinds(arithmetic + code + prose)
    assert kinds.tolist() == [1] * len(arithmetic) + [2] * len(code) + [0] * len(prose)
    # every newline after a block, however many, is the block's; newlines before the first block are prose
    assert text_kinds("\n\n2024-01-02 temp 3.0C\n\n\n\nHi.").tolist() == [0] * 2 + [3] * 24 + [0] * 3
    assert text_kinds("").shape == (0,)


def test_char_classes_of_every_class():
    text = "Ab 7\t+\n.,(é9-=%/*<>):_"
    names = [
        "letter", "letter", "space", "digit", "space", "operator", "newline", "punctuation", "punctuation",
        "punctuation", "letter", "digit", "operator", "operator", "operator", "operator", "operator", "operator",
        "operator", "punctuation", "punctuation", "punctuation",
    ]  # fmt: skip
    classes = char_classes(text)
    assert classes.dtype == torch.int64
    assert [CHAR_CLASSES[c] for c in classes.tolist()] == names
    assert char_classes("").shape == (0,)


@pytest.mark.parametrize("function", [text_kinds, char_classes])
@pytest.mark.parametrize("text", [b"1 + 2 = 3\n", None, ["a"], 3])
def test_text_must_be_a_str(function, text):
    with pytest.raises(ValueError, match=r"^text must be a str"):
        function(text)


def test_windows_are_consecutive_and_leave_out_the_incomplete_tail():
    cut = windows(torch.arange(11), 4)
    assert torch.equal(cut, torch.arange(8).view(2, 4))
    assert windows(torch.arange(3), 4).shape == (0, 4)
    with pytest.raises(ValueError, match="^seq_len"):
        windows(torch.arange(8), 0)
