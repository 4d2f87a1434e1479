#!/usr/bin/env python3
"""Make the expected outputs for tests/tokenizer.rs with Hugging Face transformers.

What it records (tests/fixtures/tokenizer/llama2.json):
  * prompts: LlavaProcessor(text=prompt, images=one 336x336 image) input_ids, i.e. every `<image>`
    replaced by 576 copies, then the tokenizer with add_special_tokens=True; plus a few cases with
    other expansion counts, done exactly as the processor does it (str.replace, then encode);
  * decodes: tokenizer.decode(ids, skip_special_tokens=True) for the encoded prompts and plain texts;
  * chat: processor.apply_chat_template(messages, add_generation_prompt=True) for the llava-1.5-hf
    template, a llava-onevision/interleave style template and a template that exercises the Jinja
    features real templates use (or the error message, for a template that raises);
  * llama_class: ids from AutoTokenizer for a LlamaTokenizer config with add_bos_token=false and
    add_eos_token=true (transformers rebuilds the post-processor from these flags).

The tokenizer is the Llama-2 one in tests/fixtures/llama2-tokenizer. Its tokenizer_config.json
is transformers-5 style (TokenizersBackend), so in 4.57 we load it with AutoTokenizer from a copy
whose config is spelled the 4.x way (PreTrainedTokenizerFast, additional_special_tokens), which is
what AutoProcessor hands LlavaProcessor for a real llava-1.5 checkpoint.

Requirements (pinned): transformers==4.57.1 tokenizers==0.22.2 jinja2==3.1.6 numpy==2.4.6
pillow==13.0.0. Run from the crate root:  /work/pyenv/bin/python tools/reference/make_tokenizer_fixtures.py
"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_DIR = os.path.join(ROOT, "tests", "fixtures", "llama2-tokenizer")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

# llava-hf/llava-1.5-7b-hf chat_template.json (the same text is in transformers'
# convert_llava_weights_to_hf.py and openvino.genai's template fallback table).
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# The ChatML-with-images style of llava-onevision / llava-interleave (Qwen) checkpoints.
QWEN_STYLE_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all video then #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

# Written for this test: multi-line layout (trim_blocks / lstrip_blocks matter), whitespace control,
# namespace, loop.first / loop.last / loop.index, break, .strip() / .upper() / .startswith(), `is
# string`, raise_exception in a branch not taken, tojson, bos_token / eos_token, generation tags.
FEATURES_TEMPLATE = """{{- bos_token }}
{% set ns = namespace(images=0, texts=[]) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
    {% if message['content'] is string %}
        {{ message['role'] | upper }}: {{ message['content'].strip() }}
    {% else %}
        {% for content in message['content'] %}
            {% if content['type'] == 'image' %}
                {% set ns.images = ns.images + 1 %}
                {{- '<image>' ~ '\n' -}}
            {% elif content['type'] == 'text' %}
                {% if loop.first %}[first]{% endif %}
                {{ message['role'].upper() }} #{{ loop.index }}: {{ content['text'].strip() }}
                {%- if content['text'].startswith('  ') %} (indented){% endif %}
                {% if loop.last %} [last]{% endif %}
            {% endif %}
            {% if loop.index > 5 %}{% break %}{% endif %}
        {% endfor %}
    {% endif %}
{% endfor %}
images={{ ns.images }} meta={{ {'n': ns.images, 'role': messages[0]['role'], 'say': 'ü "q"'} | tojson }}
{% if add_generation_prompt %}
{% generation %}ASSISTANT:{% endgeneration %}
{% endif %}
end{{ eos_token }}"""

RAISING_TEMPLATE = (
    "{% if add_generation_prompt %}{{ raise_exception('This template has no generation prompt') }}"
    "{% endif %}{{ messages[0]['role'] }}"
)

PROMPTS = [
    ("llava15", "USER: <image>\nDescribe the image. ASSISTANT:"),
    ("unicode", "USER: <image>\nWhat does the sign say? 日本語のテキスト, café, naïve, Ελληνικά, 🙂🚀 ASSISTANT:"),
    ("multiline", "USER: <image>\nLine one.\nLine two.\n\n  Indented line three.\r\n\tTabbed.\nASSISTANT:"),
    ("leading_spaces", "   USER:  <image>\n   Describe   it.  ASSISTANT:"),
    ("numbers", "USER: <image>\nCount: 1, 22, 333, 4444, 3.14159, -7, 1e10, 2024-06-01 ASSISTANT:"),
    ("image_first", "<image>\nA photo of"),
    ("image_glued", "USER:<image>Describe.ASSISTANT:"),
    ("two_images", "USER: <image> and <image>\nCompare them. ASSISTANT:"),
    ("special_text", "USER: <image>\nkeep </s> and <s> and <unk> as text? ASSISTANT:"),
    ("chatml_style", "<|im_start|>user <image>\nDescribe<|im_end|><|im_start|>assistant"),
    ("empty_user", "USER: <image>\n ASSISTANT:"),
]

# (name, prompt, count): expansion counts other than 576, done like the processor does them.
OTHER_COUNTS = [
    ("count_1", "USER: <image>\nWhat is this? ASSISTANT:", 1),
    ("count_4", "USER: <image>\nWhat is this? ASSISTANT:", 4),
    ("count_729", "<|im_start|>user <image>\nDescribe<|im_end|><|im_start|>assistant", 729),
]

DECODE_TEXTS = [
    "Hello world",
    "A cat sitting on a red sofa.",
    "  two leading spaces",
    "line1\nline2\n\nline3",
    "héllo 日本語 🙂 naïve",
    "Numbers 12345 and 3.14",
    "tabs\tand\r\nwindows",
]

CHAT_USER_TEXTS = [
    "Describe the image.",
    "  What is in the picture?  ",
    "Line one.\nLine two.",
    "Ünïcödé 🙂",
    "",
]


def load_tokenizer():
    """The tokenizer as `from_pretrained` builds it for a transformers-4 LLaVA checkpoint.

    `from_pretrained` (unlike a bare `PreTrainedTokenizerFast(tokenizer_file=...)`) marks every
    special token named in the config as special in the backend, so `</s>` (not special in this
    tokenizer.json) is skipped by `decode(..., skip_special_tokens=True)`, as in the real processor.
    The shared config is transformers-5 style, so rewrite it the way 4.x checkpoints spell it.
    """
    with open(os.path.join(TOKENIZER_DIR, "tokenizer_config.json")) as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = config.pop("extra_special_tokens")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(TOKENIZER_DIR, "tokenizer.json"), tmp)
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
        tok = AutoTokenizer.from_pretrained(tmp)
    assert type(tok) is PreTrainedTokenizerFast, type(tok)
    return tok


def make_processor(tok, chat_template=None):
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def chat_messages(user_text):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]


def prompt_cases(tok, processor):
    image = Image.fromarray(np.full((336, 336, 3), 127, dtype=np.uint8))
    cases = []
    for name, prompt in PROMPTS:
        ids = processor(text=prompt, images=image)["input_ids"][0]
        cases.append(case(tok, name, prompt, 576, ids))
    for name, prompt, count in OTHER_COUNTS:
        ids = tok(prompt.replace("<image>", "<image>" * count))["input_ids"]
        cases.append(case(tok, name, prompt, count, ids))
    return cases


def case(tok, name, prompt, count, ids):
    return {
        "name": name,
        "prompt": prompt,
        "num_image_tokens": count,
        "ids": ids,
        "decoded": tok.decode(ids, skip_special_tokens=True),
    }


def decode_cases(tok):
    out = []
    for text in DECODE_TEXTS:
        ids = tok(text)["input_ids"]
        out.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    return out


def chat_cases(tok):
    templates = [
        ("llava15", LLAVA_15_TEMPLATE),
        ("qwen_style", QWEN_STYLE_TEMPLATE),
        ("features", FEATURES_TEMPLATE),
        ("raising", RAISING_TEMPLATE),
    ]
    out = []
    for name, template in templates:
        processor = make_processor(tok, chat_template=template)
        renders = []
        for text in CHAT_USER_TEXTS:
            try:
                rendered = processor.apply_chat_template(chat_messages(text), add_generation_prompt=True)
                renders.append({"user_text": text, "rendered": rendered})
            except Exception as err:  # the raising template: record transformers' message
                renders.append({"user_text": text, "error": str(err)})
        out.append({"name": name, "template": template, "renders": renders})
    return out


def llama_class_case():
    """LlamaTokenizerFast rebuilds the post-processor from add_bos_token / add_eos_token."""
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False},
        "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False},
        "unk_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": True,
        "legacy": False,
        "clean_up_tokenization_spaces": True,
    }
    texts = ["USER: <image>\nDescribe the image. ASSISTANT:", "Hello , world . Is n't it ?"]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(TOKENIZER_DIR, "tokenizer.json"), tmp)
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        tok = AutoTokenizer.from_pretrained(tmp)
        assert type(tok).__name__ == "LlamaTokenizerFast", type(tok)
        cases = []
        for text in texts:
            ids = tok(text)["input_ids"]
            cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    return config, cases


def main():
    tok = load_tokenizer()
    processor = make_processor(tok)
    os.makedirs(OUT_DIR, exist_ok=True)

    fixture = {
        "generator": "tools/reference/make_tokenizer_fixtures.py",
        "transformers": __import__("transformers").__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "image_token_id": tok.convert_tokens_to_ids("<image>"),
        "prompts": prompt_cases(tok, processor),
        "decodes": decode_cases(tok),
        "chat": chat_cases(tok),
    }
    with open(os.path.join(OUT_DIR, "llama2.json"), "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")

    config, cases = llama_class_case()
    class_dir = os.path.join(OUT_DIR, "llama_class")
    os.makedirs(class_dir, exist_ok=True)
    with open(os.path.join(class_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(class_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote fixtures to {OUT_DIR}", file=sys.stderr)


if __name__ == "__main__":
    main()
