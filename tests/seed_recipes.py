"""Independent re-implementations of the five seed recipes' data preprocessing, for the golden
parity tests (tests/test_parity.py). Written from reading each recipe's published code at the
commit named below (fetched with the search tool; none of it is copied here): they take the raw
records as the seed reads them and return the rows the seed trains on, without using anything of
tuneflow. Where a seed calls a library (transformers' chat template rendering, TRL's DPO
tokenization), the call is reproduced as that library version made it.

Every function works on one record and a Hugging Face tokenizer, and returns None when the seed
drops the record.
"""

from __future__ import annotations

IGNORE_INDEX = -100


def _enc(tokenizer, text, special=False):
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def add_bos_token_2023(tokenizer) -> bool:
    """`getattr(tokenizer, "add_bos_token", True)` as transformers 4.3x answered it: the tokenizer
    config's add_bos_token (Llama: true), True when the class had no such attribute (Qwen)."""
    import json
    from pathlib import Path

    cfg = Path(tokenizer.name_or_path) / "tokenizer_config.json"
    return bool(json.loads(cfg.read_text()).get("add_bos_token", True)) if cfg.is_file() else True


# -- ymcui/Chinese-LLaMA-Alpaca-2 @ 2a334d1, scripts/training/build_dataset.py --------------------

CLA2_PROMPT = ("[INST] <<SYS>>\n"
               "You are a helpful assistant. 你是一个乐于助人的助手。\n"
               "<</SYS>>\n\n{instruction} [/INST]")


def cla2_sft(record, tokenizer, max_seq_length):
    """Source = the fixed prompt around instruction (+ '\\n' + input when non-empty), tokenized with
    the tokenizer's special tokens (BOS); target = output + the EOS text, without; the row is
    source + target cut at max_seq_length, labels -100 over the source. Nothing is dropped."""
    instruction = record["instruction"]
    if record.get("input") is not None and record["input"] != "":
        instruction = instruction + "\n" + record["input"]
    source = CLA2_PROMPT.replace("{instruction}", instruction)
    target = f"{record['output']}{tokenizer.eos_token}"
    s, t = _enc(tokenizer, source, special=True), _enc(tokenizer, target)
    return (s + t)[:max_seq_length], ([IGNORE_INDEX] * len(s) + t)[:max_seq_length]


# -- hiyouga/LLaMA-Factory @ 5a75c31ca (2023-09-07, the `--stage sft` era of the seed, run on
# -- 2023-09-08): src/llmtuner/extras/template.py, src/llmtuner/dsets/preprocess.py -----------------

LF_TEMPLATES = {
    # name: (prefix, prompt, default system, sep)
    "default": ("{{system}}", "Human: {{query}}\nAssistant: ",
                "A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.", "\n"),
    "alpaca": ("{{system}}", "### Instruction:\n{{query}}\n\n### Response:\n",
               "Below is an instruction that describes a task. "
               "Write a response that appropriately completes the request.", "\n\n"),
}


def llama_factory_sft(record, tokenizer, template="default", max_source_length=512, max_target_length=512):
    """Alpaca columns: query = instruction (+ '\\n' + input); turn 0 = BOS + system + sep + prompt
    (each its own encode call, empty strings skipped), answer + EOS; later turns start with sep +
    BOS. Each turn's source and target are cut to their limits separately (the EOS can be cut);
    turns stop when the row would pass max_source_length + max_target_length."""
    if not record.get("instruction") or not record.get("output"):
        return None  # dataset.filter(lambda example: example["prompt"] and example["response"])
    prefix, prompt, default_system, sep = LF_TEMPLATES[template]
    query = record["instruction"] + "\n" + record["input"] if record.get("input") else record["instruction"]
    system = record.get("system") or default_system
    history = [(q, a) for q, a in (record.get("history") or [])] + [(query, record["output"])]

    def ids(text):
        return _enc(tokenizer, text) if text else []

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and add_bos_token_2023(tokenizer) else []
    eos = [tokenizer.eos_token_id]
    input_ids, labels = [], []
    max_length = max_source_length + max_target_length
    for turn, (q, a) in enumerate(history):
        if turn == 0:
            prefix_ids = ids(prefix.replace("{{system}}", system, 1))
            prefix_ids = bos + prefix_ids + ids(sep) if prefix_ids else bos
        else:
            prefix_ids = ids(sep) + bos
        source = prefix_ids + ids(prompt.replace("{{query}}", q, 1))
        target = ids(a) + eos
        source, target = source[:max_source_length], target[:max_target_length]
        if len(input_ids) + len(source) + len(target) > max_length:
            break
        input_ids += source + target
        labels += [IGNORE_INDEX] * len(source) + target
    return input_ids, labels


# -- 5663015/LLMs_train @ e9a64d5, data_generate.py (DataGenerate.chatglm_tokenize) and config.py ----

