"""The embedded demo chat set: deterministic, multi-turn, instruction-following flavoured.

`python -m sftbench.data.demo [OUT.jsonl]` regenerates sftbench/data/demo_chat.jsonl (DEMO_DATA: committed, shipped
as package data, TrainConfig's default --data_path, so it resolves from any directory when installed).  300
conversations in `{"messages": [...]}` form: about a third start with a system message, about a
sixth have more rounds than the trainer's default `max_rounds` (TrainConfig), and the answers obey simple verifiable
instructions (upper case, word lists, JSON, "P.S." endings) of the kinds IFEval checks.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Canada", "Ottawa"), ("Egypt", "Cairo"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Spain", "Madrid"), ("Chile", "Santiago"),
            ("India", "New Delhi"), ("Ghana", "Accra"), ("Cuba", "Havana"), ("Greece", "Athens"), ("Poland", "Warsaw")]
FRUITS = ["apple", "banana", "cherry", "mango", "peach", "plum", "grape", "lemon", "kiwi", "pear", "fig", "lime"]
ANIMALS = ["cat", "dog", "horse", "otter", "eagle", "whale", "fox", "owl", "tiger", "panda"]
SYSTEMS = ["You are a concise assistant.", "You are a helpful tutor. Keep answers short.",
           "You are a friendly assistant who follows formatting instructions exactly."]


def _turn(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(8)
    if kind == 0:
        a, b = rng.randrange(2, 99), rng.randrange(2, 99)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 1:
        a, b = rng.randrange(2, 13), rng.randrange(2, 13)
        return f"Multiply {a} by {b}. Answer with the number only.", f"{a * b}"
    if kind == 2:
        c, cap = rng.choice(CAPITALS)
        return f"What is the capital of {c}?", f"The capital of {c} is {cap}."
    if kind == 3:
        c, cap = rng.choice(CAPITALS)
        return f"Name the capital of {c} in all capital letters.", cap.upper()
    if kind == 4:
        n = rng.randrange(2, 5)
        items = rng.sample(FRUITS, n)
        return (f"List {n} fruits as a bulleted list using * and nothing else.",
                "\n".join(f"* {x}" for x in items))
    if kind == 5:
        animal = rng.choice(ANIMALS)
        return (f"Give me a JSON object with the keys \"animal\" and \"legs\" for a {animal}.",
                json.dumps({"animal": animal, "legs": 2 if animal in ("eagle", "owl") else 0 if animal == "whale" else 4}))
    if kind == 6:
        w = rng.choice(FRUITS + ANIMALS)
        return f"Write the word \"{w}\" backwards.", f"Backwards, \"{w}\" is \"{w[::-1]}\"."
    w = rng.choice(ANIMALS)
    return (f"Describe a {w} in one sentence and end your answer with a postscript starting with P.S.",
            f"A {w} is an animal many people find interesting.\nP.S. Thank you for asking about the {w}.")


def make_conversations(n: int = 300, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        msgs = []
        if i % 3 == 0:
            msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
        rounds = rng.choice([1, 1, 2, 2, 3, 4, 5]) if i % 6 else rng.randrange(7, 10)
        for _ in range(rounds):
            q, a = _turn(rng)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append({"messages": msgs})
    return out


DEMO_DATA = Path(__file__).resolve().with_name("demo_chat.jsonl")


def write(path: str | Path = DEMO_DATA, n: int = 300, seed: int = 0) -> Path:
    from sftbench.core.io import atomic_write_jsonl

    atomic_write_jsonl(path, make_conversations(n, seed))
    return Path(path)


if __name__ == "__main__":
    print(write(sys.argv[1] if len(sys.argv) > 1 else DEMO_DATA))
