"""Generator of tuneflow's own demo data (resources/demo/), written from scratch.

A small family of tasks with one right answer each, so a few-million-parameter model can learn
them on a CPU in minutes and the evaluation can tell a trained model from the base:
arithmetic on small numbers, string transforms, lookups in an invented atlas (the facts appear
in the PT text, the questions in SFT), parity classification, in English and Chinese.
The same tasks are emitted in every raw format tuneflow reads (Alpaca JSON, ShareGPT JSONL,
PromptCBLUE JSONL, plain text for PT, preference pairs where "chosen" is right and "rejected" is
wrong). Deterministic: the same seed writes byte-identical files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYLLABLES = ["ka", "lo", "mi", "zu", "re", "ta", "no", "vi", "sa", "pe", "qu", "do"]
ZH_NAMES = ["甲", "乙", "丙", "丁", "戊", "己", "庚", "辛", "壬", "癸"]
WORDS = ["cat", "tree", "book", "lamp", "river", "stone", "cloud", "bread", "glass", "wind",
         "apple", "chair", "door", "field", "house", "moon", "paper", "salt", "star", "wolf"]
SYMPTOMS = ["头痛", "发热", "咳嗽", "腹泻", "失眠", "胸闷", "皮疹", "乏力"]
INTENTS = {"治疗方案": "{s}怎么治疗", "病因分析": "{s}是什么原因引起的", "注意事项": "{s}要注意什么", "就医建议": "{s}应该挂什么科"}


def _atlas(rng: random.Random, n: int = 24):
    """Invented countries and capitals: facts a model can only know from the PT text."""
    names = set()
    while len(names) < 2 * n:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize())
    names = sorted(names)
    rng.shuffle(names)
    return {names[2 * i] + "land": names[2 * i + 1] for i in range(n)}


def _tasks(rng: random.Random, atlas: dict):
    """Yield (instruction, input, output, wrong_output) for every task instance."""
    for a in range(10):
        for b in range(10):
            step = rng.choice([1, 2, 3, -1])
            # Wrong sums on both sides of the right one (the side from the sum's parity, so the
            # random stream is unchanged): with most wrong sums above, preference tuning learnt
            # "smaller is better" and answered every sum too low.
            wrong = (a + b + (step if (a + b) % 2 else -step)) % 19
            yield "Add the two numbers.", f"{a} + {b}", str(a + b), str(wrong)
            yield "计算两个数的和。", f"{a} + {b}", str(a + b), str(wrong)
    for w in WORDS:
        yield "Reverse the word.", w, w[::-1], w
        yield "Uppercase the word.", w, w.upper(), w.capitalize()
        yield "Repeat the word twice.", w, f"{w} {w}", w
    for country, capital in atlas.items():
        other = rng.choice([c for c in atlas.values() if c != capital])
        yield f"What is the capital of {country}?", "", capital, other
        yield f"{country}的首都是哪里？", "", capital, other
    for n in range(40):
        parity, wrong = ("even", "odd") if n % 2 == 0 else ("odd", "even")
        yield "Is the number even or odd?", str(n), parity, wrong
        yield "这个数是奇数还是偶数？", str(n), "偶数" if n % 2 == 0 else "奇数", "奇数" if n % 2 == 0 else "偶数"


def _pt_lines(rng: random.Random, atlas: dict):
    lines = []
    for country, capital in atlas.items():
        lines += [f"The capital of {country} is {capital}.", f"{country}的首都是{capital}。",
                  f"{capital} is a city in {country}."]
    for a in range(10):
        for b in range(10):
            lines += [f"{a} plus {b} is {a + b}.", f"{a}加{b}等于{a + b}。"]
    for w in WORDS:
        lines += [f"The word {w} backwards is {w[::-1]}.", f"In capitals, {w} is {w.upper()}."]
    for n in range(40):
        lines.append(f"{n} is an {'even' if n % 2 == 0 else 'odd'} number.")
    lines = lines * 3
    rng.shuffle(lines)
    return lines


def _promptcblue(rng: random.Random):
    """PromptCBLUE-format records for three task types, with invented content."""
    records, k = [], 0
    for rep in range(6):
        for s in SYMPTOMS:
            for intent, tmpl in INTENTS.items():
                choices = list(INTENTS)
                rng.shuffle(choices)
                records.append({
                    "input": f"判断下面搜索词的意图：\n{tmpl.format(s=s)}\n选项：{'，'.join(choices)}\n答：",
                    "target": intent, "answer_choices": choices, "task_type": "cls",
                    "task_dataset": "KUAKE-QIC", "sample_id": f"demo-qic-{k}"})
                k += 1
    for rep in range(4):
        for i, s1 in enumerate(SYMPTOMS):
            for s2 in (SYMPTOMS[i], SYMPTOMS[(i + 1 + rep) % len(SYMPTOMS)]):
                same = s1 == s2
                records.append({
                    "input": f"下面两个句子语义是“相同”或“不同”？\n“{s1}怎么办”，“{s2}怎么办”。\n选项：相同，不同\n答：",
                    "target": "相同" if same else "不同", "answer_choices": ["相同", "不同"], "task_type": "cls",
                    "task_dataset": "CHIP-STS", "sample_id": f"demo-sts-{k}"})
                k += 1
    for rep in range(40):
        found = rng.sample(SYMPTOMS, 2)
        sent = f"患者{rng.choice(ZH_NAMES)}自述{found[0]}三天，伴有{found[1]}。"
        records.append({
            "input": f"{sent}\n问题：句子中的临床表现实体是什么？\n答：",
            "target": f"上述句子中的实体包含：\n临床表现实体：{'，'.join(found)}",
            "answer_choices": ["临床表现"], "task_type": "ner", "task_dataset": "CMeEE-V2",
            "sample_id": f"demo-ner-{k}"})
        k += 1
    return records


def generate(out_dir, seed: int = 7) -> dict:
    """Write the demo files into `out_dir`; returns {file name: record count}."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atlas = _atlas(rng)
    tasks = list(_tasks(rng, atlas))
    rng.shuffle(tasks)
    counts = {}

    pt = _pt_lines(rng, atlas)
    (out / "pt_text.txt").write_text("\n".join(pt) + "\n", encoding="utf-8")
    counts["pt_text.txt"] = len(pt)

    alpaca = [{"instruction": i, "input": x, "output": y} for i, x, y, _ in tasks]
    (out / "sft_alpaca.json").write_text(json.dumps(alpaca, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    counts["sft_alpaca.json"] = len(alpaca)

    with open(out / "sft_sharegpt.jsonl", "w", encoding="utf-8") as f:
        n = 0
        for j in range(0, len(tasks) - 1, 4):
            (i1, x1, y1, _), (i2, x2, y2, _) = tasks[j], tasks[j + 1]
            conv = [{"from": "system", "value": "You are a careful assistant."},
                    {"from": "human", "value": f"{i1}\n{x1}".strip()}, {"from": "gpt", "value": y1},
                    {"from": "human", "value": f"{i2}\n{x2}".strip()}, {"from": "gpt", "value": y2}]
            f.write(json.dumps({"conversations": conv}, ensure_ascii=False) + "\n")
            n += 1
    counts["sft_sharegpt.jsonl"] = n

    cblue = _promptcblue(rng)
    with open(out / "sft_promptcblue.jsonl", "w", encoding="utf-8") as f:
        for r in cblue:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts["sft_promptcblue.jsonl"] = len(cblue)

    with open(out / "dpo_pairs.jsonl", "w", encoding="utf-8") as f:
        n = 0
        for i, x, y, wrong in tasks:
            if wrong == y:
                continue
            prompt = f"{i}\n{x}".strip()
            f.write(json.dumps({"conversations": [{"from": "human", "value": prompt}],
                                "chosen": y, "rejected": wrong}, ensure_ascii=False) + "\n")
            n += 1
    counts["dpo_pairs.jsonl"] = n
    return counts


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(generate(sys.argv[1] if len(sys.argv) > 1 else "resources/demo"))
