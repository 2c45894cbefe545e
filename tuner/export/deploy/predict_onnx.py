#!/usr/bin/env python3
"""Classify images with a model exported by tuner: needs only onnxruntime, numpy and pillow.

    pip install onnxruntime numpy pillow
    python predict_onnx.py model.onnx photo.jpg [more.jpg ...] [--top-k 5] [--json]

Class names and preprocessing (image size, resize, mean/std) are read from the ONNX file's metadata,
so this script and the model file are all a deployment needs. Preprocessing matches tuner's:
EXIF orientation applied, RGB, shorter side resized to `resize_size`, centre crop to `image_size`,
scaled to 0..1 and normalised.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load_model(path: str):
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a missing or foreign file
        sys.exit(f"error: {path} is not an ONNX model onnxruntime can open ({str(exc).splitlines()[0][:120]}): "
                 "give the model.onnx that `python -m tuner export` wrote, then the images.")
    meta = session.get_modelmeta().custom_metadata_map
    try:
        info = {"classes": json.loads(meta["classes"]), "image_size": int(meta["image_size"]),
                "resize_size": int(meta["resize_size"]), "mean": json.loads(meta["mean"]),
                "std": json.loads(meta["std"])}
    except KeyError as missing:
        sys.exit(f"{path} has no {missing} in its metadata: export it with `python -m tuner export`.")
    return session, info


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB the way tuner trains on it (tuner.data.to_rgb, copied: this script must not need tuner):
    transparency over white, 16-bit greyscale scaled rather than clipped, 32-bit integers by their
    maximum, floats stretched over their own range. A test checks that both give the same pixels."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            scale = 255.0 / 65535
        else:
            hi = arr.max() if arr.size else 0
            scale = 1.0 if hi <= 255 else 255.0 / hi
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def preprocess(path: str, info: dict) -> np.ndarray:
    img = to_rgb(ImageOps.exif_transpose(Image.open(path)))
    short, size = info["resize_size"], info["image_size"]
    w, h = img.size
    # Shorter side to `short`, the longer one truncated: the same sizes torchvision's Resize picks.
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(info["mean"], dtype=np.float32)) / np.asarray(info["std"], dtype=np.float32)
    return x.transpose(2, 0, 1)[None]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with a tuner ONNX model.")
    parser.add_argument("model", help="model.onnx (or model.int8.onnx) exported by tuner")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--top-k", type=int, default=5, help="as `python -m tuner predict`")
    parser.add_argument("--json", action="store_true", help="one JSON line per image, as `python -m tuner predict --json`")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k={args.top_k}: ask for at least 1.")
    session, info = load_model(args.model)
    input_name = session.get_inputs()[0].name
    skipped = 0
    for path in args.images:
        try:  # one unreadable file costs its own answer only, as in `python -m tuner predict`
            x = preprocess(path, info)
        except (OSError, ValueError, SyntaxError) as exc:  # missing, a folder, not an image, damaged
            print(f"skipped: cannot read {path} as an image ({str(exc).splitlines()[0][:120]})", file=sys.stderr)
            skipped += 1
            continue
        probs = softmax(session.run(None, {input_name: x})[0])[0]
        order = np.argsort(-probs)[: min(args.top_k, len(probs))]
        top = [{"label": info["classes"][i], "prob": float(probs[i])} for i in order]
        if args.json:
            print(json.dumps({"image": path, "top_k": top}))
        else:
            print(f"{path}: " + ", ".join(f"{t['label']} {t['prob']:.1%}" for t in top))
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