LLMS_TRAIN_LLAMA_IDS = {"bos_id": 1, "eos_id": 2, "pad_id": 0}  # config.py SPECIAL_IDS of its LLaMA models


def llms_train_sft(record, tokenizer, max_source_length=512, max_target_length=64, special_ids=LLMS_TRAIN_LLAMA_IDS):
    """a = input ids cut to max_source_length - 1; b = target ids cut to max_target_length - 2;
    row = a + [eos, bos] + b + [eos], padded with pad_id to max_source + max_target; labels -100
    over a and the EOS after it, then the row itself (BOS, target, EOS and the padding). Returns
    the row and labels *with* that padding, as the seed trains them."""
    a = _enc(tokenizer, record["input"])
    b = _enc(tokenizer, record["target"])
    if len(a) > max_source_length - 1:
        a = a[:max_source_length - 1]
    if len(b) > max_target_length - 2:
        b = b[:max_target_length - 2]
    eos, bos, pad = special_ids["eos_id"], special_ids["bos_id"], special_ids["pad_id"]
    input_ids = a + [eos, bos] + b + [eos]
    input_ids = input_ids + [pad] * (max_source_length + max_target_length - len(input_ids))
    labels = [IGNORE_INDEX] * (len(a) + 1) + input_ids[len(a) + 1:]
    return input_ids, labels


# -- huggingface/peft @ 8452d71e1 (2024-04-05), examples/sft/utils.py + train.py, TRL 0.8.3 ----------

PEFT_CHATML_TEMPLATE = ("{% for message in messages %}\n{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
                        "+ '<|im_end|>' + '\n'}}{% if loop.last and add_generation_prompt %}{{'<|im_start|>assistant\n' }}"
                        "{% endif %}{% endfor %}")
PEFT_SPECIAL_TOKENS = dict(pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                           additional_special_tokens=["<|im_start|>user", "<|im_start|>assistant", "<|im_start|>system",
                                                      "<|im_end|>", "<s>", "<pad>"])


def peft_tokenizer(tokenizer_dir):
    """AutoTokenizer.from_pretrained with ChatmlSpecialTokens, as create_and_prepare_model does
    (transformers 5 calls additional_special_tokens extra_special_tokens)."""
    from transformers import AutoTokenizer

    kw = dict(PEFT_SPECIAL_TOKENS)
    kw["extra_special_tokens"] = kw.pop("additional_special_tokens")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, **kw)
    tok.chat_template = PEFT_CHATML_TEMPLATE
    return tok


def peft_sft(messages, tokenizer):
    """The conversation rendered by the chat template (content column), then tokenized as TRL
    0.8.3's ConstantLengthDataset does (add_special_tokens False, no concat token): the ids this
    conversation contributes to the packed stream; every token is a label."""
    content = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = _enc(tokenizer, content)
    return ids, list(ids)


def peft_pack(streams, seq_length=2048):
    """ConstantLengthDataset: the conversations' ids concatenated and cut into rows of exactly
    seq_length (the remainder dropped)."""
    flat = [t for ids in streams for t in ids]
    return [flat[i:i + seq_length] for i in range(0, len(flat) - seq_length + 1, seq_length)]


# -- shibing624/MedicalGPT @ 3395416 (2024-12-22, the code its docs/training_params.md describes
# -- as published from 2024-04-20 to 2025-02-14): template.py, supervised_finetuning.py,
# -- pretraining.py, dpo_training.py -------------------------------------------------------------

MEDICALGPT_TEMPLATES = {
    # name: (system prompt, prompt, sep)
    "vicuna": ("A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.",
               "USER: {query} ASSISTANT:", "</s>"),
    "qwen": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
             "<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n", "\n"),
}


def medicalgpt_dialog(template, pairs, system_prompt=""):
    """Conversation._format_example: [source, target, source, target, ...] strings."""
    default_system, prompt, sep = MEDICALGPT_TEMPLATES[template]
    system_prompt = system_prompt or default_system
    system_prompt = system_prompt + sep if system_prompt else ""
    out = []
    for i, (q, a) in enumerate(pairs):
        out.append((system_prompt if i == 0 else sep) + prompt.replace("{query}", q))
        out.append(a)
    return out


def medicalgpt_conversation(conversations):
    """get_dialog's reading of a ShareGPT record: (system, [[question, answer], ...]) or None when
    it skips the record."""
    roles = ["human", "gpt"]
    source = list(conversations)
    system = ""
    if len(source) < 2:
        return None
    if source[0].get("from", "") == "system":
        system = source[0]["value"]
        source = source[1:]
    if source[0].get("from", "") != roles[0]:
        source = source[1:]
    if len(source) < 2:
        return None
    messages = []
    for j, sentence in enumerate(source):
        role = sentence.get("from", "")
        if role not in roles:
            break
        if role == roles[j % 2]:
            messages.append(sentence["value"])
    if len(messages) % 2:
        return None
    return system, [[messages[k], messages[k + 1]] for k in range(0, len(messages), 2)]


