#!/usr/bin/env python3
"""Train the demo LLaVA target + draft pair on the procedural scene world (src/scenes/).

Everything is saved in the exact Hugging Face LLaVA layout (`LlavaForConditionalGeneration`,
CLIP vision tower, Llama text decoder, `LlavaProcessor` files), so transformers and our Rust engine
load the same directories.

Stages (all run by default, in order; each can be run alone with --stage):
  tokenizer  byte-level BPE on the captions + prompt, chat template, CLIP image processor
  target     (a) vision warm-up: the CLIP tower learns per-cell shape/colour/size and the background
                 from labels parsed out of the captions (a throw-away auxiliary head; cheap because
                 the text decoder does not run);
             (b) full LLaVA training, cross-entropy on caption tokens + EOS, plus the auxiliary loss
  draft      small Llama decoder + own projector, distilled from the target (KL on the caption
             positions + a little CE); the vision tower is the target's, copied and frozen
  export     float16 safetensors + tokenizer + processor + model cards, then an end-to-end check
             through LlavaProcessor on held-out scenes (seeds 0..199)

Schedules are wall-clock based (cosine over each stage's minutes) because the machine is shared:
the run fits its time budget whatever throughput it gets. Checkpoints are written every few
minutes; `--stage export` exports from the latest ones.
"""

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PROMPT_TEXT = "Describe the image."
N_IMAGE_TOKENS = 64  # (64 / 8)^2 patches; "default" strategy drops CLS
SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID = 0, 1, 2, 3
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# llava-1.5 style: "USER: <image>\nDescribe the image. ASSISTANT:" (images first, then text).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }} {% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }} {% endif %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

