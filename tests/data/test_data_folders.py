"""Image-folder dataset: labels, subsets, corrupt files, flips, workers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from facepriv.data import (
    DataError,
    ImageDecodeError,
    ImageFolderDataset,
    encode_image,
    partition_identities,
    split_identities,
    write_image,
)


def _img(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "faces"
    for k, (name, n) in enumerate((("carol", 3), ("alice", 2), ("bob", 4))):
        for j in range(n):
            write_image(root / name / f"{j:02d}.png", _img(10 * k + j))
    (root / "bob" / "notes.txt").write_text("ignored: not an image")
    (root / ".hidden").mkdir()
    return root


def _corrupt(root):
    (root / "bob" / "90_garbage.jpg").write_bytes(b"this is not an image at all")
    good = encode_image(_img(99), ".jpg")
    (root / "bob" / "91_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "bob" / "92_empty.png").write_bytes(b"")


def test_labels_from_sorted_folder_names(tree):
    ds = ImageFolderDataset(tree)
    assert ds.class_names == ["alice", "bob", "carol"] and ds.num_classes == 3
    assert len(ds) == 9 and ds.targets == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    x, y = ds[2]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy() * 255, _img(20), atol=1e-3)  # bob/00.png
    xu, _ = ImageFolderDataset(tree, dtype="uint8")[2]
    assert xu.dtype == torch.uint8 and torch.equal(xu.float() / 255, x)
    assert ImageFolderDataset(tree, image_size=8)[0][0].shape == (3, 8, 8)
    assert ds.images_per_class() == {"alice": 2, "bob": 4, "carol": 3}
    assert len(ImageFolderDataset(tree, min_images=3)) == 7


def test_identity_subsets_and_partitions(tree):
    sub = ImageFolderDataset(tree, identities=["carol", "alice"])
    assert sub.class_names == ["alice", "carol"] and sub.targets == [0, 0, 1, 1, 1]
    glob = ImageFolderDataset(tree, identities=["carol"], label_map={"alice": 0, "bob": 1, "carol": 2})
    assert glob.targets == [2, 2, 2] and glob.num_classes == 3
    with pytest.raises(DataError, match="no folder"):
        ImageFolderDataset(tree, identities=["zed"])
    full = ImageFolderDataset(tree)
    kept = full.subset(["bob"], keep_labels=True)
    assert kept.targets == [1] * 4 and len(full) == 9
    assert full.subset(["bob"]).targets == [0] * 4

    names = [f"id{i:03d}" for i in range(23)]
    parts = partition_identities(names, 4, seed=3)
    assert sorted(sum(parts, [])) == names and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert partition_identities(names, 4, seed=3) == parts != partition_identities(names, 4, seed=4)
    train, test = split_identities(names, 0.3, seed=0)
    assert not set(train) & set(test) and len(test) == 7 and sorted(train + test) == names


def test_truncation_detected_even_when_opencv_would_decode(tmp_path):
    from facepriv.data import decode_image

    noisy = _img(5, 64)
    jpg = encode_image(noisy, ".jpg")
    cut = jpg[: int(len(jpg) * 0.8)]  # cut inside the entropy-coded scan
    assert cut.rfind(b"\xff\xda") > 0  # the scan header survived, so OpenCV pads with grey
    with pytest.raises(ImageDecodeError, match="end-of-image"):
        decode_image(cut, "cut.jpg")
    png = encode_image(noisy, ".png")
    with pytest.raises(ImageDecodeError, match="PNG"):
        decode_image(png[: len(png) // 2], "cut.png")
    np.testing.assert_array_equal(decode_image(png), noisy)
    with pytest.raises(ImageDecodeError, match="x.bmp"):
        decode_image(b"BM" + b"\0" * 10, "x.bmp")


def test_scan_reports_and_excludes_bad_files(tree):
    _corrupt(tree)
    ds = ImageFolderDataset(tree)
    assert len(ds) == 12
    with pytest.warns(RuntimeWarning, match="3 of 12 images are unreadable"):
        report = ds.scan()
    assert report.total == 12 and report.ok == 9 and len(ds) == 9
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in report.bad}
    assert set(reasons) == {"90_garbage.jpg", "91_truncated.jpg", "92_empty.png"}
    assert "truncated JPEG" in reasons["91_truncated.jpg"]
    assert "empty" in reasons["92_empty.png"]
    assert report.sizes == {"16x16": 9}
    json.dumps(report.to_dict())


def test_runtime_corrupt_file_substituted_not_crashing(tree):
    _corrupt(tree)
    ds = ImageFolderDataset(tree)
    bad_index = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("90_garbage.jpg"))
    with pytest.warns(RuntimeWarning) as caught:
        x, y = ds[bad_index]
    assert len(caught) == 3 and "90_garbage.jpg" in str(caught[0].message)
    # the two following files are bad too; the first readable one after them is carol/00.png
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy() * 255, _img(0), atol=1e-3)
    assert y == 2
    assert ds.failures.count == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no repeated warning for a known-bad file
        again, _ = ds[bad_index]
    assert torch.equal(again, x)  # deterministic substitute
    with pytest.raises(ImageDecodeError, match="90_garbage.jpg"):
        ImageFolderDataset(tree, on_error="raise")[bad_index]


def test_failures_visible_across_workers(tree, tmp_path):
    _corrupt(tree)
    log = tmp_path / "failures.jsonl"
    ds = ImageFolderDataset(tree, failure_log=log)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = sum(len(y) for _, y in loader)
    assert n == len(ds)
    # every sample was read once; bob's 3 bad files each failed once as primary sample
    assert ds.failures.count >= 3
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert {ln["source"].rsplit("/", 1)[-1] for ln in lines} == {"90_garbage.jpg", "91_truncated.jpg", "92_empty.png"}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="no identity folder"):
        ImageFolderDataset(tmp_path / "empty")


def test_scan_true_reports_what_it_drops(tree, tmp_path):
    """`data.scan: true` in a training config only constructs the dataset: the drop must be visible."""
    _corrupt(tree)
    log = tmp_path / "failures.jsonl"
    with pytest.warns(RuntimeWarning, match=r"3 of 12 images are unreadable and were dropped") as caught:
        ds = ImageFolderDataset(tree, scan=True, failure_log=log)
    assert "90_garbage.jpg" in str(caught[0].message)
    assert len(ds) == 9 and ds.failures.count == 0  # dropped up front, not run-time substitutions
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert {ln["source"].rsplit("/", 1)[-1] for ln in lines} == {"90_garbage.jpg", "91_truncated.jpg", "92_empty.png"}
    assert {ln["action"] for ln in lines} == {"dropped by scan"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder scans silently
        ImageFolderDataset(tree, identities=["alice", "carol"], scan=True)


def test_stretched_images_are_warned_about_and_counted(tree):
    write_image(tree / "alice" / "09_wide.png", _img(7)[:12])  # 12x16: not the 16x16 of the rest
    ds = ImageFolderDataset(tree, image_size=16)
    wide = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("09_wide.png"))
    with pytest.warns(RuntimeWarning, match=r"09_wide.png: 12x16 image stretched to 16x16"):
        x, _ = ds[wide]
    assert x.shape == (3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counted, not warned about again
        ds[wide]
    assert ds.resizes.summary() == {"resized": 2, "stretched": 2}
    with pytest.warns(RuntimeWarning, match="1 images will be stretched to 16x16"):
        report = ImageFolderDataset(tree, image_size=16, scan=True).scan_report
    assert report.stretched == 1 and report.sizes == {"16x16": 9, "12x16": 1}
    # a uniform rescale keeps the face's proportions: counted as resized, no warning
    small = ImageFolderDataset(tree, identities=["bob"], image_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small[0]
    assert small.resizes.summary() == {"resized": 1, "stretched": 0}
