"""The real tokenizers the tests pair with tiny models (tests/real_tokenizers.py) are the published ones."""

from real_tokenizers import NAMES


def test_each_real_tokenizer_loads_with_its_published_vocabulary(real_tokenizer):
    from transformers import AutoTokenizer

    sizes = {n: len(AutoTokenizer.from_pretrained(real_tokenizer(n))) for n in NAMES}
    assert sizes == {"llama2": 32000, "qwen3": 151669, "llama3_1": 128256, "mistral": 32000}
    llama2 = AutoTokenizer.from_pretrained(real_tokenizer("llama2"))
    assert llama2("Hello world")["input_ids"] == [1, 15043, 3186]
    mistral = AutoTokenizer.from_pretrained(real_tokenizer("mistral"))
    assert mistral("Hello", add_special_tokens=False)["input_ids"] == [22557]
