"""Dataset discovery, image reading in every mode, safe zip extraction, sampler and augmentation seeding."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import decompression_bomb, make_image_folder
from PIL import Image

from tuner.config import AugmentConfig
from tuner.data.archives import ZipLimits, check_zip_member, safe_extract_zip
from tuner.data.discover import discover_dataset, prepare_dataset
from tuner.data.images import (
    ImageCache,
    ImageDataset,
    ImageTooLarge,
    check_image,
    load_rgb,
)
from tuner.data.sampling import EpochBatchSampler, class_weights
from tuner.data.transforms import eval_transform, train_transform
from tuner.errors import TunerError

# ---- layouts -------------------------------------------------------------------------------------

def test_class_folders_are_split_stratified_and_seeded(tmp_path):
    root = make_image_folder(tmp_path / "d", {"b": 10, "a": 5, "c": 7})
    spec = discover_dataset(root, val_ratio=0.2, seed=3)
    assert spec.classes == ["a", "b", "c"]  # sorted, whatever the folder order
    counts = {row["class"]: (row["train"], row["val"]) for row in spec.counts()}
    assert counts == {"a": (4, 1), "b": (8, 2), "c": (6, 1)}
    again = discover_dataset(root, val_ratio=0.2, seed=3)
    assert [s.path for s in again.val] == [s.path for s in spec.val]
    other = discover_dataset(root, val_ratio=0.2, seed=4)
    assert [s.path for s in other.val] != [s.path for s in spec.val]
    assert not set(s.path for s in spec.train) & set(s.path for s in spec.val)


def test_train_val_layout_is_used_as_given(tmp_path):
    make_image_folder(tmp_path / "d" / "train", {"cat": 4, "dog": 4})
    make_image_folder(tmp_path / "d" / "validation", {"cat": 2, "dog": 1}, seed=1)
    spec = discover_dataset(tmp_path / "d")
    assert spec.classes == ["cat", "dog"]
    assert (len(spec.train), len(spec.val)) == (8, 3)
    assert all("/validation/" in s.path for s in spec.val)


def test_val_class_missing_from_train_is_an_error(tmp_path):
    make_image_folder(tmp_path / "d" / "train", {"cat": 3, "dog": 3})
    make_image_folder(tmp_path / "d" / "val", {"cat": 1, "bird": 1})
    with pytest.raises(TunerError, match="bird"):
        discover_dataset(tmp_path / "d")


def test_single_wrapper_folder_is_looked_through(tmp_path):
    make_image_folder(tmp_path / "d" / "my-dataset", {"x": 3, "y": 3})
    spec = discover_dataset(tmp_path / "d")
    assert spec.classes == ["x", "y"]


@pytest.mark.parametrize("layout, message", [
    ({}, "No readable images"),
    ({"only": 5}, "Only one class"),
    ({"a": 5, "b": 1}, "Too few images in: b"),
])
def test_unusable_datasets_get_a_clear_error(tmp_path, layout, message):
    root = tmp_path / "d"
    root.mkdir()
    make_image_folder(root, layout)
    if not layout:
        (root / "empty_class").mkdir()
    with pytest.raises(TunerError, match=message):
        discover_dataset(root)


def test_images_without_class_folders_are_refused_with_the_fix(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    with pytest.raises(TunerError, match="sub-folder"):
        discover_dataset(root)


def test_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(TunerError, match="one sub-folder per class"):
        discover_dataset(tmp_path / "nope")


def test_junk_broken_and_hidden_files_are_skipped_and_counted(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "a" / "._a_0.png").write_bytes(b"resource fork")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "junk.png").write_bytes(b"x")
    (root / "a" / "notes.txt").write_text("hello")
    (root / "b" / "fake.jpg").write_bytes(b"this is not a jpeg")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "JPEG")
    (root / "b" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    spec = discover_dataset(root)
    assert len(spec.train) + len(spec.val) == 8
    counts = spec.skipped.counts
    assert counts["hidden or system files"] == 2
    assert counts["hidden or system folders"] == 1  # __MACOSX/ itself, not the file inside it
    assert counts["other file types"] == 1
    assert counts["not image data"] == 1
    assert counts["corrupt or truncated"] == 1
    assert "Skipped 5 files and 1 folder: " in spec.skipped.summary()
    assert "__MACOSX/" in spec.skipped.summary()
    assert any("Skipped" in w for w in spec.warnings)


def _train_val(root: Path) -> None:
    make_image_folder(root / "train", {"a": 3, "b": 3})
    make_image_folder(root / "val", {"a": 1, "b": 1}, seed=1)


@pytest.mark.parametrize("build, hidden, images", [
    # beside the class folders, inside one, and deeper in one
    (lambda r: make_image_folder(r, {"a": 3, "b": 3}), [".git", "a/.thumbnails", "a/deep/@eaDir"], 6),
    # beside train/ and val/, inside them, inside a class
    (_train_val, [".git", "train/__MACOSX", "val/.cache", "train/b/.thumbnails"], 8),
    # a macOS zip: __MACOSX/ beside the one wrapper folder that is looked through, and inside it
    (lambda r: make_image_folder(r / "pets", {"a": 3, "b": 3}), ["__MACOSX", "pets/.idea"], 6),
], ids=["class-folders", "train-val", "wrapper-folder"])
def test_hidden_folders_are_counted_once_each_as_folders(tmp_path, build, hidden, images):
    root = tmp_path / "d"
    build(root)
    for folder in hidden:
        (root / folder).mkdir(parents=True)
        for i in range(3):  # contents are not walked: each folder counts once, whatever it holds
            Image.new("RGB", (8, 8)).save(root / folder / f"{i}.png")
    spec = discover_dataset(root)
    assert spec.classes == ["a", "b"]
    assert spec.skipped.counts == {"hidden or system folders": len(hidden)}
    assert sorted(spec.skipped.examples["hidden or system folders"]) == sorted(f + "/" for f in hidden)
    assert f"Skipped {len(hidden)} folders: " in spec.skipped.summary()
    used = [Path(s.path).relative_to(root).as_posix() for s in spec.train + spec.val]
    assert len(used) == images and not any(u.startswith(f + "/") for u in used for f in hidden)


def test_linked_folder_in_a_class_is_counted_as_a_link(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 3, "b": 3})
    elsewhere = make_image_folder(tmp_path / "elsewhere", {"more": 2}) / "more"
    (root / "a" / "more").symlink_to(elsewhere, target_is_directory=True)
    spec = discover_dataset(root)
    assert len(spec.train) + len(spec.val) == 6  # the linked images are not used ...
    assert spec.skipped.counts == {"links": 1}  # ... and the user is told why
    assert spec.skipped.examples["links"] == ["a/more/"]
    assert spec.skipped.summary().startswith("Skipped 1 folder: links: 1 (e.g. a/more/)")


def test_imbalance_and_small_classes_are_warned_about(tmp_path):
    root = make_image_folder(tmp_path / "d", {"big": 40, "small": 5})
    warnings = " ".join(discover_dataset(root).warnings)
    assert "imbalanced" in warnings and "sampler" in warnings
    assert "Few training images in small" in warnings


# ---- every image ends up RGB -----------------------------------------------------------------------

def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_odd_image_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (10, 6), (255, 0, 0, 0))  # fully transparent red -> white
    p_img = Image.new("P", (10, 6))
    p_img.putpalette([0, 0, 255] * 256)
    cmyk = Image.new("CMYK", (10, 6), (0, 255, 255, 0))  # red in CMYK
    gray16 = Image.fromarray(np.full((6, 10), 40000, dtype=np.uint16))
    cases = {
        "rgba.png": (_save(rgba, tmp_path / "rgba.png"), (255, 255, 255)),
        "la.png": (_save(Image.new("LA", (10, 6), (0, 255)), tmp_path / "la.png"), (0, 0, 0)),
        "l.png": (_save(Image.new("L", (10, 6), 128), tmp_path / "l.png"), (128, 128, 128)),
        "p.png": (_save(p_img, tmp_path / "p.png"), (0, 0, 255)),
        "cmyk.jpg": (_save(cmyk, tmp_path / "cmyk.jpg", quality=100), None),
        "i16.png": (_save(gray16, tmp_path / "i16.png"), (156, 156, 156)),  # 40000/65535 of white
    }
    for name, (path, expected) in cases.items():
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == (10, 6), name
        if expected:
            assert img.getpixel((5, 3)) == expected, name
    red = load_rgb(cases["cmyk.jpg"][0]).getpixel((5, 3))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    shown = load_rgb(path)
    assert shown.size == (10, 20)
    assert shown.getpixel((5, 2))[0] > 200  # the white half is now on top


# ---- zip archives ----------------------------------------------------------------------------------

def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _zip(path: Path, entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_zip_dataset_is_extracted_and_discovered(tmp_path):
    png = _png_bytes()
    entries = {f"pets/{c}/{i}.png": png for c in ("cat", "dog") for i in range(3)}
    entries["__MACOSX/pets/._x.png"] = b"junk"
    archive = _zip(tmp_path / "pets.zip", entries)
    spec = prepare_dataset(archive, tmp_path / "work")
    assert spec.classes == ["cat", "dog"]
    assert spec.skipped.counts == {"hidden or system folders": 1}  # __MACOSX/ beside the pets/ wrapper
    assert spec.skipped.examples["hidden or system folders"] == ["__MACOSX/"]
    assert Path(spec.root).is_relative_to(tmp_path / "work")
    # A second call reuses the extracted copy instead of unpacking again.
    assert prepare_dataset(archive, tmp_path / "work").root == spec.root


@pytest.mark.parametrize("bad_entry", ["../evil.png", "a/../../evil.png", "/abs/evil.png", "C:/evil.png",
                                       "a\\..\\evil.png"])
def test_zip_with_escaping_paths_is_refused_and_writes_nothing(tmp_path, bad_entry):
    archive = _zip(tmp_path / "bad.zip", {"ok/a/1.png": _png_bytes(), bad_entry: b"owned"})
    work = tmp_path / "work"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(TunerError, match="refused"):
        prepare_dataset(archive, work)
    assert set(tmp_path.rglob("*")) - before <= {work, work / "datasets"}  # at most the empty job folders
    assert not (tmp_path / "evil.png").exists() and not Path("/abs/evil.png").exists()


def test_zip_with_symlink_is_refused(tmp_path):
    archive = _zip(tmp_path / "link.zip", {"a/1.png": _png_bytes()}, symlinks=("a/link.png",))
    with pytest.raises(TunerError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_caps_on_ratio_entries_and_size(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", {"a/zeros.png": b"\0" * 5_000_000})
    with pytest.raises(TunerError, match="expands"):  # a floor under the entry's size, to keep the test small
        safe_extract_zip(bomb, tmp_path / "o1", ZipLimits(ratio_floor_bytes=1 << 20))
    many = _zip(tmp_path / "many.zip", {f"a/{i}.png": b"x" for i in range(20)})
    with pytest.raises(TunerError, match="entries"):
        safe_extract_zip(many, tmp_path / "o2", ZipLimits(max_entries=10))
    big = _zip(tmp_path / "big.zip", {"a/1.png": os.urandom(50_000)})
    with pytest.raises(TunerError, match="MiB"):
        safe_extract_zip(big, tmp_path / "o3", ZipLimits(max_total_bytes=10_000))
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))
    assert not list(tmp_path.glob(".extract-*"))


def test_zip_of_flat_uncompressed_images_loads_but_a_big_bomb_entry_is_refused(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (255, 255, 255)).save(buf, "BMP")  # a white page, uncompressed
    flat = buf.getvalue()
    entries = {f"scans/{c}/{i}.bmp": flat for c in ("blank", "page") for i in range(2)}
    archive = _zip(tmp_path / "scans.zip", entries)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("scans/blank/0.bmp")
    assert info.file_size / info.compress_size > ZipLimits().max_ratio  # the case the ratio cap used to refuse
    spec = prepare_dataset(archive, tmp_path / "work")
    assert len(spec.train) + len(spec.val) == 4 and not spec.skipped.total
    # The default limits still refuse an entry of GBs that deflates like zeros, from its header alone.
    bomb = zipfile.ZipInfo("a/zeros.bmp")
    bomb.file_size, bomb.compress_size = 4 << 30, 4 << 20
    assert "expands 1024x" in check_zip_member(bomb, ZipLimits())


def test_not_a_zip_is_a_clear_error(tmp_path):
    fake = tmp_path / "data.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(TunerError, match="not a readable .zip"):
        prepare_dataset(fake, tmp_path / "work")


# ---- sampler and seeded augmentation ---------------------------------------------------------------

def test_sampler_order_is_a_function_of_seed_and_epoch():
    labels = [0, 1] * 10
    a, b = EpochBatchSampler(labels, 4, seed=1), EpochBatchSampler(labels, 4, seed=1)
    assert a.batches(3) == b.batches(3)
    assert a.batches(3) != a.batches(4)
    assert sorted(i for batch in a.batches(0) for i in batch) == list(range(20))


def test_two_ranks_with_half_batches_see_the_global_batch():
    labels = list(range(5)) * 5  # 25 samples: padding needed for 2 ranks
    whole = EpochBatchSampler(labels, 6, seed=0, drop_single=False)
    ranks = [EpochBatchSampler(labels, 3, seed=0, rank=r, world_size=2, drop_single=False) for r in (0, 1)]
    for global_batch, b0, b1 in zip(whole.batches(2), ranks[0].batches(2), ranks[1].batches(2)):
        assert sorted(b0 + b1) == sorted(global_batch) or len(global_batch) < 6  # the last one is padded


@pytest.mark.parametrize("balanced", [False, True])
def test_two_ranks_draw_exactly_the_global_batches_shuffled_or_class_balanced(balanced):
    # 24 samples, global batch 6: no padding, so every global batch must be the union of the ranks'.
    labels = [0] * 18 + [1] * 4 + [2] * 2
    whole = EpochBatchSampler(labels, 6, seed=3, balanced=balanced)
    ranks = [EpochBatchSampler(labels, 3, seed=3, balanced=balanced, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        pairs = list(zip(ranks[0].batches(epoch), ranks[1].batches(epoch)))
        assert len(pairs) == len(whole.batches(epoch)) == 4
        assert [sorted(b0 + b1) for b0, b1 in pairs] == [sorted(b) for b in whole.batches(epoch)]


def test_sampler_resumes_mid_epoch_and_drops_a_lone_last_image():
    sampler = EpochBatchSampler([0, 1] * 5 + [0], 5, seed=0)  # 11 samples: 5, 5, 1 -> the 1 is dropped
    assert [len(b) for b in sampler.batches(0)] == [5, 5]
    sampler.set_epoch(0, start_batch=1)
    assert [[i for i, _ in keys] for keys in sampler] == sampler.batches(0)[1:]
    assert all(epoch == 0 for keys in sampler for _, epoch in keys)


def test_balanced_sampler_evens_out_classes():
    labels = [0] * 90 + [1] * 10
    drawn = [labels[i] for b in EpochBatchSampler(labels, 10, seed=0, balanced=True).batches(0) for i in b]
    assert 0.35 < np.mean(drawn) < 0.65
    weights = class_weights(labels, 2)
    assert weights[1] == pytest.approx(9 * weights[0])


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 3, "b": 3})
    spec = discover_dataset(root)
    aug = AugmentConfig.from_preset("strong")
    ds = ImageDataset(spec.train, train_transform(aug, 32), ImageCache(37), seed=5)
    torch.manual_seed(0)
    first = ds[(1, 2)][0]
    torch.manual_seed(99)  # the global RNG does not matter ...
    assert torch.equal(ds[(1, 2)][0], first)
    assert not torch.equal(ds[(1, 3)][0], first)  # ... but the epoch does
    state = torch.get_rng_state()
    ds[(0, 0)]
    assert torch.equal(torch.get_rng_state(), state)  # and a sample leaves the global RNG alone


def test_eval_transform_matches_torchvision_weights_preset(tmp_path):
    from torchvision.models import ResNet50_Weights

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    ours = eval_transform(224)(img)
    theirs = ResNet50_Weights.IMAGENET1K_V1.transforms()(img)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert torch.allclose(ours, theirs, atol=1e-5)


# ---- fixes found in review -------------------------------------------------------------------------

def test_a_class_called_train_is_a_class(tmp_path):
    root = make_image_folder(tmp_path / "d", {"bus": 3, "car": 3, "train": 3})
    spec = discover_dataset(root)
    assert spec.classes == ["bus", "car", "train"] and spec.layout.startswith("class folders")


def test_val_folder_without_classes_is_a_clear_error(tmp_path):
    make_image_folder(tmp_path / "d" / "train", {"a": 3, "b": 3})
    (tmp_path / "d" / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "val" / "loose.png")
    with pytest.raises(TunerError, match="val/ has no class folders"):
        discover_dataset(tmp_path / "d")


def test_sixteen_bit_mapping_does_not_depend_on_content(tmp_path):
    for values in ([200, 200], [200, 256]):
        arr = np.array([values * 5] * 4, dtype=np.uint16)
        path = _save(Image.fromarray(arr), tmp_path / f"g{values[1]}.png")
        assert load_rgb(path).getpixel((0, 0)) == (1, 1, 1)  # 200/65535 of white, whatever else is there


def test_images_over_the_pixel_limit_are_skipped_before_decoding(tmp_path, monkeypatch):
    import tuner.data.images as data

    root = make_image_folder(tmp_path / "d", {"a": 3, "b": 3})
    Image.new("RGB", (60, 60)).save(root / "a" / "huge.png")
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 48 * 40)  # the generated images are at most 48x40
    spec = discover_dataset(root)
    assert spec.skipped.counts == {"too large": 1}


def test_a_decompression_bomb_is_too_large_not_a_crash(tmp_path):
    bomb = decompression_bomb(tmp_path / "bomb.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)  # what PIL does with it: an error that is neither OSError nor ValueError
    with pytest.raises(ImageTooLarge, match="MP limit"):
        load_rgb(bomb)
    assert check_image(bomb) == "too large"


def test_zip_entry_that_is_both_file_and_folder_is_a_clear_error(tmp_path):
    archive = _zip(tmp_path / "clash.zip", {"a/x": _png_bytes(), "a/x/1.png": _png_bytes()})
    with pytest.raises(TunerError, match="could not be unpacked: entry 'a/x/1.png'"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".extract-*"))


def test_seeded_augmentation_is_safe_across_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    root = make_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    spec = discover_dataset(root)
    train_ds = ImageDataset(spec.train, train_transform(AugmentConfig.from_preset("strong"), 32), ImageCache(37), 1)
    eval_ds = ImageDataset(spec.val, eval_transform(32), ImageCache(37))
    keys = [(i % len(train_ds), e) for e in range(6) for i in range(len(train_ds))]
    alone = [train_ds[k][0] for k in keys]

    def busy_evaluating():
        for _ in range(30):
            for i in range(len(eval_ds)):
                eval_ds[i]

    with ThreadPoolExecutor(2) as pool:  # another session evaluating while this one augments
        other = pool.submit(busy_evaluating)
        together = [train_ds[k][0] for k in keys]
        other.result()
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