SHAPES = ["circle", "square", "triangle", "star", "heart", "ring", "diamond", "cross"]
PLURALS = ["circles", "squares", "triangles", "stars", "hearts", "rings", "diamonds", "crosses"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink"]
SIZES = ["small", "medium", "large"]
PATTERNS = ["plain", "striped", "shaded", "noisy"]
BG_COLOURS = ["gray", "beige", "teal", "navy"]
COUNTS = ["a", "two", "three", "four"]
CELL_NAMES = ["top left", "top", "top right", "left", "center", "right",
              "bottom left", "bottom", "bottom right"]
RELATIONS = {"above": (-1, 0), "below": (1, 0), "left": (0, -1), "right": (0, 1)}


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ----------------------------------------------------------------------------- caption parsing

def parse_caption(caption):
    """Caption -> (cells, pattern, bg) with cells[i] = (shape, colour, size) indices or None.

    Mirrors the grammar in src/scenes/caption.rs; returns None for captions that stray from it.
    """
    text = caption.strip().lower()
    m = re.fullmatch(r"(.*) on a (\w+) (\w+) background\.?", text)
    if not m or m.group(2) not in PATTERNS or m.group(3) not in BG_COLOURS:
        return None
    words = m.group(1).replace(",", " , ").split()
    cells = [None] * 9
    i, prev_cell = 0, None
    while i < len(words):
        if words[i] in (",", "and"):
            i += 1
        if i + 4 > len(words) or words[i] not in COUNTS:
            return None
        count = COUNTS.index(words[i]) + 1
        size, colour, shape = words[i + 1], words[i + 2], words[i + 3]
        names = SHAPES if count == 1 else PLURALS
        if size not in SIZES or colour not in COLOURS or shape not in names:
            return None
        obj = (names.index(shape), COLOURS.index(colour), SIZES.index(size))
        i += 4
        group_cells = []
        if words[i:i + 2] == ["at", "the"]:
            i += 2
            while True:
                name, step = None, 0
                if " ".join(words[i:i + 2]) in CELL_NAMES:
                    name, step = " ".join(words[i:i + 2]), 2
                elif i < len(words) and words[i] in CELL_NAMES:
                    name, step = words[i], 1
                if name is None:
                    return None
                group_cells.append(CELL_NAMES.index(name))
                i += step
                # Another cell follows a separator unless a new group (count word) starts.
                if i + 1 < len(words) and words[i] in (",", "and") and words[i + 1] not in COUNTS:
                    i += 1
                    continue
                break
        else:
            key = words[i] if i < len(words) else ""
            tail = ["of", "it"] if key in ("left", "right") else ["it"]
            if key not in RELATIONS or words[i + 1:i + 1 + len(tail)] != tail or prev_cell is None:
                return None
            i += 1 + len(tail)
            r, c = divmod(prev_cell, 3)
            dr, dc = RELATIONS[key]
            if not (0 <= r + dr < 3 and 0 <= c + dc < 3):
                return None
            group_cells.append((r + dr) * 3 + c + dc)
        if len(group_cells) != count:
            return None
        for cell in group_cells:
            cells[cell] = obj
        prev_cell = group_cells[0] if count == 1 else None
    return cells, PATTERNS.index(m.group(2)), BG_COLOURS.index(m.group(3))


def aux_labels(captions):
    """Per-scene labels for the vision warm-up: [N, 9, 3] (shape+1 or 0 for empty, colour, size;
    -100 where the cell is empty) and [N, 2] (pattern, background colour)."""
    cells = np.full((len(captions), 9, 3), -100, dtype=np.int64)
    bg = np.zeros((len(captions), 2), dtype=np.int64)
    for n, cap in enumerate(captions):
        parsed = parse_caption(cap)
        if parsed is None:
            raise ValueError(f"caption does not parse: {cap!r}")
        objs, pattern, colour = parsed
        for c, obj in enumerate(objs):
            if obj is None:
                cells[n, c, 0] = 0
            else:
                cells[n, c] = (obj[0] + 1, obj[1], obj[2])
        bg[n] = (pattern, colour)
    return torch.from_numpy(cells), torch.from_numpy(bg)


# The CLI whose scorer the trainer uses (set from --spec-llava in main).
SCORER = "target/release/spec-llava"


def engine_scores(preds, truths):
    """Scores from the engine's own scorer: `spec-llava score` runs exactly the code of
    `spec-llava eval` (per object group: shape, colour, size, count, position, relation, with
    predicted groups matched to true ones), so the trainer and the model cards report one number.
    (An earlier Python port scored each of the 9 cells, counting a cell empty in both as 3 right:
    that is why it said 90.8% where `spec-llava eval` said 72.1% for the same model.)"""
    if not os.path.exists(SCORER):
        raise SystemExit(f"{SCORER} is missing: build it first (cargo build --release)")
    lines = "\n".join(json.dumps({"truth": t, "prediction": p}) for p, t in zip(preds, truths))
    out = subprocess.run([SCORER, "score", "--pairs", "-"], input=lines, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def attribute_accuracy(preds, truths):
    """Pooled attribute accuracy as `spec-llava eval` computes it."""
    return engine_scores(preds, truths)["attribute_accuracy"]


# ----------------------------------------------------------------------------- data

def load_scenes(directory, cache):
    """All scenes of a `spec-llava scenes` directory as (uint8 [N,64,64,3], captions, seeds)."""
    if cache and os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        return z["images"], [str(c) for c in z["captions"]], z["seeds"]
    rows = [json.loads(l) for l in open(os.path.join(directory, "captions.jsonl"))]
    images = np.stack([np.asarray(Image.open(os.path.join(directory, r["file"])).convert("RGB"))
                       for r in rows])
    captions = [r["caption"] for r in rows]
    seeds = np.array([r["seed"] for r in rows], dtype=np.int64)
    if cache:
        np.savez(cache, images=images, captions=np.array(captions), seeds=seeds)
    return images, captions, seeds


def pixel_values(images_u8):
    """uint8 [B,64,64,3] -> normalized float [B,3,64,64], as CLIPImageProcessor does for 64x64
    inputs (resize and crop are identities): x/255, then (x - mean) / std."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------- tokenizer

def prompt_string():
    return "USER: <image>\n" + PROMPT_TEXT + " ASSISTANT:"


def build_tokenizer(captions, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # Captions as they follow "ASSISTANT:" (leading space), plus the prompt so it tokenizes short.
    corpus = [" " + c for c in captions] + [prompt_string().replace("<image>", "")] * 1000
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, s
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<image>"], model_max_length=256, padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHAT_TEMPLATE)
    return fast


def build_processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_resize=True,
        do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True, resample=3)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token="<image>", chat_template=CHAT_TEMPLATE)


def save_processor(processor, directory):
    processor.save_pretrained(directory)
    # Keep the template inside tokenizer_config.json too (some loaders only read that file).
    path = os.path.join(directory, "tokenizer_config.json")
    cfg = json.load(open(path))
    cfg["chat_template"] = CHAT_TEMPLATE
    json.dump(cfg, open(path, "w"), indent=2, ensure_ascii=False)
    json.dump({"chat_template": CHAT_TEMPLATE}, open(os.path.join(directory, "chat_template.json"), "w"),
              indent=2)


def encode_captions(tokenizer, captions):
    """Prompt ids (with BOS and 64 image tokens) and per-caption ids (caption + EOS), checking that
    tokenizing the whole sequence equals prompt ids + caption ids (what greedy decoding yields)."""
    full_prompt = prompt_string().replace("<image>", "<image>" * N_IMAGE_TOKENS)
    prompt_ids = tokenizer(full_prompt)["input_ids"]
    assert prompt_ids[0] == BOS_ID and prompt_ids.count(IMAGE_ID) == N_IMAGE_TOKENS, prompt_ids
    cap_ids = tokenizer([" " + c for c in captions], add_special_tokens=False)["input_ids"]
    full = tokenizer([full_prompt + " " + c for c in captions])["input_ids"]
    for c, ids, whole in zip(captions, cap_ids, full):
        if whole != prompt_ids + ids:
            raise ValueError(f"token boundary differs for caption {c!r}")
    return prompt_ids, [ids + [EOS_ID] for ids in cap_ids]


def make_batch(prompt_ids, cap_ids, idx):
    """Right-padded input_ids, attention_mask and labels (-100 except caption tokens and EOS)."""
    seqs = [prompt_ids + cap_ids[i] for i in idx]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    p = len(prompt_ids)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        labels[r, p:len(s)] = ids[r, p:len(s)]
    return ids, mask, labels


# ----------------------------------------------------------------------------- models

def llava_config(args, vocab_size, text_hidden, text_layers, text_heads, text_kv, text_inter):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
        num_hidden_layers=args.vision_layers, num_attention_heads=args.vision_heads,
        image_size=64, patch_size=8, num_channels=3, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, projection_dim=args.vision_hidden)
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=text_inter,
        num_hidden_layers=text_layers, num_attention_heads=text_heads,
        num_key_value_heads=text_kv, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_ID,
        image_seq_length=N_IMAGE_TOKENS, vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        multimodal_projector_bias=True, tie_word_embeddings=False)
    cfg.pad_token_id = PAD_ID
    return cfg


def new_model(cfg):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    return model


def decoder_params(model):
    lm = model.model.language_model
    return sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)


# Patch centres at 4, 12, ..., 60 px; cells span 64/3 px: the cell each of the 64 patches lies in.
_CELL_OF = [int((8 * p + 4) // (64 / 3)) for p in range(8)]
PATCH_CELL = torch.tensor([_CELL_OF[py] * 3 + _CELL_OF[px] for py in range(8) for px in range(8)])


class PatchHead(torch.nn.Module):
    """Training-only probe on the vision features (dropped at export): every patch predicts, with
    one linear map, the shape-or-empty, colour and size of the object in its 3x3-grid cell, and the
    mean of the patches predicts the background. Dense supervision (64 labels an image) pushes
    each image token to carry its cell's object in a linearly readable form, which is what the
    projector and decoder then read."""

    def __init__(self, hidden):
        super().__init__()
        self.patch = torch.nn.Linear(hidden, 9 + 9 + 3)
        self.bg = torch.nn.Linear(hidden, 4 + 4)
        pool = torch.zeros(9, 64)
        pool[PATCH_CELL, torch.arange(64)] = 1
        self.register_buffer("pool", pool / pool.sum(1, keepdim=True), persistent=False)

    def forward(self, feats, cell_labels, bg_labels):
        logits = self.patch(feats).float()
        lab = cell_labels[:, PATCH_CELL.to(cell_labels.device)]
        loss = F.cross_entropy(logits[..., :9].reshape(-1, 9), lab[..., 0].reshape(-1))
        loss = loss + F.cross_entropy(logits[..., 9:18].reshape(-1, 9), lab[..., 1].reshape(-1),
                                      ignore_index=-100)
        loss = loss + F.cross_entropy(logits[..., 18:].reshape(-1, 3), lab[..., 2].reshape(-1),
                                      ignore_index=-100)
        bg = self.bg(feats.mean(1)).float()
        loss = loss + F.cross_entropy(bg[:, :4], bg_labels[:, 0]) + F.cross_entropy(bg[:, 4:], bg_labels[:, 1])
        return loss

    @torch.no_grad()
    def accuracy(self, feats, cell_labels, bg_labels):
        """Per-cell accuracy (patch logits averaged over the cell): shape on occupied cells,
        'empty' on empty ones, colour and size on occupied ones, background pattern+colour."""
        cells = torch.einsum("cp,bpk->bck", self.pool, self.patch(feats).float())
        occ = cell_labels[..., 0] > 0
        hit = lambda lo, hi, k: cells[..., lo:hi].argmax(-1) == cell_labels[..., k]
        bg = self.bg(feats.mean(1)).float()
        bg_ok = (bg[:, :4].argmax(-1) == bg_labels[:, 0]) & (bg[:, 4:].argmax(-1) == bg_labels[:, 1])
        return {"shape": hit(0, 9, 0)[occ].float().mean().item(),
                "empty": hit(0, 9, 0)[~occ].float().mean().item(),
                "colour": hit(9, 18, 1)[occ].float().mean().item(),
                "size": hit(18, 21, 2)[occ].float().mean().item(),
                "background": bg_ok.float().mean().item()}


def vision_features(model, pixels):
    """The features LLaVA feeds its projector: hidden_states[vision_feature_layer], CLS dropped."""
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def text_logits(model, ids, mask, feats):
    """LLaVA forward from precomputed vision features (same maths as the HF forward)."""
    emb = model.get_input_embeddings()(ids)
    img = model.model.multi_modal_projector(feats).to(emb.dtype)
    emb = emb.masked_scatter((ids == IMAGE_ID).unsqueeze(-1).expand_as(emb), img)
    hidden = model.model.language_model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
    return model.lm_head(hidden)


# ----------------------------------------------------------------------------- training utils

class Schedule:
    """Linear warm-up then cosine decay over a wall-clock budget (or a step budget)."""

    def __init__(self, peak, minutes, warmup_steps, steps=None, floor=0.05):
        self.peak, self.budget, self.warmup, self.steps, self.floor = peak, minutes * 60, warmup_steps, steps, floor
        self.start = time.time()

    def progress(self, step):
        if self.steps:
            return step / self.steps
        return (time.time() - self.start) / self.budget

    def lr(self, step):
        frac = min(self.progress(step), 1.0)
        warm = min(1.0, (step + 1) / self.warmup)
        return self.peak * warm * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac)))

    def done(self, step):
        return self.progress(step) >= 1.0


class LossLog:
    def __init__(self, path, fields):
        new = not os.path.exists(path)
        self.f = open(path, "a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=fields)
        if new:
            self.w.writeheader()

    def write(self, **row):
        self.w.writerow(row)
        self.f.flush()


def save_ckpt(path, **state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def make_optimizer(params, lr, wd):
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-8)


@torch.no_grad()
def greedy_captions(model, prompt_ids, images_u8, batch=50, max_new_tokens=64):
    model.eval()
    out = []
    for s in range(0, len(images_u8), batch):
        px = pixel_values(images_u8[s:s + batch].to(model.device))
        ids = torch.tensor([prompt_ids] * len(px), device=model.device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px,
                             do_sample=False, max_new_tokens=max_new_tokens, num_beams=1)
        out.extend(gen[:, ids.shape[1]:].tolist())
    model.train()
    return out


def exact_match(tokenizer, model, prompt_ids, images_u8, captions):
    outs = greedy_captions(model, prompt_ids, images_u8)
    texts = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
    em = sum(t == c for t, c in zip(texts, captions)) / len(captions)
    return em, attribute_accuracy(texts, captions), texts


# ----------------------------------------------------------------------------- stages

class Ctx:
    """Shared state: data, tokenizer, paths."""

    def __init__(self, args):
        self.args = args
        os.makedirs(args.work, exist_ok=True)
        os.makedirs(args.logs, exist_ok=True)
        torch.set_num_threads(args.threads)
        if args.device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dev = torch.device(args.device)
        torch.manual_seed(args.seed)
        self.tok_dir = os.path.join(args.work, "processor")
        self._train = None
        self._eval = None

    def train_data(self):
        if self._train is None:
            t0 = time.time()
            images, captions, seeds = load_scenes(self.args.train_data, os.path.join(self.args.work, "train.npz"))
            assert seeds.min() >= 1_000_000, "training seeds must be >= 1,000,000"
            self._train = (torch.from_numpy(images), captions)
            log(f"train data: {len(captions)} scenes (seeds {seeds.min()}..{seeds.max()}) in {time.time() - t0:.0f}s")
        return self._train

    def eval_data(self):
        if self._eval is None:
            images, captions, seeds = load_scenes(self.args.eval_data, None)
            n = self.args.eval_count
            self._eval = (torch.from_numpy(images[:n]), captions[:n], seeds[:n])
        return self._eval

    def processor(self):
        from transformers import LlavaProcessor
        return LlavaProcessor.from_pretrained(self.tok_dir)

    def encoded(self):
        tok = self.processor().tokenizer
        _, captions = self.train_data()
        prompt_ids, cap_ids = encode_captions(tok, captions)
        return tok, prompt_ids, cap_ids


def stage_tokenizer(ctx):
    _, captions = ctx.train_data()
    if ctx.args.tokenizer_from:
        # Same ids as the committed pair, so a retrained model is a drop-in replacement.
        from transformers import LlavaProcessor
        tok = LlavaProcessor.from_pretrained(ctx.args.tokenizer_from).tokenizer
        log(f"tokenizer from {ctx.args.tokenizer_from}")
    else:
        tok = build_tokenizer(captions, ctx.args.vocab_size)
    processor = build_processor(tok)
    save_processor(processor, ctx.tok_dir)
    tok = ctx.processor().tokenizer
    prompt_ids, cap_ids = encode_captions(tok, captions)
    lens = [len(c) for c in cap_ids]
    log(f"tokenizer: vocab {len(tok)}, prompt {len(prompt_ids)} tokens, caption+EOS "
        f"{min(lens)}..{max(lens)} (mean {np.mean(lens):.1f}); boundary check passed on {len(captions)} captions")
    # The real processor must produce exactly our training prompt.
    proc = ctx.processor()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT_TEXT}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    assert text == prompt_string(), repr(text)
    images, _ = ctx.train_data()
    enc = proc(images=[Image.fromarray(images[0].numpy())], text=text, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == prompt_ids
    assert torch.allclose(enc["pixel_values"], pixel_values(images[:1]), atol=1e-5)
    log("processor check passed: chat template, image-token expansion, pixel values")


def target_config(ctx, vocab):
    a = ctx.args
    return llava_config(a, vocab, a.text_hidden, a.text_layers, a.text_heads, a.text_kv, a.text_inter)


def draft_config(ctx, vocab):
    a = ctx.args
    return llava_config(a, vocab, a.draft_hidden, a.draft_layers, a.draft_heads, a.draft_kv, a.draft_inter)


def stage_vision(ctx):
    """The CLIP tower alone, supervised per patch (`PatchHead`) on labels parsed from the captions:
    ~5x cheaper a sample than LLaVA training (no decoder), so it can afford the many samples that
    shape recognition needs. Resumable: `work/vision.pt` holds tower, head, optimizer and counters;
    each run adds `--vision-minutes` of cosine schedule (a warm restart) to what is there."""
    a = ctx.args
    tok = ctx.processor().tokenizer
    images, captions = ctx.train_data()
    cell_labels, bg_labels = aux_labels(captions)
    eval_images, eval_caps, _ = ctx.eval_data()
    eval_cells, eval_bg = aux_labels(eval_caps)
    dev = ctx.dev
    model = new_model(target_config(ctx, len(tok)))
    tower = model.model.vision_tower
    head = PatchHead(a.vision_hidden)
    params = list(tower.parameters()) + list(head.parameters())
    opt = make_optimizer(params, a.vision_lr, a.wd)
    path = os.path.join(a.work, "vision.pt")
    done = {"step": 0, "samples": 0, "seconds": 0.0}
    if os.path.exists(path):
        state = torch.load(path, map_location="cpu")
        tower.load_state_dict(state["tower"])
        head.load_state_dict(state["head"])
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        done = {k: state[k] for k in done}
        log(f"vision: resuming from {path} ({done['samples']} samples so far)")
    elif a.init_from:
        model.load_state_dict(exported_state(a.init_from))
        log(f"vision tower initialised from {a.init_from}")
    tower.to(dev)
    head.to(dev)
    lossf = LossLog(os.path.join(a.logs, "vision_loss.csv"),
                    ["samples", "seconds", "lr", "loss", "shape", "empty", "colour", "size", "background"])
    gen = torch.Generator().manual_seed(a.seed + done["step"])
    sched = Schedule(a.vision_lr, a.vision_minutes, 50)
    step, t0, last_eval, last_ckpt = 0, time.time(), time.time(), time.time()

    def probe():
        tower.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            feats = torch.cat([vision_features(model, pixel_values(eval_images[s:s + 100].to(dev)))
                               for s in range(0, len(eval_images), 100)])
        tower.train()
        return head.accuracy(feats.float(), eval_cells.to(dev), eval_bg.to(dev))

    def save():
        save_ckpt(path, tower=tower.state_dict(), head=head.state_dict(), opt=opt.state_dict(),
                  step=done["step"] + step, samples=done["samples"] + step * a.vision_batch,
                  seconds=done["seconds"] + time.time() - t0)

    while not sched.done(step):
        for g in opt.param_groups:
            g["lr"] = sched.lr(step)
        idx = torch.randint(0, len(captions), (a.vision_batch,), generator=gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            feats = vision_features(model, pixel_values(images[idx].to(dev)))
            loss = head(feats, cell_labels[idx].to(dev), bg_labels[idx].to(dev))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if time.time() - last_eval > a.probe_minutes * 60 or sched.done(step):
            acc = probe()
            samples = done["samples"] + step * a.vision_batch
            lossf.write(samples=samples, seconds=round(done["seconds"] + time.time() - t0, 1),
                        lr=f"{sched.lr(step):.2e}", loss=f"{loss.item():.4f}",
                        **{k: f"{v:.4f}" for k, v in acc.items()})
            rate = step * a.vision_batch / (time.time() - t0)
            log(f"vision samples {samples} loss {loss.item():.3f} probe "
                + " ".join(f"{k} {v:.3f}" for k, v in acc.items()) + f" ({rate:.0f}/s)")
            last_eval = time.time()
        if time.time() - last_ckpt > a.ckpt_minutes * 60:
            save()
            last_ckpt = time.time()
    save()
    acc = probe()
    write_stats(ctx, "vision", {"samples": done["samples"] + step * a.vision_batch,
                                "minutes": round((done["seconds"] + time.time() - t0) / 60, 1),
                                "probe_on_eval": {k: round(v, 4) for k, v in acc.items()}})
    log(f"vision done: {acc}")


def exported_state(directory):
    """The float32 state dict of an exported checkpoint (e.g. the committed demo target or draft):
    what `--init-from` / `--draft-init-from` start from."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).state_dict()


def stage_target(ctx):
    """LLaVA training on the captions: CE on caption tokens + EOS. The tower starts from the vision
    stage (`work/vision.pt`) and learns at `--tower-lr-scale` of the LR (0: frozen, so only the
    forward runs); the patch head's loss keeps it honest when it does learn."""
    a = ctx.args
    tok, prompt_ids, cap_ids = ctx.encoded()
    images, captions = ctx.train_data()
    cell_labels, bg_labels = aux_labels(captions)
    eval_images, eval_caps, _ = ctx.eval_data()
    dev = ctx.dev
    model = new_model(target_config(ctx, len(tok)))
    aux = PatchHead(a.vision_hidden)
    ckpt_path = os.path.join(a.work, "target.pt")
    vision_path = os.path.join(a.work, "vision.pt")
    start = {"step": 0, "samples": 0, "seconds": 0.0}
    if a.resume and os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(state["model"])
        if "aux" in state:
            aux.load_state_dict(state["aux"])
        start = {k: state[k] for k in start}
        log(f"resuming the target from {ckpt_path} (step {start['step']}, {start['samples']} samples)")
    elif a.init_from:
        model.load_state_dict(exported_state(a.init_from))
        log(f"target initialised from {a.init_from}")
    if os.path.exists(vision_path) and not a.resume:
        state = torch.load(vision_path, map_location="cpu")
        model.model.vision_tower.load_state_dict(state["tower"])
        aux.load_state_dict(state["head"])
        log(f"vision tower from {vision_path} ({state['samples']} samples of the vision stage)")
    model.to(dev)
    aux.to(dev)
    log(f"target: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"decoder (no embeddings) {decoder_params(model) / 1e6:.2f}M")
    lossf = LossLog(os.path.join(a.logs, "target_loss.csv"),
                    ["phase", "step", "samples", "seconds", "lr", "loss", "ce", "aux"])
    n = len(captions)
    gen = torch.Generator().manual_seed(a.seed + start["step"])
    tower_params = list(model.model.vision_tower.parameters())
    frozen = a.tower_lr_scale == 0
    for p in tower_params:
        p.requires_grad_(not frozen)
    rest = [p for n_, p in model.named_parameters() if "vision_tower" not in n_]
    groups = [rest] if frozen else [rest, tower_params + list(aux.parameters())]
    params = [p for g in groups for p in g]
    opt = torch.optim.AdamW([{"params": g, "weight_decay": a.wd, "scale": s}
                             for g, s in zip(groups, [1.0, a.tower_lr_scale])],
                            lr=a.lr, betas=(0.9, 0.98), eps=1e-8)
    sched = Schedule(a.lr, a.target_minutes, a.warmup, steps=a.target_steps)
    step, t_phase, last_ckpt = 0, time.time(), time.time()
    t_start = t_phase - start["seconds"]
    samples = start["samples"]
    while not sched.done(step):
        for g in opt.param_groups:
            g["lr"] = sched.lr(step) * g["scale"]
        idx = torch.randint(0, n, (a.batch,), generator=gen)
        ids, mask, labels = (t.to(dev) for t in make_batch(prompt_ids, cap_ids, idx.tolist()))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            with torch.set_grad_enabled(not frozen):
                feats = vision_features(model, pixel_values(images[idx].to(dev)))
            logits = text_logits(model, ids, mask, feats).float()
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                 ignore_index=-100)
            aux_loss = (aux(feats, cell_labels[idx].to(dev), bg_labels[idx].to(dev))
                        if a.aux_weight > 0 and not frozen else torch.zeros((), device=dev))
            loss = ce + a.aux_weight * aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        samples += len(idx)
        if step % 5 == 0:
            lossf.write(phase="llava", step=start["step"] + step, samples=samples, seconds=round(time.time() - t_start, 1),
                        lr=f"{sched.lr(step):.2e}", loss=f"{loss.item():.4f}", ce=f"{ce.item():.4f}",
                        aux=f"{aux_loss.item():.4f}")
        if step % 25 == 0:
            rate = (samples - start["samples"]) / (time.time() - t_phase)
            log(f"llava step {start['step'] + step} samples {samples} ce {ce.item():.4f} aux {aux_loss.item():.4f} "
                f"lr {sched.lr(step):.2e} ({rate:.1f}/s)")
        if time.time() - last_ckpt > a.ckpt_minutes * 60:
            save_ckpt(ckpt_path, model=model.state_dict(), aux=aux.state_dict(), config=model.config.to_dict(),
                      step=start["step"] + step, samples=samples, seconds=time.time() - t_start, final=False)
            em, attr, _ = exact_match(tok, model, prompt_ids, eval_images[:a.probe_count], eval_caps[:a.probe_count])
            log(f"checkpoint at step {step}: probe exact match {em:.3f}, attribute acc {attr:.3f} on {a.probe_count}")
            last_ckpt = time.time()
    seconds = time.time() - t_start
    save_ckpt(ckpt_path, model=model.state_dict(), aux=aux.state_dict(), config=model.config.to_dict(),
              step=start["step"] + step, samples=samples, seconds=seconds, final=True)
    em, attr, texts = exact_match(tok, model, prompt_ids, eval_images, eval_caps)
    stats = {"steps_llava": start["step"] + step, "samples_llava": samples, "minutes": round(seconds / 60, 1),
             "tower_lr_scale": a.tower_lr_scale, "init_from": a.init_from if not a.resume else None,
             "final_ce": tail_mean(os.path.join(a.logs, "target_loss.csv"), "ce"),
             "python_exact_match_fp32": em, "python_attribute_accuracy_fp32": attr,
             "eval_seeds": f"0..{len(eval_caps) - 1}"}
    write_stats(ctx, "target", stats)
    show_errors(texts, eval_caps)
    log(f"target done: {stats}")


def tail_mean(path, field, rows=40):
    vals = [float(r[field]) for r in csv.DictReader(open(path)) if r.get(field)]
    return round(float(np.mean(vals[-rows:])), 4) if vals else None


def show_errors(texts, caps, k=5):
    bad = [(t, c) for t, c in zip(texts, caps) if t != c][:k]
    for t, c in bad:
        log(f"  want: {c}\n           got:  {t}")


def write_stats(ctx, name, stats):
    path = os.path.join(ctx.args.logs, "stats.json")
    all_stats = json.load(open(path)) if os.path.exists(path) else {}
    all_stats[name] = {**all_stats.get(name, {}), **stats}
    json.dump(all_stats, open(path, "w"), indent=2)


def load_target(ctx, vocab):
    model = new_model(target_config(ctx, vocab))
    state = torch.load(os.path.join(ctx.args.work, "target.pt"), map_location="cpu")
    model.load_state_dict(state["model"])
    return model


def stage_draft(ctx):
    a = ctx.args
    tok, prompt_ids, cap_ids = ctx.encoded()
    images, _ = ctx.train_data()
    eval_images, eval_caps, _ = ctx.eval_data()
    dev = ctx.dev
    target = load_target(ctx, len(tok)).eval().to(dev)
    for p in target.parameters():
        p.requires_grad_(False)
    draft = new_model(draft_config(ctx, len(tok)))
    draft.model.vision_tower.load_state_dict(target.model.vision_tower.state_dict())
    for p in draft.model.vision_tower.parameters():
        p.requires_grad_(False)
    ckpt_path = os.path.join(a.work, "draft.pt")
    start = {"step": 0, "samples": 0, "seconds": 0.0}
    if a.resume and os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location="cpu")
        draft.load_state_dict(state["model"])
        draft.model.vision_tower.load_state_dict(target.model.vision_tower.state_dict())
        start = {k: state[k] for k in start}
        log(f"resuming the draft from {ckpt_path} (step {start['step']})")
    elif a.draft_init_from:
        draft.load_state_dict(exported_state(a.draft_init_from))
        draft.model.vision_tower.load_state_dict(target.model.vision_tower.state_dict())
        log(f"draft initialised from {a.draft_init_from}")
    draft.to(dev)
    n = len(cap_ids)
    if a.draft_on_target_outputs > 0:
        # Sequence-level distillation: the draft learns on what the target writes (its mistakes
        # included), which is exactly what speculative decoding asks it to predict.
        n = min(n, a.draft_on_target_outputs)
        t0 = time.time()
        outs = greedy_captions(target, prompt_ids, images[:n])
        cap_ids = [o[:o.index(EOS_ID) + 1] if EOS_ID in o else o for o in outs]
        target.eval()
        log(f"draft: target captions of {n} training scenes in {time.time() - t0:.0f}s")
    ratio = decoder_params(draft) / decoder_params(target)
    log(f"draft: {sum(p.numel() for p in draft.parameters()) / 1e6:.2f}M params, decoder {decoder_params(draft) / 1e6:.2f}M "
        f"({ratio:.3f} of the target's decoder)")
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = make_optimizer(params, a.draft_lr, a.wd)
    sched = Schedule(a.draft_lr, a.draft_minutes, a.warmup, steps=a.draft_steps)
    lossf = LossLog(os.path.join(a.logs, "draft_loss.csv"), ["step", "samples", "seconds", "lr", "loss", "kl", "ce"])
    gen = torch.Generator().manual_seed(a.seed + 1 + start["step"])
    step, samples = 0, start["samples"]
    last_ckpt = time.time()
    t_start = last_ckpt - start["seconds"]
    while not sched.done(step):
        for g in opt.param_groups:
            g["lr"] = sched.lr(step)
        idx = torch.randint(0, n, (a.batch,), generator=gen)
        ids, mask, labels = (t.to(dev) for t in make_batch(prompt_ids, cap_ids, idx.tolist()))
        sel = labels[:, 1:] != -100
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            with torch.no_grad():
                feats = vision_features(target, pixel_values(images[idx].to(dev)))
                t_logits = text_logits(target, ids, mask, feats)[:, :-1][sel].float()
            d_logits = text_logits(draft, ids, mask, feats)[:, :-1][sel].float()
        t_logp = F.log_softmax(t_logits, -1)
        d_logp = F.log_softmax(d_logits, -1)
        kl = (t_logp.exp() * (t_logp - d_logp)).sum(-1).mean()
        ce = F.nll_loss(d_logp, labels[:, 1:][sel])
        loss = kl + a.draft_ce * ce
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        samples += len(idx)
        if step % 5 == 0:
            lossf.write(step=start["step"] + step, samples=samples, seconds=round(time.time() - t_start, 1), lr=f"{sched.lr(step):.2e}",
                        loss=f"{loss.item():.4f}", kl=f"{kl.item():.4f}", ce=f"{ce.item():.4f}")
        if step % 25 == 0:
            log(f"draft step {start['step'] + step} samples {samples} kl {kl.item():.4f} ce {ce.item():.4f} "
                f"({samples / (time.time() - t_start):.1f}/s)")
        if time.time() - last_ckpt > a.ckpt_minutes * 60:
            save_ckpt(ckpt_path, model=draft.state_dict(), step=start["step"] + step, samples=samples,
                      seconds=time.time() - t_start, final=False)
            last_ckpt = time.time()
    seconds = time.time() - t_start
    save_ckpt(ckpt_path, model=draft.state_dict(), step=start["step"] + step, samples=samples, seconds=seconds,
              final=True)
    em, attr, texts = exact_match(tok, draft, prompt_ids, eval_images, eval_caps)
    stats = {"steps": start["step"] + step, "samples": samples, "minutes": round(seconds / 60, 1),
             "final_kl": tail_mean(os.path.join(a.logs, "draft_loss.csv"), "kl"),
             "final_ce": tail_mean(os.path.join(a.logs, "draft_loss.csv"), "ce"),
             "python_exact_match_fp32": em, "python_attribute_accuracy_fp32": attr,
             "decoder_param_ratio": round(ratio, 4),
             "distilled_on_target_captions": n if a.draft_on_target_outputs > 0 else 0,
             "init_from": a.draft_init_from if not a.resume else None}
    write_stats(ctx, "draft", stats)
    show_errors(texts, eval_caps)
    log(f"draft done: {stats}")


def stage_export(ctx):
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    a = ctx.args
    proc = ctx.processor()
    tok = proc.tokenizer
    target = load_target(ctx, len(tok))
    draft = new_model(draft_config(ctx, len(tok)))
    draft_ckpt = os.path.join(a.work, "draft.pt")
    if os.path.exists(draft_ckpt):
        draft.load_state_dict(torch.load(draft_ckpt, map_location="cpu")["model"])
    else:
        log("warning: no draft checkpoint; exporting an untrained draft")
    draft.model.vision_tower.load_state_dict(target.model.vision_tower.state_dict())
    dirs = {}
    for name, model in (("target", target), ("draft", draft)):
        out = os.path.join(a.out, name)
        os.makedirs(out, exist_ok=True)
        model.half().save_pretrained(out, safe_serialization=True)
        save_processor(proc, out)
        dirs[name] = out
    # The shared vision tower must be byte-identical in both files.
    files = {k: safe_open(os.path.join(d, "model.safetensors"), "pt") for k, d in dirs.items()}
    vkeys = [k for k in files["target"].keys() if "vision_tower" in k]
    assert vkeys and all(torch.equal(files["target"].get_tensor(k), files["draft"].get_tensor(k)) for k in vkeys)
    log(f"exported; {len(vkeys)} vision tensors identical in target and draft")
    # End-to-end check through the saved files and the real LlavaProcessor.
    eval_images, eval_caps, seeds = ctx.eval_data()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT_TEXT}]}]
    for name, d in dirs.items():
        from transformers import LlavaProcessor
        p = LlavaProcessor.from_pretrained(d)
        m = LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
        prompt = p.apply_chat_template(msgs, add_generation_prompt=True)
        texts = []
        for s in range(0, len(eval_caps), 50):
            imgs = [Image.open(os.path.join(a.eval_data, f"scene_{int(seed)}.png")) for seed in seeds[s:s + 50]]
            enc = p(images=imgs, text=[prompt] * len(imgs), return_tensors="pt")
            enc.pop("token_type_ids", None)
            with torch.no_grad():
                gen = m.generate(**enc, do_sample=False, max_new_tokens=64)
            texts += p.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        em = sum(t == c for t, c in zip(texts, eval_caps)) / len(eval_caps)
        attr = attribute_accuracy(texts, eval_caps)
        size_mb = os.path.getsize(os.path.join(d, "model.safetensors")) / 1e6
        write_stats(ctx, name, {"python_exact_match_export_fp16_weights": em,
                                "python_attribute_accuracy_export_fp16_weights": attr,
                                "params": sum(p_.numel() for p_ in m.parameters()),
                                "decoder_params": decoder_params(m), "safetensors_mb": round(size_mb, 2)})
        log(f"{name}: exported-model exact match {em:.3f}, attribute acc {attr:.3f} ({size_mb:.1f} MB)")
    write_cards(ctx, dirs)
    plot_losses(ctx)