def medicalgpt_sft(record, tokenizer, template="qwen", model_max_length=4096):
    """supervised_finetuning.py preprocess_function: per turn, source (the first with the
    tokenizer's special tokens) and target tokenized separately; max_length shared in proportion
    to their lengths, the target keeping one place for the EOS added after every answer; a turn
    that no longer fits ends the row. Rows with no label are filtered out."""
    read = medicalgpt_conversation(record["conversations"])
    if read is None:
        return None
    system, pairs = read
    dialog = medicalgpt_dialog(template, pairs, system)
    eos = tokenizer.eos_token_id
    input_ids, labels = [], []
    for i in range(len(dialog) // 2):
        source = tokenizer(dialog[2 * i], add_special_tokens=(i == 0))["input_ids"]
        target = _enc(tokenizer, dialog[2 * i + 1])
        total = len(source) + len(target)
        max_source = int(model_max_length * (len(source) / total))
        max_target = int(model_max_length * (len(target) / total))
        if len(source) > max_source:
            source = source[:max_source]
        if len(target) > max_target - 1:
            target = target[:max_target - 1]
        if source and source[0] == eos:
            source = source[1:]
        if target and target[-1] == eos:
            target = target[:-1]
        if len(input_ids) + len(source) + len(target) + 1 > model_max_length:
            break
        input_ids += source + target + [eos]
        labels += [IGNORE_INDEX] * len(source) + target + [eos]
    if all(x == IGNORE_INDEX for x in labels):
        return None
    return input_ids, labels


def medicalgpt_pt_lines(text):
    """datasets' text builder with keep_linebreaks=True (pretraining.py's default): every line,
    line break kept, blank lines included."""
    return text.splitlines(keepends=True)


def medicalgpt_pt(lines, tokenizer, block_size=512, batch_size=1000):
    """tokenize_wo_pad_function (tokenizer(text): the tokenizer's own special tokens, no EOS) then
    group_text_function per map batch of 1000 lines: concatenated and cut into blocks of
    block_size, the remainder of each batch dropped (kept whole when shorter than a block)."""
    blocks = []
    for start in range(0, len(lines), batch_size):
        ids = [t for line in lines[start:start + batch_size] for t in tokenizer(line)["input_ids"]]
        total = (len(ids) // block_size) * block_size if len(ids) >= block_size else len(ids)
        blocks += [ids[i:i + block_size] for i in range(0, total, block_size)]
    return blocks


def medicalgpt_dpo(record, tokenizer, template="qwen", max_source_length=1024, max_target_length=512):
    """dpo_training.py return_prompt_and_responses (the prompt is the template's dialog up to an
    empty answer; pairs whose prompt + response has more than max_source + max_target *characters*
    are filtered out), then TRL 0.8.3 DPOTrainer.tokenize_row: BOS + prompt ids, response ids (split
    off prompt + response) + EOS; truncation keep_end of the prompt to max_prompt_length, then of the
    responses, when prompt + longer response exceeds max_length. MedicalGPT gives a tokenizer
    without BOS (Qwen) its EOS as BOS. Returns (prompt_ids, chosen_ids, rejected_ids)."""
    convs = record["conversations"]
    system = next((t["value"] for t in convs if t["from"] == "system"), "")
    turns = [t["value"] for t in convs if t["from"] != "system"]
    history = [[turns[k], turns[k + 1]] for k in range(0, len(turns) - 1, 2)]
    prompt = "".join(medicalgpt_dialog(template, history + [[turns[-1], ""]], system))
    chosen, rejected = record["chosen"], record["rejected"]
    full_max_length = max_source_length + max_target_length
    if not (0 < len(prompt + chosen) <= full_max_length and 0 < len(prompt + rejected) <= full_max_length):
        return None
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prompt_ids = _enc(tokenizer, prompt)

    def answer(text):
        full = _enc(tokenizer, prompt + text)
        start = len(prompt_ids)
        if prompt_ids != full[:start]:
            start -= 1
        return full[:start], full[start:]

    (cp, c), (rp, r) = answer(chosen), answer(rejected)
    p = prompt_ids[:min(len(cp), len(rp))]
    p, cp, rp = [bos] + p, [bos] + cp, [bos] + rp
    c, r = c + [tokenizer.eos_token_id], r + [tokenizer.eos_token_id]
    longer = max(len(c), len(r))
    if len(cp) + longer > full_max_length:
        cp = cp[-max_source_length:]
    if len(rp) + longer > full_max_length:
        rp = rp[-max_source_length:]
    if len(cp) + longer > full_max_length:
        c = c[:full_max_length - max_source_length]
    if len(rp) + longer > full_max_length:
        r = r[:full_max_length - max_source_length]
    return cp, c, r
