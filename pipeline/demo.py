"""A small, seeded, arena-like demo dataset the project generates itself.

``write_demo(folder)`` writes ``train.csv`` (300 rows) and ``test.csv`` (60 rows) in the
Kaggle layout. Each pair has a hidden quality per response: a better response is longer,
more structured (lists, a header, bold) and on topic; a worse one is short, vague or a
refusal. The winner is drawn from a logistic of the quality gap with a slight position-A
bias, and close pairs are often ties, so a model can learn real signal from length,
structure and content, and still not reach zero loss. The data holds the cases the real
data holds: multi-turn conversations, a ``null`` turn, a lone UTF-16 surrogate, an empty
response, identical responses and repeated prompts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.catalog import write_csv_atomic

DEMO_SEED = 20240501
N_TRAIN = 300
N_TEST = 60

TOPICS = [
    ("sort a list in Python", ["sorted() returns a new list and leaves the original alone",
                               "list.sort() sorts in place and returns None",
                               "pass key= to sort by a computed value, for example key=len",
                               "reverse=True gives descending order"]),
    ("make a good cup of coffee", ["use freshly ground beans, about 15 grams per cup",
                                   "water just off the boil, around 93 degrees, extracts best",
                                   "a pour-over takes three to four minutes",
                                   "store beans in an airtight container away from light"]),
    ("prepare for a job interview", ["research the company and the role beforehand",
                                     "prepare short stories that show your results",
                                     "practise answers aloud with a friend",
                                     "bring two questions of your own for the interviewer"]),
    ("learn a new language quickly", ["practise a little every day rather than a lot once a week",
                                      "learn the thousand most common words first",
                                      "speak with native speakers as early as you can",
                                      "use spaced repetition for vocabulary"]),
    ("reduce stress at work", ["break large tasks into small steps",
                               "take short breaks away from the screen",
                               "say no to tasks that do not fit your priorities",
                               "sleep and exercise matter more than most tricks"]),
    ("write a cover letter", ["open with the role and why it interests you",
                              "match two or three of your results to the job description",
                              "keep it to one page",
                              "close with a clear request for an interview"]),
    ("explain photosynthesis", ["plants turn light, water and carbon dioxide into sugar",
                                "chlorophyll in the chloroplasts absorbs the light",
                                "oxygen is released as a by-product",
                                "the light reactions and the Calvin cycle are the two stages"]),
    ("start running as a beginner", ["alternate running and walking for the first weeks",
                                     "increase your weekly distance by at most ten percent",
                                     "good shoes prevent many injuries",
                                     "rest days are part of the training"]),
    ("save money on groceries", ["plan meals for the week and shop with a list",
                                 "buy staples in bulk and store brands",
                                 "cook at home and freeze leftovers",
                                 "compare unit prices instead of package prices"]),
    ("fix a slow laptop", ["uninstall programs you no longer use",
                           "check which apps start automatically",
                           "an SSD upgrade helps more than anything else",
                           "scan for malware and keep the system updated"]),
    ("write a SQL query that joins two tables", ["an INNER JOIN keeps rows that match in both tables",
                                                 "a LEFT JOIN keeps every row of the left table",
                                                 "join on the key columns, for example ON a.id = b.user_id",
                                                 "add indexes on join columns for speed"]),
    ("understand inflation", ["inflation is the general rise of prices over time",
                              "central banks raise interest rates to slow it",
                              "it erodes the value of cash savings",
                              "moderate, stable inflation is usually the goal"]),
]

FILLERS = ["That is a good question.", "There are many ways to think about this.",
           "It depends on your situation.", "Hope this helps!", "Let me know if you need more."]
VAGUE = ["It depends.", "You could try a few things.", "There are several options.",
         "Just do your best.", "That is hard to say."]
REFUSALS = ["I'm sorry, but I can't help with that.",
            "As an AI language model, I cannot provide that information."]
PROMPT_FORMS = ["How do I {t}?", "Can you explain how to {t}?", "What is the best way to {t}?",
                "Give me some tips to {t}.", "I need help: how should I {t}?"]


def _response(rng: np.random.Generator, topic: tuple[str, list[str]], quality: float) -> str:
    """One response whose length, structure and relevance grow with ``quality`` in [0, 1]."""
    name, facts = topic
    if quality < 0.12 and rng.random() < 0.5:
        return str(rng.choice(REFUSALS))
    if quality < 0.3:
        return " ".join(rng.choice(VAGUE, size=1 + int(rng.integers(0, 2)), replace=False))
    n_facts = 1 + int(round(quality * (len(facts) - 1)))
    chosen = [facts[i] for i in sorted(rng.choice(len(facts), size=n_facts, replace=False))]
    if quality > 0.65 and rng.random() < 0.8:
        lines = []
        if rng.random() < 0.5:
            lines.append(f"## How to {name}\n")
        lines.append(f"Here is how to {name}:\n")
        for i, fact in enumerate(chosen):
            bullet = f"{i + 1}." if rng.random() < 0.5 else "-"
            bold = f"**{fact.split()[0].capitalize()}**" if rng.random() < 0.4 else fact.split()[0].capitalize()
            lines.append(f"{bullet} {bold} {' '.join(fact.split()[1:])}.")
        if rng.random() < 0.5:
            lines.append("\n" + str(rng.choice(FILLERS)))
        return "\n".join(lines)
    body = " ".join(f.capitalize() + "." for f in chosen)
    if rng.random() < 0.5:
        body = str(rng.choice(FILLERS)) + " " + body
    return body


def _winner(rng: np.random.Generator, qa: float, qb: float) -> int:
    gap = qa - qb
    if abs(gap) < 0.12 and rng.random() < 0.6:
        return 2
    p_a = 1.0 / (1.0 + np.exp(-(6.0 * gap + 0.15)))
    if rng.random() < 0.18:
        return 2
    return 0 if rng.random() < p_a else 1


def make_demo(n_rows: int, seed: int, start_id: int = 0, with_labels: bool = True) -> pd.DataFrame:
    """Kaggle-layout frame of ``n_rows`` generated pairs (text cells as JSON lists)."""
    rng = np.random.default_rng(seed)
    models = ["gpt-4-0613", "claude-2.1", "llama-2-70b-chat", "mistral-medium", "vicuna-13b"]
    rows = []
    for i in range(n_rows):
        topic = TOPICS[int(rng.integers(len(TOPICS)))]
        prompt = [str(rng.choice(PROMPT_FORMS)).format(t=topic[0])]
        qa, qb = float(rng.random()), float(rng.random())
        resp_a = [_response(rng, topic, qa)]
        resp_b = [_response(rng, topic, qb)]
        if rng.random() < 0.12:  # multi-turn conversation
            follow = TOPICS[int(rng.integers(len(TOPICS)))]
            prompt.append(f"Thanks. And how do I {follow[0]}?")
            resp_a.append(_response(rng, follow, qa))
            resp_b.append(_response(rng, follow, qb))
        label = _winner(rng, qa, qb)
        rows.append({"id": start_id + i,
                     "model_a": str(rng.choice(models)), "model_b": str(rng.choice(models)),
                     "prompt": prompt, "response_a": resp_a, "response_b": resp_b,
                     "label": label})
    # The awkward cases of the real data, at fixed positions.
    if n_rows >= 8:
        rows[1]["response_b"] = [None]
        rows[2]["response_a"] = rows[2]["response_b"] = list(rows[2]["response_a"])
        rows[2]["label"] = 2
        rows[3]["response_a"] = [rows[3]["response_a"][0] + " \ud83d"]  # lone surrogate
        rows[4]["response_b"] = [""]
        rows[5]["prompt"] = list(rows[6]["prompt"])  # repeated prompt
    out = []
    for r in rows:
        rec = {"id": r["id"], "model_a": r["model_a"], "model_b": r["model_b"]}
        for col in ("prompt", "response_a", "response_b"):
            # ensure_ascii keeps the lone surrogate as a \\ud83d escape, as in Kaggle's files.
            rec[col] = json.dumps(r[col], ensure_ascii=True)
        if with_labels:
            rec["winner_model_a"] = int(r["label"] == 0)
            rec["winner_model_b"] = int(r["label"] == 1)
            rec["winner_tie"] = int(r["label"] == 2)
        out.append(rec)
    frame = pd.DataFrame(out)
    if not with_labels:
        frame = frame.drop(columns=["model_a", "model_b"])
    return frame


def write_demo(folder: str | Path) -> tuple[Path, Path]:
    """Write the demo ``train.csv`` and ``test.csv`` into ``folder``; returns their paths.

    Deterministic: the same files every time (rewritten only when their content differs,
    so caches keyed on the data stay valid).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = make_demo(N_TRAIN, DEMO_SEED)
    test = make_demo(N_TEST, DEMO_SEED + 1, start_id=100_000, with_labels=False)
    paths = []
    for name, frame in (("train.csv", train), ("test.csv", test)):
        path = folder / name
        text = frame.to_csv(index=False)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_csv_atomic(path, frame)
        paths.append(path)
    return paths[0], paths[1]


def demo_overrides() -> dict:
    """Config differences used with --demo (the experiment is named "demo")."""
    return {
        "name": "demo",
        # Short sequences for `--demo --stage finetune`; part of `--stage all` only on a
        # GPU (finetune.in_all default): on 2 CPU cores five folds take several minutes.
        "finetune": {"max_length": 96, "batch_size": 16, "epochs": 1.0, "head_lr": 1e-3,
                     "freeze_embeddings": True},
    }