def write_cards(ctx, dirs):
    a = ctx.args
    stats = json.load(open(os.path.join(a.logs, "stats.json")))
    commands = stats.get("commands", {})
    for name, d in dirs.items():
        cfg = json.load(open(os.path.join(d, "config.json")))
        tc, vc = cfg["text_config"], cfg["vision_config"]
        s = stats.get(name, {})
        lines = [
            f"# spec-llava demo {name}", "",
            f"A tiny LLaVA ({'speculative-decoding draft' if name == 'draft' else 'target'}) that captions the "
            "procedural 64x64 scenes of spec-llava (`src/scenes/`). Hugging Face `LlavaForConditionalGeneration` "
            "format, float16 safetensors. It knows nothing outside that scene world.", "",
            "## Data", "",
            f"Scenes from `spec-llava scenes --seed 1000000 --count {a.train_count}` (seeds 1,000,000 and up; "
            "evaluation uses seeds 0.., never trained on). Prompt: `USER: <image>\\nDescribe the image. ASSISTANT:`; "
            "the answer is the scene's canonical caption.", "",
            "## Architecture", "",
            f"- Vision: CLIP ViT, 64 px, patch 8 (64 image tokens, strategy `default`, feature layer -1), "
            f"{vc['num_hidden_layers']} layers, hidden {vc['hidden_size']}, {vc['num_attention_heads']} heads, "
            f"MLP {vc['intermediate_size']}, quick_gelu.",
            f"- Projector: Linear({vc['hidden_size']}, {tc['hidden_size']}) -> GELU -> Linear({tc['hidden_size']}, {tc['hidden_size']}).",
            f"- Text: Llama, {tc['num_hidden_layers']} layers, hidden {tc['hidden_size']}, {tc['num_attention_heads']} heads "
            f"({tc['num_key_value_heads']} KV heads), MLP {tc['intermediate_size']}, vocab {tc['vocab_size']} "
            "(byte-level BPE; `<pad>`=0, `<s>`=1, `</s>`=2, `<image>`=3), untied lm_head.",
            f"- Parameters: {s.get('params', 0) / 1e6:.2f}M in all; text decoder without embeddings "
            f"{s.get('decoder_params', 0) / 1e6:.3f}M. File {s.get('safetensors_mb')} MB.",
        ]
        if name == "draft":
            lines += [f"- Shares the target's vision tower: the tensors are byte-identical to the target's (frozen "
                      f"during distillation); own projector and decoder. Decoder parameters = "
                      f"{s.get('decoder_param_ratio')} of the target's."]
        stages = ["tokenizer", "vision", "target"] if name == "target" else ["draft"]
        lines += ["", "## Training", "", "Commands (from the repository root; see tools/train_demo/README.md; "
                  "the latest run of each stage):", ""]
        lines += [f"- {st}: `{commands[st]}`" for st in stages if st in commands] + [""]
        if name == "target":
            v = stats.get("vision", {})
            probe = v.get("probe_on_eval", {})
            lines += [f"CPU (2 cores), AdamW, cosine schedules over wall-clock budgets. "
                      f"(1) Vision stage: the CLIP tower alone, every patch supervised with its grid cell's "
                      f"shape-or-empty, colour and size and the image's background (labels parsed from the "
                      f"captions; the linear head is dropped at export): {v.get('samples')} samples, "
                      f"{v.get('minutes')} minutes; per-cell probe accuracy on held-out scenes: "
                      + ", ".join(f"{k} {val:.3f}" for k, val in probe.items()) + ". "
                      "(2) LLaVA stage"
                      + (f", starting from `{s['init_from']}` (its projector and decoder; the tower "
                         "from stage 1)" if s.get("init_from") else ", from scratch but for the tower")
                      + ": loss on caption tokens + EOS, tower learning rate x "
                      f"{s.get('tower_lr_scale')} (0: frozen): {s.get('steps_llava')} steps, "
                      f"{s.get('samples_llava')} samples, {s.get('minutes')} minutes. "
                      f"Final caption cross-entropy (mean of the last logged steps): {s.get('final_ce')}."]
        else:
            on = (f"the target's own greedy captions of {s['distilled_on_target_captions']} training scenes"
                  if s.get("distilled_on_target_captions") else "the true captions")
            start = f" starting from `{s['init_from']}`" if s.get("init_from") else ""
            lines += [f"Distilled from the target{start} on {on}: KL(target || draft) on the caption positions + "
                      f"{a.draft_ce} x CE; "
                      f"{s.get('steps')} steps, {s.get('samples')} samples, {s.get('minutes')} minutes. "
                      f"Final KL {s.get('final_kl')}, CE {s.get('final_ce')}."]
        lines += ["", "## Python check (transformers 4.57.1, greedy, held-out seeds "
                  f"0..{a.eval_count - 1})", "",
                  f"- Exact caption match, fp32 training weights: {s.get('python_exact_match_fp32')}",
                  f"- Exact caption match, exported fp16 weights via `LlavaProcessor` + `generate`: "
                  f"{s.get('python_exact_match_export_fp16_weights')}",
                  f"- Attribute accuracy (scored by `spec-llava score`, the scorer of `spec-llava eval`): "
                  f"{s.get('python_attribute_accuracy_export_fp16_weights')}", "",
                  "## Evaluation (spec-llava eval)", ""]
        lines += engine_eval_lines(a, d)
        open(os.path.join(d, "README.md"), "w").write("\n".join(lines))


