"""SYNTHETIC demo data set in the Kaggle LMSYS layout (not real human preferences).

New users have no Kaggle data, so the default pipeline runs on battles generated here.
Every text is assembled from small template banks and every label is drawn from a noisy
logistic model of arena-like biases (longer and more structured answers win, refusals
lose, look-alike answers tie), so models can learn something real-looking but the numbers
say nothing about the real competition. Quirks of the real files (multi-turn chats,
repeated prompts, JSON nulls, lone UTF-16 surrogates, empty answers, non-English text,
emoji) are reproduced so the parsing paths get exercised.

Usage: python -m ensemble.demo --out-dir data/demo [--n-train 1000] [--n-test 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.core.config import Range
from ensemble.core.io import write_csv

MODELS = tuple(f"demo-model-{i}" for i in range(1, 9))
# Per-model habits (mean body sentences, P(markdown), P(refusal), hidden skill) so model
# identity correlates with style the way it does in the arena.
_MODEL_VERBOSITY = (2.5, 4.0, 6.0, 8.0, 3.0, 10.0, 5.0, 7.0)
_MODEL_MARKDOWN = (0.10, 0.30, 0.55, 0.75, 0.20, 0.85, 0.45, 0.65)
_MODEL_REFUSAL = (0.14, 0.08, 0.05, 0.03, 0.12, 0.02, 0.06, 0.04)
_MODEL_SKILL = (-0.3, -0.1, 0.1, 0.2, -0.2, 0.3, 0.0, 0.1)

# --------------------------------------------------------------------------- text banks

_TOPICS = {
    "coding": {
        "prompts": [
            "How do I {x} in {y}?", "What is the best way to {x} in {y}?",
            "Can you show me how to {x} using {y}?", "I'm stuck trying to {x} in {y}. Any tips?",
        ],
        "x": ["sort a dictionary by value", "read a file line by line", "parse a JSON string",
              "reverse a string", "handle exceptions properly", "write unit tests",
              "merge two sorted lists", "format a date", "remove duplicates from a list",
              "make an HTTP request", "split a string on whitespace", "measure execution time"],
        "y": ["Python", "JavaScript", "Rust", "Go", "Java", "C++", "TypeScript", "Bash"],
        "sentences": [
            "The simplest approach is to rely on the standard library instead of writing it yourself.",
            "This runs in linear time, which is fine for most inputs.",
            "Keep in mind that the original collection is not modified by this call.",
            "If performance matters, measure it with a profiler before optimizing anything.",
            "You should also handle the case where the input is empty.",
            "Writing a small test for this function will save you debugging time later.",
            "Most style guides recommend giving the helper function a descriptive name.",
            "Error messages are easier to debug when you include the offending value.",
            "A common mistake is to mutate the list while iterating over it.",
            "For very large files, process the data in chunks to keep memory usage low.",
            "The same idea works in most languages, only the syntax changes.",
            "Type hints make the intent of the code clearer to other readers.",
            "Avoid catching every exception, because it hides real bugs.",
            "You can wrap this logic in a function and reuse it across your project.",
        ],
        "headings": ["Solution", "Example", "Explanation", "Common Pitfalls", "Performance Notes"],
        "terms": ["Readability", "Performance", "Edge cases", "Testing", "Error handling", "Memory"],
        "code": [
            "def reverse(text):\n    return text[::-1]\n\nprint(reverse(\"hello\"))",
            "items = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)\n"
            "for name, score in items:\n    print(name, score)",
            "with open(\"data.txt\") as handle:\n    for line in handle:\n        print(line.strip())",
            "const data = JSON.parse(text);\nconsole.log(data.name);",
            "fn main() {\n    let words: Vec<&str> = \"a b c\".split_whitespace().collect();\n"
            "    println!(\"{:?}\", words);\n}",
            "import time\n\nstart = time.perf_counter()\nrun()\nprint(time.perf_counter() - start)",
        ],
    },
    "cooking": {
        "prompts": [
            "How do I make {x}?", "What is a good recipe for {x}?",
            "Any tips for making {x} {y}?", "I want to cook {x} tonight. Where do I start?",
        ],
        "x": ["a fluffy omelette", "banana bread", "a simple tomato sauce", "vegetable curry",
              "pancakes from scratch", "a Caesar salad", "chicken soup", "fried rice",
              "homemade pizza dough", "a chocolate cake", "guacamole", "roasted vegetables"],
        "y": ["for beginners", "without an oven", "on a budget", "for a crowd", "quickly", "that kids like"],
        "sentences": [
            "Start by preparing all of your ingredients so the cooking goes smoothly.",
            "Use medium heat, because high heat tends to burn the outside before the inside is done.",
            "A pinch of salt brings out the flavor more than you might expect.",
            "Let the dough rest for at least thirty minutes before shaping it.",
            "Fresh herbs should be added at the end so they keep their aroma.",
            "Taste as you go and adjust the seasoning gradually.",
            "Leftovers keep well in the fridge for two or three days.",
            "If you do not have buttermilk, milk with a spoon of lemon juice works as a substitute.",
            "Stir gently so the mixture does not become tough.",
            "A heavy pan distributes heat evenly and prevents sticking.",
            "Serve it warm with a simple side salad.",
            "Doubling the recipe works fine, but increase the cooking time slightly.",
        ],
        "headings": ["Ingredients", "Instructions", "Tips", "Variations", "Serving Suggestions"],
        "terms": ["Prep time", "Heat", "Seasoning", "Texture", "Storage", "Substitutions"],
        "code": [],
    },
    "history": {
        "prompts": [
            "What caused {x}?", "Can you summarize {x} {y}?", "Why was {x} important?",
            "Explain the main consequences of {x}.",
        ],
        "x": ["the fall of the Roman Empire", "the French Revolution", "the First World War",
              "the Industrial Revolution", "the Renaissance", "the Cold War", "the printing press",
              "the collapse of the Soviet Union", "the American Civil War", "the Silk Road trade"],
        "y": ["in a few paragraphs", "for a high school student", "in simple terms", "briefly"],
        "sentences": [
            "Historians usually point to a combination of economic, political and social factors.",
            "No single event explains the outcome on its own.",
            "Economic pressure and rising inequality created widespread discontent.",
            "New ideas spread quickly once they could be printed and shared.",
            "Military defeats weakened the authority of the ruling government.",
            "The long-term consequences shaped the political map for generations.",
            "Trade routes carried not only goods but also ideas and diseases.",
            "Some scholars argue that the importance of this event is often exaggerated.",
            "Ordinary people experienced these changes very differently from the elites.",
            "Primary sources from the period give a more nuanced picture.",
            "The event is still debated by historians today.",
            "Its influence can be seen in modern institutions and laws.",
        ],
        "headings": ["Background", "Main Causes", "Key Events", "Consequences", "Legacy"],
        "terms": ["Economic factors", "Political factors", "Social change", "Technology", "Culture"],
        "code": [],
    },
    "math": {
        "prompts": [
            "Explain {x} {y}.", "What is {x} and how is it used?", "Can you help me understand {x}?",
            "I have an exam tomorrow. How does {x} work?",
        ],
        "x": ["the derivative of x^2", "the Pythagorean theorem", "Bayes' theorem", "a prime number",
              "standard deviation", "the chain rule", "a geometric series", "matrix multiplication",
              "logarithms", "the central limit theorem", "modular arithmetic", "integration by parts"],
        "y": ["in simple terms", "with an example", "step by step", "like I'm five"],
        "sentences": [
            "The key idea is to break the problem into smaller steps.",
            "For example, the derivative of x^2 is 2x, because the slope grows linearly.",
            "A right triangle with sides 3 and 4 has a hypotenuse of length 5.",
            "This result holds only when the assumptions are satisfied.",
            "It helps to draw a picture before doing any algebra.",
            "The formula looks complicated, but each term has a simple meaning.",
            "You can check your answer by plugging the values back in.",
            "In practice, this is used in statistics, physics and engineering.",
            "The sum of 1 + 2 + ... + n equals n(n + 1) / 2.",
            "Most mistakes come from dropping a minus sign along the way.",
            "Once you see the pattern, the proof is only a few lines long.",
            "Working through two or three examples is the fastest way to build intuition.",
        ],
        "headings": ["Definition", "Intuition", "Worked Example", "Formula", "Summary"],
        "terms": ["Definition", "Assumptions", "Example", "Common mistakes", "Applications"],
        "code": ["f(x) = x^2\nf'(x) = 2x", "a^2 + b^2 = c^2\n3^2 + 4^2 = 5^2"],
    },
    "advice": {
        "prompts": [
            "How can I {x}?", "Do you have any tips to {x} {y}?", "What should I do to {x}?",
            "I want to {x}. Where should I begin?",
        ],
        "x": ["sleep better", "stay motivated when studying", "prepare for a job interview",
              "save money each month", "deal with stress at work", "learn a new language quickly",
              "get better at public speaking", "build a daily exercise habit", "manage my time",
              "make new friends in a new city", "stop procrastinating", "ask for a raise"],
        "y": ["as a student", "while working full time", "on a tight budget", "this year"],
        "sentences": [
            "Start small, because tiny habits are easier to keep than big resolutions.",
            "Consistency matters more than intensity in the long run.",
            "Write down your goals and review them every week.",
            "It is normal to have setbacks, so be patient with yourself.",
            "Ask a friend to keep you accountable.",
            "Break large tasks into steps that take less than twenty minutes.",
            "Try to keep a regular schedule, even on weekends.",
            "Track your progress so you can see how far you have come.",
            "If the problem persists, consider talking to a professional.",
            "Reward yourself when you reach a milestone.",
            "Reduce distractions by keeping your phone in another room.",
            "Reflect on what worked and what did not at the end of each week.",
        ],
        "headings": ["Getting Started", "Daily Habits", "Staying Consistent", "Common Mistakes", "Final Thoughts"],
        "terms": ["Set clear goals", "Plan ahead", "Stay consistent", "Track progress", "Rest"],
        "code": [],
    },
    "science": {
        "prompts": [
            "Why is it that {x}?", "Can you explain why {x} {y}?", "Is it true that {x}? Why?",
            "What is the science behind the fact that {x}?",
        ],
        "x": ["the sky is blue", "we have seasons", "vaccines work", "ice floats on water",
              "cats purr", "leaves change color in autumn", "the ocean is salty",
              "we dream", "the moon has phases", "magnets attract iron"],
        "y": ["in simple terms", "to a child", "with an analogy", "briefly"],
        "sentences": [
            "The short answer is that it comes down to basic physics.",
            "Sunlight is scattered by molecules in the atmosphere.",
            "Scientists have tested this idea in many careful experiments.",
            "The effect is small on a daily basis but large over long periods.",
            "An analogy helps: imagine a crowd of people passing a ball around.",
            "There is still some debate about the details.",
            "Temperature and pressure both play an important role.",
            "This is why the same thing does not happen on other planets.",
            "The explanation was first proposed more than a century ago.",
            "Modern instruments let us measure the effect very precisely.",
            "Energy always flows from warmer regions to cooler ones.",
            "It is a good example of how simple rules produce complex behavior.",
        ],
        "headings": ["Short Answer", "How It Works", "An Analogy", "Why It Matters", "Fun Fact"],
        "terms": ["Physics", "Chemistry", "Biology", "Evidence", "Everyday example"],
        "code": [],
    },
}
_TOPIC_NAMES = tuple(_TOPICS)

_OPENERS = ("Sure! Here's an overview.", "Great question.", "Certainly.", "Here is a short explanation.",
            "Of course! Let me walk you through it.", "Good question, let's break it down.")
_CLOSERS = ("I hope this helps! Let me know if you have any other questions.",
            "Feel free to ask if anything is unclear.", "Good luck!",
            "Let me know if you would like more detail on any of these points.")
_REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "As an AI language model, I cannot provide that kind of information.",
    "As an AI language model, I don't have personal opinions on this topic.",
    "I apologize, but I am not able to help with this request.",
    "I'm unable to comply with that request.",
    "I cannot help with this, as it goes against my guidelines.",
)
_REFUSAL_TAILS = ("", " Is there anything else I can help you with?",
                  " If you have another question, feel free to ask.",
                  " Please consult a qualified professional instead.")
_FOLLOW_UPS = ("Can you make it shorter?", "Thanks! Can you give another example?",
               "Can you explain that again more simply?", "What are the most common mistakes?",
               "Could you format that as a list?", "Why does that work?",
               "Is there a faster way?", "Can you summarize the key points?")
_EMOJI = ("\U0001F60A", "\U0001F680", "\U0001F44D", "\U0001F4DA", "\u2728", "\U0001F914", "\U0001F373")
# Non-English battles: (prompt, response sentences) per language.
_FOREIGN = {
    "es": (["¿Cómo puedo aprender a cocinar mejor?", "¿Qué es la inteligencia artificial?",
            "Explica la Revolución Francesa en pocas palabras."],
           ["Es una pregunta muy interesante.", "Primero, conviene practicar un poco cada día.",
            "La paciencia es fundamental para mejorar.", "Hay muchos recursos gratuitos en internet.",
            "Espero que esta respuesta te sea útil."]),
    "fr": (["Comment puis-je mieux dormir ?", "Pourquoi le ciel est-il bleu ?",
            "Peux-tu m'expliquer le théorème de Pythagore ?"],
           ["C'est une excellente question.", "Il faut d'abord comprendre le principe de base.",
            "La lumière du soleil est diffusée par l'atmosphère.", "Essayez de garder un horaire régulier.",
            "N'hésitez pas à poser d'autres questions."]),
    "de": (["Wie kann ich meine Zeit besser einteilen?", "Was ist ein Primzahl?",
            "Erkläre die Industrielle Revolution."],
           ["Das ist eine gute Frage.", "Am besten beginnst du mit kleinen Schritten.",
            "Regelmäßige Pausen sind sehr wichtig.", "Viele Historiker sehen mehrere Ursachen.",
            "Ich hoffe, das hilft dir weiter."]),
    "zh": (["如何提高我的编程能力？", "为什么天空是蓝色的？", "请介绍一下丝绸之路。"],
           ["这是一个很好的问题。", "首先，你需要每天坚持练习。", "阳光在大气中发生散射。",
            "丝绸之路促进了东西方的文化交流。", "希望这个回答对你有帮助。"]),
    "ru": (["Как научиться программировать?", "Почему небо голубое?", "Что такое производная?"],
           ["Это хороший вопрос.", "Начните с простых задач и постепенно усложняйте их.",
            "Солнечный свет рассеивается в атмосфере.", "Производная показывает скорость изменения функции.",
            "Надеюсь, это поможет."]),
    "ja": (["よく眠るためのコツを教えてください。", "日本の歴史について簡単に説明してください。"],
           ["良い質問ですね。", "毎日同じ時間に寝ることが大切です。",
            "寝る前にスマートフォンを使わないようにしましょう。",
            "歴史は長く、多くの時代に分かれています。", "参考になれば幸いです。"]),
}
_LANGS = tuple(_FOREIGN)
_PREFIXES = ("", "", "", "Quick question: ", "I'm a beginner. ", "Please keep it short. ", "Hi! ")
_SUFFIXES = ("", "", "", " Thanks!", " Give me an example.", " Explain step by step.", " Be concise.")


# --------------------------------------------------------------------------- generation

@dataclass
class _Conversation:
    topic: str
    lang: str  # "en" or a key of _FOREIGN
    turns: list[str]


@dataclass
class _Style:
    verbosity: float
    markdown: float  # P(structured answer) per turn
    refusal: float
    emoji: float


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _prompt_pool(rng: np.random.Generator, count: int) -> list[_Conversation]:
    """`count` conversations with distinct first turns, so sharing is controlled explicitly."""
    combos: list[tuple[str, str]] = []
    for topic in _TOPIC_NAMES:
        bank = _TOPICS[topic]
        for template in bank["prompts"]:
            for x in bank["x"]:
                ys = bank["y"] if "{y}" in template else [""]
                for y in ys:
                    combos.append((topic, template.format(x=x, y=y).replace(" .", ".").replace(" ?", "?")))
    order = rng.permutation(len(combos))
    pool = []
    for k in range(count):
        topic, text = combos[order[k % len(combos)]]
        # Prefix/suffix variety, plus a numbered context once the template space is used up.
        text = _pick(rng, _PREFIXES) + text + _pick(rng, _SUFFIXES)
        if k >= len(combos):
            text += f" (context #{k // len(combos)})"
        lang = "en"
        if rng.random() < 0.06:
            lang = _pick(rng, _LANGS)
            text = _pick(rng, _FOREIGN[lang][0])
            text += "" if k < len(combos) else f" ({k})"
        n_turns = 1 if rng.random() < 0.8 else int(rng.choice([2, 3, 4], p=[0.6, 0.25, 0.15]))
        turns = [text] + [_pick(rng, _FOLLOW_UPS) for _ in range(n_turns - 1)]
        pool.append(_Conversation(topic, lang, turns))
    # Foreign prompts come from tiny banks; make first turns distinct so sharing stays as planned.
    seen: dict[str, int] = {}
    for conv in pool:
        first = conv.turns[0]
        seen[first] = seen.get(first, 0) + 1
        if seen[first] > 1:
            conv.turns[0] = f"{first} ({seen[first]})"
    return pool


def _assign_prompts(rng: np.random.Generator, n: int, shared_frac: float = 0.4) -> np.ndarray:
    """Battle -> prompt index; about `shared_frac` of battles share their prompt with others."""
    n_shared = int(round(shared_frac * n)) if n >= 2 else 0
    groups: list[int] = []
    left = n_shared
    while left >= 2:
        size = min(left, int(rng.integers(2, 6)))
        if left - size == 1:
            size += 1
        groups.append(size)
        left -= size
    n_unique = n - sum(groups)
    sizes = [1] * n_unique + groups
    assignment = np.repeat(np.arange(len(sizes)), sizes)
    return rng.permutation(assignment)


def _response_turn(rng: np.random.Generator, conv: _Conversation, style: _Style, turn: int,
                   n_sent: int, structured: bool, refuse: bool) -> tuple[str, float]:
    """One answer turn and its count of markdown elements (the label model's structure signal)."""
    if refuse:
        return _pick(rng, _REFUSALS) + _pick(rng, _REFUSAL_TAILS), 0.0
    if conv.lang != "en":
        bank = _FOREIGN[conv.lang][1]
        idx = rng.choice(len(bank), size=min(n_sent, len(bank)), replace=False)
        return " ".join(bank[i] for i in idx), 0.0
    bank = _TOPICS[conv.topic]
    sents = bank["sentences"]
    replace = n_sent > len(sents)
    body = [sents[i] for i in rng.choice(len(sents), size=n_sent, replace=replace)]
    parts: list[str] = []
    md = 0.0
    if turn == 0 and rng.random() < 0.6:
        parts.append(_pick(rng, _OPENERS))
    if not structured:
        i = 0
        while i < len(body):
            k = int(rng.integers(2, 5))
            parts.append(" ".join(body[i:i + k]))
            i += k
    else:
        level = int(rng.integers(1, 4))
        if level == 1:  # intro + bullet list
            items = body[1:] if len(body) > 1 else body
            if len(body) > 1:
                parts.append(body[0])
            parts.append("\n".join(f"- {s}" for s in items))
            md += len(items)
        elif level == 2:  # headed sections with bold-led bullets
            terms = list(bank["terms"])
            heads = [bank["headings"][i] for i in rng.permutation(len(bank["headings"]))]
            for j, start in enumerate(range(0, len(body), 3)):
                chunk = body[start:start + 3]
                parts.append(f"## {heads[j % len(heads)]}")
                parts.append("\n".join(f"- **{terms[(start + m) % len(terms)]}:** {s}" for m, s in enumerate(chunk)))
                md += 1 + 2 * len(chunk)
        else:  # numbered steps, optional code block, summary header
            parts.append(f"### {_pick(rng, bank['headings'])}")
            parts.append("\n".join(f"{m + 1}. **Step {m + 1}:** {s}" for m, s in enumerate(body)))
            md += 1 + 2 * len(body)
            if bank["code"] and rng.random() < 0.7:
                lang = "python" if conv.topic == "coding" else ""
                parts.append(f"```{lang}\n{_pick(rng, bank['code'])}\n```")
                md += 3
            if rng.random() < 0.25:
                terms = bank["terms"]
                rows = ["| Aspect | Note |", "| --- | --- |"]
                rows += [f"| {terms[m % len(terms)]} | {body[m % len(body)].split(',')[0].rstrip('.')} |"
                         for m in range(min(3, len(body)))]
                parts.append("\n".join(rows))
                md += 2
    if rng.random() < 0.3:
        parts.append(_pick(rng, _CLOSERS))
    text = "\n\n".join(parts)
    if rng.random() < style.emoji:
        text += " " + _pick(rng, _EMOJI)
    return text, md


def _response(rng: np.random.Generator, conv: _Conversation, style: _Style,
              like: tuple | None = None) -> tuple[list[str], dict, tuple]:
    """All turns of one answer. `like` reuses another answer's plan so look-alike pairs arise."""
    n_turns = len(conv.turns)
    if like is None:
        n_sent = [max(1, int(rng.poisson(style.verbosity * (0.6 if t else 1.0)))) for t in range(n_turns)]
        structured = [bool(rng.random() < style.markdown) for _ in range(n_turns)]
        refuse = [bool(rng.random() < style.refusal) for _ in range(n_turns)]
        if n_turns > 1 and refuse[0]:  # a model that refused usually keeps refusing
            refuse = [r or rng.random() < 0.7 for r in refuse]
    else:
        n_sent, structured, refuse = like
        n_sent = [max(1, n + int(rng.integers(-1, 2))) for n in n_sent]
    plan = (n_sent, structured, refuse)
    turns, md = [], 0.0
    for t in range(n_turns):
        text, m = _response_turn(rng, conv, style, t, n_sent[t], structured[t], refuse[t])
        turns.append(text)
        md += m
    return turns, {"md": md, "refusal": float(np.mean(refuse))}, plan


def _signal(turns: list, meta: dict) -> tuple[float, float, float]:
    text = "\n".join(t or "" for t in turns)
    empty = float(not text.strip())
    return float(np.log1p(len(text))), empty, meta["refusal"]


def make_demo(n_train: int = 1000, n_test: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) raw Kaggle-layout frames of synthetic battles; same seed -> same frames."""
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be non-negative")
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    assignment = _assign_prompts(rng, n)
    pool = _prompt_pool(rng, int(assignment.max()) + 1 if n else 0)
    styles = [_Style(v, m, r, 0.05) for v, m, r in zip(_MODEL_VERBOSITY, _MODEL_MARKDOWN, _MODEL_REFUSAL)]

    # A handful of lone high surrogates, as in the real data (truncated emoji).
    surrogate_rows = set(rng.choice(n, size=min(n, max(1, n // 250)), replace=False).tolist()) if n else set()
    rows = []
    keys: set[str] = set()
    logits = np.zeros((n, 3))
    for i in range(n):
        conv = pool[assignment[i]]
        ma, mb = rng.choice(len(MODELS), size=2, replace=False)
        resp_a, meta_a, plan_a = _response(rng, conv, styles[ma])
        alike = rng.random() < 0.2
        resp_b, meta_b, _ = _response(rng, conv, styles[mb], like=plan_a if alike else None)
        cells = [list(conv.turns), resp_a, resp_b]
        for cell in cells[1:]:
            if rng.random() < 0.006:  # the model produced nothing at all
                cell[:] = [""] * len(cell)
        for cell in cells:
            if rng.random() < 0.02:
                cell[int(rng.integers(len(cell)))] = None
        if i in surrogate_rows:
            cell = cells[1 + int(rng.integers(2))]
            j = int(rng.integers(len(cell)))
            cell[j] = (cell[j] or "") + " \ud83d"
        # Exact duplicate battles would be dropped by read_battles; perturb until unique.
        key = json.dumps(cells)
        while key in keys:
            idx = int(rng.integers(len(resp_b)))
            resp_b[idx] = (resp_b[idx] or "") + " " + _pick(rng, _CLOSERS)
            key = json.dumps(cells)
        keys.add(key)

        la, ea, ra = _signal(resp_a, meta_a)
        lb, eb, rb = _signal(resp_b, meta_b)
        sa, sb = np.sqrt(meta_a["md"]), np.sqrt(meta_b["md"])
        qa = 0.9 * la + 0.35 * sa - 2.0 * ra - 2.5 * ea + _MODEL_SKILL[ma]
        qb = 0.9 * lb + 0.35 * sb - 2.0 * rb - 2.5 * eb + _MODEL_SKILL[mb]
        d = qa - qb + rng.normal(0.0, 0.5)
        tie = 0.75 - 0.45 * abs(qa - qb) + 1.2 * (ra > 0 and rb > 0) + 0.8 * (ea > 0 and eb > 0)
        logits[i] = (d / 2, -d / 2, tie)
        rows.append((MODELS[ma], MODELS[mb], cells))

    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    labels = np.minimum((rng.random(n)[:, None] > np.cumsum(proba, axis=1)).sum(axis=1), 2)  # cumsum may end < 1
    ids = 1_000_000 + rng.choice(9_000_000, size=n, replace=False)

    frame = pd.DataFrame({
        "id": [str(v) for v in ids],
        "model_a": [r[0] for r in rows],
        "model_b": [r[1] for r in rows],
        "prompt": [json.dumps(r[2][0]) for r in rows],
        "response_a": [json.dumps(r[2][1]) for r in rows],
        "response_b": [json.dumps(r[2][2]) for r in rows],
    })
    for k, col in enumerate(TARGETS):
        frame[col] = (labels == k).astype(np.int64)
    train = frame.iloc[:n_train].reset_index(drop=True)
    test = frame.iloc[n_train:][["id", "prompt", "response_a", "response_b"]].reset_index(drop=True)
    return train, test


@dataclass
class DemoConfig:
    n_train: int = 1000
    n_test: int = 200
    seed: int = 0

    constraints: ClassVar[dict] = {"n_train": Range(1), "n_test": Range(0)}


def _inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic demo train/test CSVs.")
    parser.add_argument("--out-dir", type=Path, default=Path("data/demo"))
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--used-by", nargs="*", default=None, metavar="PATH",
                        help="data.train and data.test: build the demo only if one of them lies in --out-dir")
    args = parser.parse_args(argv)
    if args.used_by is not None and not any(_inside(p, args.out_dir) for p in args.used_by):
        # the DVC stage still runs (dvc.yaml has no conditional stages) but builds nothing
        from ensemble.core.io import write_text

        args.out_dir.mkdir(parents=True, exist_ok=True)
        for old in args.out_dir.glob("demo_*.csv"):
            old.unlink()
        write_text(args.out_dir / "NOT_USED.txt", f"data.train / data.test point at {' and '.join(args.used_by)}; "
                                                  f"the synthetic demo set is not built.\n")
        print(f"data points at real files ({', '.join(args.used_by)}): the synthetic demo is not built")
        return 0
    (args.out_dir / "NOT_USED.txt").unlink(missing_ok=True)
    train, test = make_demo(args.n_train, args.n_test, args.seed)
    write_csv(args.out_dir / "demo_train.csv", train)
    write_csv(args.out_dir / "demo_test.csv", test)
    share = train[list(TARGETS)].mean() * 100 if len(train) else pd.Series(0.0, index=list(TARGETS))
    print(f"wrote {args.out_dir}/demo_train.csv ({len(train)} rows) and demo_test.csv ({len(test)} rows); "
          f"labels A/B/tie = {share.iloc[0]:.1f}% / {share.iloc[1]:.1f}% / {share.iloc[2]:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
