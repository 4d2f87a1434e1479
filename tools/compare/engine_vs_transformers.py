"""Check that spec-llava's CPU engine and Hugging Face transformers agree token for token.

Generates N scenes with `spec-llava scenes`, captions each one greedily with transformers
(`LlavaForConditionalGeneration`, weights widened to float32, eager attention, slow image
processor) and with `spec-llava caption --json`, and counts identical token sequences.

    python tools/compare/engine_vs_transformers.py --model web/models/demo/target --scenes 50 --seed 0

Requirements: tools/reference/requirements.txt. Run from the repository root after
`cargo build --release`.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--scenes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--bin", default="target/release/spec-llava")
    args = ap.parse_args()

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(args.model, use_fast=False)
    model = LlavaForConditionalGeneration.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)

    identical = 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [args.bin, "scenes", "--count", str(args.scenes), "--seed", str(args.seed), "--out", tmp], check=True
        )
        for line in Path(tmp, "captions.jsonl").read_text().splitlines():
            scene = json.loads(line)
            image_path = Path(tmp, scene["file"])
            inputs = processor(images=Image.open(image_path).convert("RGB"), text=prompt, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=args.max_new_tokens)
            hf = out[0, inputs["input_ids"].shape[1]:].tolist()
            eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                      else [model.generation_config.eos_token_id])
            while hf and hf[-1] in eos:
                hf.pop()
            ours = json.loads(subprocess.run(
                [args.bin, "caption", "--json", "--model", args.model, "--image", str(image_path),
                 "--max-new-tokens", str(args.max_new_tokens)],
                check=True, capture_output=True, text=True).stdout)
            same = ours["tokens"] == hf
            identical += same
            if not same:
                print(f"seed {scene['seed']}: differ\n  ours: {ours['text']}\n  hf:   {processor.decode(hf, skip_special_tokens=True)}")
    print(json.dumps({"scenes": args.scenes, "identical": identical}))
    return 0 if identical == args.scenes else 1


if __name__ == "__main__":
    sys.exit(main())
