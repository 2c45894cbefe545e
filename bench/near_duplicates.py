"""Measure the near-duplicate rule on planted copies: `python bench/near_duplicates.py --data DIR
--weights imagenet|FILE [--image-size 224] [--copies 24]`.

Copies the dataset into a temporary folder, plants near-copies of its first images beside them (a
JPEG re-encode at quality 70, a 0.9x resize, a 2 px shift, 10% more brightness, in turn), runs the
data check and prints how many planted pairs it found and how many other images it flagged, with the
similarity threshold the rule gave. The rule (`health_features.NEAR_DUPLICATE_RATIO`) could not be
measured where it was written, for want of pretrained weights: this is how to measure it where
there are some.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageEnhance

from tuner.data.discover import discover_dataset
from tuner.train.doctor import check_dataset

CHANGES = ("jpeg", "resize", "shift", "bright")


def near_copy(source: Path, change: str) -> Path:
    img = Image.open(source).convert("RGB")
    target = source.with_name(f"{source.stem}_near_{change}{'.jpg' if change == 'jpeg' else '.png'}")
    if change == "resize":
        img = img.resize((max(1, int(img.width * 0.9)), max(1, int(img.height * 0.9))), Image.BICUBIC)
    elif change == "shift":
        img = img.transform(img.size, Image.AFFINE, (1, 0, 2, 0, 1, 2))
    elif change == "bright":
        img = ImageEnhance.Brightness(img).enhance(1.1)
    img.save(target, **({"quality": 70} if change == "jpeg" else {}))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--copies", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(Path(args.data).expanduser(), data)
        spec = discover_dataset(data)
        planted = {}
        for i, sample in enumerate(sorted(spec.train, key=lambda s: s.path)[:args.copies]):
            copy = near_copy(Path(sample.path), CHANGES[i % len(CHANGES)])
            planted[copy.relative_to(spec.root).as_posix()] = Path(sample.path).relative_to(spec.root).as_posix()
        report = check_dataset(str(data), str(Path(tmp) / "work"), args.image_size, args.weights,
                               cache_dir=str(Path(tmp) / "features"))
    if report.skipped:
        print("\n".join(f"skipped {line}" for line in report.skipped))
    near = [f for f in report.findings if f.kind.startswith("near_")]
    links = {(a, b.split(" (")[0]) for f in near for a, b in f.related.items()}
    found = sum((copy, orig) in links or (orig, copy) in links for copy, orig in planted.items())
    flagged = {p for f in near for p in f.paths}
    extra = flagged - set(planted) - set(planted.values())
    threshold = next((f.figures["similarity_threshold"] for f in near), None)
    print(f"planted pairs found: {found} of {len(planted)}; other images flagged: {len(extra)}; "
          f"similarity threshold: {threshold if threshold is None else round(threshold, 4)}")


if __name__ == "__main__":
    main()