def engine_eval_lines(a, d):
    """The Rust engine's own score of the exported files (`spec-llava eval`, CPU engine, held-out
    seeds 0..a.engine_eval_scenes-1), as model-card lines; a note instead when the CLI is missing."""
    cmd = [a.spec_llava, "eval", "--backend", "cpu", "--model", d, "--scenes", str(a.engine_eval_scenes),
           "--seed", "0", "--json"]
    shown = " ".join(["spec-llava"] + cmd[1:])
    if not os.path.exists(a.spec_llava):
        return [f"Not run at export ({a.spec_llava} missing: `cargo build --release`); run `{shown}`.", ""]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    per = ", ".join(f"{k} {v * 100:.1f}%" for k, v in sorted(r["per_attribute"].items()) if k != "parsed")
    return [f"`{shown}` (our engine, f32 compute, greedy; {r['scenes']} held-out scenes):", "",
            f"- Exact caption match: {r['exact_match'] * 100:.1f}%",
            f"- Attribute accuracy: {r['attribute_accuracy'] * 100:.1f}% ({per}); captions parsed by the "
            f"scene grammar: {r['per_attribute'].get('parsed', 0) * 100:.1f}%", ""]


def plot_losses(ctx):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = ctx.args.logs
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    vpath = os.path.join(logs, "vision_loss.csv")
    if os.path.exists(vpath):
        v = list(csv.DictReader(open(vpath)))
        xs = [float(r["samples"]) for r in v]
        for k in ("shape", "size", "colour"):
            axes[0].plot(xs, [float(r[k]) for r in v], label=f"probe {k} (held-out)")
        axes[0].plot(xs, [float(r["loss"]) for r in v], label="patch loss")
        axes[0].set_xlabel("samples"); axes[0].set_title("vision stage"); axes[0].legend()
    rows = [r for r in csv.DictReader(open(os.path.join(logs, "target_loss.csv"))) if r["phase"] == "llava"]
    axes[1].plot([float(r["samples"]) for r in rows], [float(r["ce"]) for r in rows], label="caption CE")
    axes[1].set_yscale("log"); axes[1].set_xlabel("samples"); axes[1].set_title("target"); axes[1].legend()
    dpath = os.path.join(logs, "draft_loss.csv")
    if os.path.exists(dpath):
        d = list(csv.DictReader(open(dpath)))
        axes[2].plot([float(r["samples"]) for r in d], [float(r["kl"]) for r in d], label="KL(target||draft)")
        axes[2].plot([float(r["samples"]) for r in d], [float(r["ce"]) for r in d], label="CE")
        axes[2].set_yscale("log"); axes[2].set_xlabel("samples"); axes[2].set_title("draft"); axes[2].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(logs, "loss_curve.png"), dpi=80)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="all", choices=["all", "tokenizer", "vision", "target", "draft", "export"])
    p.add_argument("--export-only", action="store_true", help="same as --stage export")
    p.add_argument("--train-data", default="/tmp/spec-llava-train/train")
    p.add_argument("--eval-data", default="/tmp/spec-llava-train/eval")
    p.add_argument("--train-count", type=int, default=40000, help="for the model card only")
    p.add_argument("--eval-count", type=int, default=200)
    p.add_argument("--probe-count", type=int, default=50)
    p.add_argument("--work", default="tools/train_demo/work")
    p.add_argument("--logs", default="tools/train_demo/logs")
    p.add_argument("--out", default="web/models/demo")
    p.add_argument("--spec-llava", default="target/release/spec-llava",
                   help="the CLI that scores captions (spec-llava score / eval), during training and for the cards")
    p.add_argument("--engine-eval-scenes", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    p.add_argument("--resume", action="store_true",
                   help="continue the target/draft stages from work/*.pt (no vision warm-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--vision-hidden", type=int, default=192)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--vision-heads", type=int, default=6)
    p.add_argument("--text-hidden", type=int, default=256)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--text-heads", type=int, default=8)
    p.add_argument("--text-kv", type=int, default=4)
    p.add_argument("--text-inter", type=int, default=688)
    p.add_argument("--draft-hidden", type=int, default=128)
    p.add_argument("--draft-layers", type=int, default=2)
    p.add_argument("--draft-heads", type=int, default=4)
    p.add_argument("--draft-kv", type=int, default=2)
    p.add_argument("--draft-inter", type=int, default=344)
    p.add_argument("--vision-minutes", type=float, default=40)
    p.add_argument("--vision-batch", type=int, default=64)
    p.add_argument("--vision-lr", type=float, default=2e-3)
    p.add_argument("--target-minutes", type=float, default=40)
    p.add_argument("--target-steps", type=int, default=None, help="step budget instead of minutes")
    p.add_argument("--draft-minutes", type=float, default=14)
    p.add_argument("--draft-steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--draft-lr", type=float, default=2e-3)
    p.add_argument("--draft-ce", type=float, default=0.1)
    p.add_argument("--draft-on-target-outputs", type=int, default=8000,
                   help="distil on the target's own greedy captions of this many training scenes (0: true captions)")
    p.add_argument("--draft-init-from", default=None, help="start the draft from an exported checkpoint")
    p.add_argument("--aux-weight", type=float, default=0.3)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--ckpt-minutes", type=float, default=6)
    p.add_argument("--probe-minutes", type=float, default=3, help="vision stage: probe accuracy every so often")
    p.add_argument("--tower-lr-scale", type=float, default=0.0,
                   help="target stage: the vision tower's LR as a fraction of --lr (0: frozen)")
    p.add_argument("--init-from", default=None,
                   help="start the vision/target stages from an exported checkpoint (e.g. web/models/demo/target) "
                        "instead of from scratch: how a clone without work/ continues training")
    p.add_argument("--tokenizer-from", default="web/models/demo/target",
                   help="tokenizer stage: reuse this checkpoint's tokenizer (same ids; '' trains a new one)")
    args = p.parse_args()
    global SCORER
    SCORER = args.spec_llava
    if args.export_only:
        args.stage = "export"
    ctx = Ctx(args)
    t0 = time.time()
    stages = ["tokenizer", "vision", "target", "draft", "export"] if args.stage == "all" else [args.stage]
    for s in stages:
        log(f"== stage {s}")
        globals()[f"stage_{s}"](ctx)
        if s != "export":
            # What the model cards show: the command that ran each stage (the latest run of it).
            write_stats(ctx, "commands", {s: "python tools/train_demo/train.py " + " ".join(sys.argv[1:])})
    log(f"all done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
