#!/usr/bin/env python3
"""Make the image-decoding and image-processor fixtures in tests/fixtures/images/.

Writes small synthetic test images in every format spec-llava decodes, then runs transformers' SLOW
(PIL-based) CLIPImageProcessor / SiglipImageProcessor on them and stores what they produce:

  tests/fixtures/images/*.{png,jpg,gif,webp,bmp}   the inputs
  tests/fixtures/images/<name>.preprocessor_config.json   one processor config per case family
  tests/fixtures/images/expected.safetensors
      decoded/<image>        u8 [H, W, 3]  what PIL gives for Image.open + exif_transpose + convert("RGB")
      <processor>/<image>    f32 [3, H, W] pixel_values from the slow processor
      <processor>/<image>/sub7   f32 [3, H/7, W/7] every 7th row/column (the 336 case, to stay small)
      <processor>/<image>/mean   f32 [3] per-channel mean of the full output (336 case)
  tests/fixtures/images/cases.json   what the Rust tests iterate over

Re-run: /work/pyenv/bin/python tools/reference/make_image_fixtures.py  (pinned: requirements.txt).
The output is deterministic (seeded numpy, fixed encoder settings).
"""

import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from transformers import CLIPImageProcessor, SiglipImageProcessor

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "images")


def scene(w, h, seed, noise=12.0):
    """Gradients + hard-edged shapes + noise: exercises both smooth and sharp resampling."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 128 + 100 * np.sin(x / 3.0 + y / 5.0)
    img = np.stack([r, g, b], axis=-1)
    for _ in range(3):  # rectangles with sharp edges and saturated colours
        x0, y0 = rng.randint(0, w), rng.randint(0, h)
        img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.randint(0, 256, size=3)
    cx, cy, rad = w * 0.6, h * 0.4, min(w, h) / 4
    img[(x - cx) ** 2 + (y - cy) ** 2 < rad**2] = [255, 255, 0]
    img += rng.normal(0, noise, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def smooth_scene(w, h):
    """Large, low-entropy picture (compresses well as PNG) for the 336 case."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / 17.0) * np.cos(y / 23.0)
    g = 255 * (x + y) / (w + h)
    b = np.where(((x // 40) + (y // 40)) % 2 == 0, 40.0, 215.0)  # checkerboard: sharp edges
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def png_16bit(arr, color_type):
    """PIL cannot write 16-bit RGB PNGs, so write the chunks by hand (big-endian samples)."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[row].astype(">u2").tobytes() for row in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def save(name, im, **kw):
    im.save(os.path.join(OUT, name), **kw)


def make_images():
    """Returns {file name: notes} for every input image written."""
    notes = {}
    save("at32.png", Image.fromarray(scene(32, 32, 1)))
    save("at24.png", Image.fromarray(scene(24, 24, 2)))
    save("photo.jpg", Image.fromarray(scene(80, 60, 3)), quality=90)
    save("tall.png", Image.fromarray(scene(45, 70, 4)))
    save("small.png", Image.fromarray(scene(20, 12, 5)))  # upscaled by every processor
    save("gray.png", Image.fromarray(scene(50, 40, 6)[:, :, 0]))  # mode L
    la = np.stack([scene(20, 16, 7)[:, :, 0], np.linspace(0, 255, 320).reshape(16, 20).astype(np.uint8)], -1)
    save("gray_alpha.png", Image.fromarray(la, "LA"))
    rgba = np.concatenate([scene(40, 50, 8), np.linspace(0, 255, 2000).reshape(50, 40, 1).astype(np.uint8)], -1)
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    pal = Image.fromarray(scene(48, 36, 9)).quantize(colors=32, dither=Image.Dither.NONE)
    save("palette.png", pal, transparency=0)
    save("cmyk.jpg", Image.fromarray(scene(40, 40, 10)).convert("CMYK"), quality=95)
    frames = [Image.fromarray(scene(30, 30, 11)).quantize(64), Image.fromarray(scene(30, 30, 12)).quantize(64)]
    frames[0].save(os.path.join(OUT, "anim.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("lossless.webp", Image.fromarray(scene(40, 30, 13)), lossless=True)
    save("lossy.webp", Image.fromarray(scene(40, 30, 14)), quality=90)
    save("image.bmp", Image.fromarray(scene(33, 21, 15)))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display; transformers' load_image applies it
    save("exif_rotated.jpg", Image.fromarray(scene(40, 24, 16)), quality=92, exif=exif)
    rgb16 = (scene(36, 28, 17).astype(np.uint32) * 257 + np.random.RandomState(18).randint(0, 257, (28, 36, 3)))
    with open(os.path.join(OUT, "rgb16.png"), "wb") as f:
        f.write(png_16bit(rgb16.astype(np.uint16), 2))
    gray16 = np.linspace(0, 65535, 600).reshape(20, 30).astype(np.uint16)
    with open(os.path.join(OUT, "gray16.png"), "wb") as f:
        f.write(png_16bit(gray16, 0))
    # PIL opens 16-bit gray as "I;16" and convert("RGB") CLIPS at 255 (nearly all white). spec-llava
    # keeps the high byte instead (as PIL itself does for 16-bit RGB), so the expected pixels differ.
    notes["gray16.png"] = {"expected_decode": (gray16 >> 8).astype(np.uint8)}
    save("big336.png", Image.fromarray(smooth_scene(640, 480)), optimize=True)
    return notes


LOSSY = {"photo.jpg", "cmyk.jpg", "lossy.webp", "exif_rotated.jpg"}

PROCESSORS = {
    # Explicit small sizes; to_json_string gives the full config as save_pretrained writes it.
    "clip32": CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).to_dict(),
    "siglip24": SiglipImageProcessor(size={"height": 24, "width": 24}).to_dict(),
    # Sparse hand-written configs: int sizes, class defaults for everything else.
    "clip_bilinear": {"image_processor_type": "CLIPImageProcessor", "size": 30, "crop_size": 28, "resample": 2},
    "siglip_nearest": {
        "image_processor_type": "SiglipImageProcessor",
        "size": {"height": 20, "width": 28},
        "resample": 0,
        "image_mean": [0.4, 0.5, 0.6],
        "image_std": [0.2, 0.3, 0.25],
    },
    "clip_pad": {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": False,
        "crop_size": {"height": 32, "width": 32},
        "do_normalize": False,
    },
    # llava-hf/llava-1.5-7b-hf's preprocessor_config.json.
    "clip336": {
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 336},
    },
}

SMALL_IMAGES = [
    "at32.png", "at24.png", "photo.jpg", "tall.png", "small.png", "gray.png", "gray_alpha.png", "rgba.png",
    "rgb16.png", "palette.png", "cmyk.jpg", "anim.gif", "lossless.webp", "lossy.webp", "image.bmp",
    "exif_rotated.jpg",
]
RUNS = {
    "clip32": SMALL_IMAGES,
    "siglip24": SMALL_IMAGES,
    "clip_bilinear": ["photo.jpg", "tall.png", "small.png"],
    "siglip_nearest": ["photo.jpg", "tall.png", "small.png"],
    "clip_pad": ["small.png", "tall.png", "at32.png"],
    "clip336": ["big336.png"],
}


def load(name):
    """What transformers' load_image does with a file: open, apply EXIF orientation, convert to RGB."""
    im = Image.open(os.path.join(OUT, name))
    return ImageOps.exif_transpose(im).convert("RGB")


def cfg_type(cfg):
    return cfg["image_processor_type"]


def resize_target(cfg, w, h):
    """(h, w) the processor resizes to, or None when it does not resize."""
    if not cfg.get("do_resize", True):
        return None
    size = cfg.get("size")
    if cfg_type(cfg) == "SiglipImageProcessor":
        return (size["height"], size["width"])
    short_target = size["shortest_edge"] if isinstance(size, dict) else size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(short_target * long / short)
    return (new_long, short_target) if w <= h else (short_target, new_long)


def main():
    os.makedirs(OUT, exist_ok=True)
    notes = make_images()
    tensors, cases, images = {}, [], {}
    all_images = sorted(set(SMALL_IMAGES) | {"gray16.png", "big336.png"})
    for name in all_images:
        rgb = load(name)
        raw = Image.open(os.path.join(OUT, name))
        images[name] = {
            "width": rgb.width,
            "height": rgb.height,
            "pil_mode": raw.mode,
            "lossy": name in LOSSY,
        }
        if name != "big336.png":  # 921 KB of pixels; its PNG decode is checked end to end instead
            expected = notes.get(name, {}).get("expected_decode")
            if expected is not None:
                expected = np.repeat(expected[:, :, None], 3, axis=-1)
                images[name]["note"] = "PIL clips 16-bit gray to 255; spec-llava keeps the high byte"
            tensors[f"decoded/{name}"] = np.ascontiguousarray(expected if expected is not None else np.array(rgb))
    for pname, cfg in PROCESSORS.items():
        with open(os.path.join(OUT, f"{pname}.preprocessor_config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        cls = {"CLIPImageProcessor": CLIPImageProcessor, "SiglipImageProcessor": SiglipImageProcessor}[cfg_type(cfg)]
        proc = cls.from_dict({k: v for k, v in cfg.items() if k not in ("image_processor_type", "processor_class")})
        for name in RUNS[pname]:
            rgb = load(name)
            pv = proc(images=rgb, return_tensors="np")["pixel_values"][0].astype(np.float32)
            target = resize_target(cfg, rgb.width, rgb.height)
            case = {
                "image": name,
                "processor": pname,
                "key": f"{pname}/{name}",
                "shape": list(pv.shape),
                "resized": target is not None and target != (rgb.height, rgb.width),
            }
            if pv.shape[1] > 64:  # keep fixtures small: a strided sample plus channel means
                tensors[f"{pname}/{name}/sub7"] = np.ascontiguousarray(pv[:, ::7, ::7])
                tensors[f"{pname}/{name}/mean"] = pv.reshape(3, -1).mean(axis=1).astype(np.float32)
                case["stride"] = 7
            else:
                tensors[f"{pname}/{name}"] = np.ascontiguousarray(pv)
                case["stride"] = 1
            cases.append(case)
    save_file(tensors, os.path.join(OUT, "expected.safetensors"))
    manifest = {
        "generator": "tools/reference/make_image_fixtures.py",
        "images": images,
        "processors": {p: f"{p}.preprocessor_config.json" for p in PROCESSORS},
        "cases": cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total / 1024:.0f} KiB, {len(cases)} cases")


if __name__ == "__main__":
    main()
