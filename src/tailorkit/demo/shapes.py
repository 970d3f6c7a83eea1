"""A synthetic visual task: coloured shapes on a plain background, two question types."""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 30)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {"colour": "What colour is the shape?", "shape": "What shape is this?"}
SIZE = 84  # 3x3 merged Qwen-VL patches of 28 px: 9 image tokens


def draw(colour: str, shape: str, rng: random.Random):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), (245, 245, 245))
    d = ImageDraw.Draw(image)
    r = rng.randint(28, 36)  # large and near the centre: corner patches tell the shapes apart
    cx, cy = SIZE // 2 + rng.randint(-4, 4), SIZE // 2 + rng.randint(-4, 4)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def write_split(folder: Path, name: str, n: int, seed: int, *, choices: bool = False) -> Path:
    """n rows of {"messages", "images"} with images saved next to the jsonl (relative paths); with ``choices``
    each row also lists the valid answers of its question (for multiple choice by likelihood)."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            kind = rng.choice(list(QUESTIONS))
            image_path = f"images/{name}_{i:05d}.png"
            draw(colour, shape, rng).save(folder / image_path)
            answer = colour if kind == "colour" else shape
            row = {"messages": [{"role": "user", "content": "<image>" + QUESTIONS[kind]},
                                {"role": "assistant", "content": answer}],
                   "images": [image_path]}
            if choices:
                row["choices"] = list(COLOURS) if kind == "colour" else list(SHAPES)
            f.write(json.dumps(row) + "\n")
    return path
