"""Write data/corpus.txt: a small self-made corpus of four kinds of text, so that experts have something to
specialize in. Deterministic: the same file every run.

    python data/make_corpus.py
"""

import random
from pathlib import Path

SUBJECTS = ["the old sailor", "a young doctor", "the quiet child", "my neighbour", "the tired baker", "a clever fox",
            "the village teacher", "an old queen", "the night guard", "a lost traveller", "the river pilot"]
VERBS = ["watched", "followed", "remembered", "carried", "painted", "visited", "crossed", "found", "heard", "mended"]
OBJECTS = ["the grey harbour", "a narrow bridge", "the empty market", "a broken lantern", "the long road",
           "an open window", "the northern hills", "a small boat", "the winter garden", "an old letter"]
TIMES = ["at dawn", "after the rain", "before supper", "in the evening", "all summer", "at midnight", "every morning"]
LINKS = ["and then", "but later", "so", "while", "because"]


def sentence(rng: random.Random) -> str:
    clause = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TIMES)}"
    if rng.random() < 0.4:
        clause += f", {rng.choice(LINKS)} {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    return clause[0].upper() + clause[1:] + "."


def prose(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(2, 5))) + "\n"


def arithmetic(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*")
        lines.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}")
    return "\n".join(lines) + "\n"


def code(rng: random.Random) -> str:
    name, n = rng.choice(["scale", "shift", "clip", "total", "mean"]), rng.randint(1, 9)
    body = {
        "scale": f"    return [v * {n} for v in values]",
        "shift": f"    return [v + {n} for v in values]",
        "clip": f"    return [min(v, {n}) for v in values]",
        "total": f"    return sum(values) + {n}",
        "mean": f"    return sum(values) / max(len(values), {n})",
    }[name]
    return f"def {name}_{n}(values):\n{body}\n"


def weather(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(2, 4)):
        lines.append(
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} temp {rng.uniform(-5, 30):.1f}C "
            f"wind {rng.randint(0, 60)} km/h rain {rng.randint(0, 100)}%"
        )
    return "\n".join(lines) + "\n"


def corpus(n_chars: int = 200_000, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_chars:
        part = rng.choice([prose, arithmetic, code, weather])(rng) + "\n"
        parts.append(part)
        size += len(part)
    return "".join(parts)


if __name__ == "__main__":
    path = Path(__file__).with_name("corpus.txt")
    path.write_text(corpus())
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
