#!/usr/bin/env python3
"""Tiny random LLaVA checkpoints exactly as transformers 5.x saves them, plus references.

The same machinery as make_model_fixtures.py (whose functions this reuses: tokenizers, images,
seed search, checks, reference.json / reference.safetensors), run under transformers 5.x
(tools/reference/requirements-v5.txt) and with no edit of the saved files, so the fixtures show
what 5.x writes:

* weights: `language_model.model.*`, `language_model.lm_head.weight`, `multi_modal_projector.*`,
  and the vision tower **without** the `vision_model.` level: `vision_tower.embeddings.*`,
  `vision_tower.encoder.layers.*`, `vision_tower.pre_layrnorm.*` / `post_layernorm.*`;
* config.json: `dtype`, `text_config.rope_parameters` (no `rope_theta`), explicit nulls;
* no preprocessor_config.json: the image processor is nested in processor_config.json
  (`"image_processor": {...}`); the chat template in chat_template.jinja; tokenizer_config.json
  with `tokenizer_class: TokenizersBackend` and `extra_special_tokens` as a list.

Run: /work/pyenv5/bin/python tools/reference/make_v5_fixtures.py [--out DIR] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_model_fixtures as base  # noqa: E402  (sets the single-thread environment first)

torch = base.torch
transformers = base.transformers

GENERATOR = "tools/reference/make_v5_fixtures.py"


def as_saved_by_v5(spec: dict, name: str, seed: int, storage_dtype) -> dict:
    """A make_model_fixtures spec turned into a plain 5.x save: one file, no edits."""
    for key in ("sparse", "rope_parameters", "new_style_names", "max_shard_size", "external_tokenizer"):
        spec.pop(key, None)
    spec.update(
        name=name,
        seed=seed,
        storage_dtype=storage_dtype,
        generator=GENERATOR,
        # transformers 5 defaults: chat_template.jinja, image processor inside processor_config.json.
        processor_save_kwargs={},
    )
    return spec


def fixture_clip_llama_v5() -> dict:
    spec = base.fixture_clip_llama_gqa_f32()
    spec["config"].text_config.num_hidden_layers = 2  # smaller file
    # No RGBA case: 5.x's image processors composite transparency onto white, 4.x (and this
    # engine) drop the alpha channel; the 4.x fixture covers RGBA.
    spec["cases"] = [c for c in spec["cases"] if "rgba" not in c["image"]]
    spec["images"] = {k: v for k, v in spec["images"].items() if "rgba" not in k}
    return as_saved_by_v5(spec, "clip-llama-v5", 5000, torch.float16)


def fixture_siglip_qwen2_v5() -> dict:
    spec = base.fixture_siglip_qwen2_bf16_sharded()
    return as_saved_by_v5(spec, "siglip-qwen2-v5", 6000, torch.bfloat16)


FIXTURES = [fixture_clip_llama_v5, fixture_siglip_qwen2_v5]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=base.REPO / "tests" / "fixtures" / "models")
    parser.add_argument("--only", action="append", help="fixture name(s) to regenerate")
    args = parser.parse_args()
    if int(transformers.__version__.split(".")[0]) < 5:
        raise SystemExit(f"needs transformers 5.x (requirements-v5.txt), found {transformers.__version__}")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    summaries = []
    for factory in FIXTURES:
        spec = factory()
        if args.only and spec["name"] not in args.only:
            continue
        summary = base.make_fixture(spec, args.out)
        out = args.out / spec["name"]
        if (out / "preprocessor_config.json").exists() or not (out / "processor_config.json").exists():
            raise AssertionError(f"{spec['name']}: expected the 5.x processor layout")
        if summary["final_style"] != "legacy-flat-vision":
            raise AssertionError(f"{spec['name']}: unexpected tensor names {summary['final_style']}")
        summaries.append(summary)
    for s in summaries:
        print(json.dumps({k: v for k, v in s.items() if k != "sizes"}, ensure_ascii=False))
        for name, size in s["sizes"].items():
            print(f"    {size:>9}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
