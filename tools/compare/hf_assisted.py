"""Hugging Face assisted generation (`assistant_model`, chain drafting) on the demo pair, for
comparison with `spec-llava bench` on the same scenes.

    python tools/compare/hf_assisted.py --target web/models/demo/target --draft web/models/demo/draft \
        --scenes 20 --seed 0 [--bin target/release/spec-llava]

Prints one JSON object: plain and assisted tokens/s (transformers, float32, CPU, this machine),
tau (tokens per target pass incl. the bonus token, from the number of target forwards), and how
many assisted outputs equal plain greedy decoding. Requirements: tools/reference/requirements.txt.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration


class CountingForward:
    """Counts forward passes of a model (target passes = rounds of assisted generation). A forward
    hook keeps `model.forward`'s signature, which generate() inspects."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self._hook)

    def _hook(self, _module, _args, _output):
        self.calls += 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--bin", default="target/release/spec-llava")
    args = ap.parse_args()
    torch.set_num_threads(2)

    processor = AutoProcessor.from_pretrained(args.target, use_fast=False)
    load = lambda d: LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    target, draft = load(args.target), load(args.draft)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    counter = CountingForward(target)

    plain_tokens = assisted_tokens = 0
    plain_s = assisted_s = 0.0
    passes = identical = 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([args.bin, "scenes", "--count", str(args.scenes), "--seed", str(args.seed), "--out", tmp], check=True)
        # One untimed run of each first: PyTorch's first calls pay one-time costs (allocator, kernel
        # selection) that would otherwise land on the first scene (our bench warms up its
        # pipelines the same way before timing).
        first = json.loads(Path(tmp, "captions.jsonl").read_text().splitlines()[0])
        warm = processor(images=Image.open(Path(tmp, first["file"])).convert("RGB"), text=prompt, return_tensors="pt")
        with torch.no_grad():
            target.generate(**warm, do_sample=False, max_new_tokens=4)
            target.generate(**warm, do_sample=False, max_new_tokens=4, assistant_model=draft)
        for line in Path(tmp, "captions.jsonl").read_text().splitlines():
            scene = json.loads(line)
            inputs = processor(images=Image.open(Path(tmp, scene["file"])).convert("RGB"), text=prompt, return_tensors="pt")
            n = inputs["input_ids"].shape[1]
            with torch.no_grad():
                t0 = time.perf_counter()
                plain = target.generate(**inputs, do_sample=False, max_new_tokens=args.max_new_tokens)
                plain_s += time.perf_counter() - t0
                counter.calls = 0
                t0 = time.perf_counter()
                assisted = target.generate(**inputs, do_sample=False, max_new_tokens=args.max_new_tokens, assistant_model=draft)
                assisted_s += time.perf_counter() - t0
            passes += counter.calls
            plain_tokens += plain.shape[1] - n
            assisted_tokens += assisted.shape[1] - n
            identical += int(torch.equal(plain, assisted))
    # The first target call is the prefill (it yields the first token); each later call is a round.
    rounds = max(passes - args.scenes, 1)
    print(json.dumps({
        "engine": "transformers assisted generation (chain, float32, CPU)",
        "plain": {"tokens_per_s": plain_tokens / plain_s},
        "assisted": {"tokens_per_s": assisted_tokens / assisted_s},
        "speedup": (assisted_tokens / assisted_s) / (plain_tokens / plain_s),
        "tau": (assisted_tokens - args.scenes) / rounds,
        "target_passes": passes,
        "identical": identical,
        "total": args.scenes,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
