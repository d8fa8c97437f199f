"""folder:PATH datasets: layout, labels, conversion, and bad images."""

import numpy as np
import pytest
from PIL import Image

from datafiles import write_image
from vaelab.data import check_dataset, load_dataset, splits
from vaelab.data import folder as folder_mod
from vaelab.errors import VaelabError


def _rgb(seed, h=8, w=6):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_class_subfolders_and_loose_files(tmp_path):
    root = tmp_path / "imgs"
    arrays = {}
    for name, seed in [("dog/b.png", 1), ("dog/a.png", 2), ("cat/x/deep.png", 3), ("loose.png", 4)]:
        arrays[name] = _rgb(seed)
        write_image(root / name, arrays[name])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored, hidden")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0")
    ds = load_dataset(f"folder:{root}")
    assert ds.name == f"folder:{root.resolve()}" and ds.split == "train"
    assert ds.classes == ["cat", "dog"]
    # loose files first (label -1), then classes in sorted order, files sorted within
    order = ["loose.png", "cat/x/deep.png", "dog/a.png", "dog/b.png"]
    assert ds.labels.tolist() == [-1, 0, 1, 1]
    assert ds.images.shape == (4, 3, 8, 6) and ds.images.flags.c_contiguous
    for i, name in enumerate(order):
        np.testing.assert_array_equal(ds.images[i], arrays[name].transpose(2, 0, 1))
    assert ds.images[3, 2, 7, 1] == arrays["dog/b.png"][7, 1, 2]  # (c, h, w) <- (h, w, c)


def test_grayscale_and_flat_folder(tmp_path):
    img = np.arange(20 * 12, dtype=np.uint8).reshape(20, 12)
    write_image(tmp_path / "a.png", img)
    write_image(tmp_path / "b.bmp", 255 - img)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes is None and ds.labels.tolist() == [-1, -1]
    assert ds.images.shape == (2, 1, 20, 12)
    np.testing.assert_array_equal(ds.images[0, 0], img)
    assert ds.images[1, 0, 19, 0] == 255 - img[19, 0]


def test_jpeg_and_other_modes(tmp_path):
    write_image(tmp_path / "a.jpg", np.full((16, 16, 3), 120, np.uint8), quality=95)
    Image.fromarray(_rgb(5, 16, 16)).convert("P").save(tmp_path / "b.png")
    Image.fromarray(np.dstack([_rgb(6, 16, 16), np.full((16, 16), 9, np.uint8)])).save(tmp_path / "c.png")
    with pytest.raises(VaelabError, match="alpha channel"):  # dropping alpha is a conversion: asked for, or refused
        load_dataset(f"folder:{tmp_path}")
    ds = load_dataset(f"folder:{tmp_path}", channels=3)
    assert ds.images.shape == (3, 3, 16, 16)
    assert abs(int(ds.images[0].mean()) - 120) <= 2


def test_sixteen_bit_grayscale_keeps_high_byte(tmp_path):
    img = np.full((4, 4), 0x8123, np.uint16)
    Image.fromarray(img).save(tmp_path / "deep.png")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.images.shape == (1, 1, 4, 4) and int(ds.images.max()) == 0x81


def test_train_test_subfolders(tmp_path):
    write_image(tmp_path / "train" / "b" / "1.png", _rgb(1))
    write_image(tmp_path / "train" / "c" / "1.png", _rgb(2))
    write_image(tmp_path / "test" / "a" / "1.png", _rgb(3))
    write_image(tmp_path / "test" / "c" / "1.png", _rgb(4))
    assert splits(f"folder:{tmp_path}") == ["train", "test"]
    train = load_dataset(f"folder:{tmp_path}", "train")
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert train.classes == test.classes == ["a", "b", "c"]  # same label numbers in both splits
    assert train.labels.tolist() == [1, 2] and test.labels.tolist() == [0, 2]
    np.testing.assert_array_equal(test.images[0], _rgb(3).transpose(2, 0, 1))


def test_no_test_split(tmp_path):
    write_image(tmp_path / "a" / "1.png", _rgb(1))
    assert splits(f"folder:{tmp_path}") == ["train"]
    with pytest.raises(VaelabError, match="no test split.*validation fraction"):
        load_dataset(f"folder:{tmp_path}", "test")


def test_only_train_subfolder(tmp_path):
    write_image(tmp_path / "train" / "a" / "1.png", _rgb(1))
    assert load_dataset(f"folder:{tmp_path}").classes == ["a"]
    with pytest.raises(VaelabError, match="no test/ subfolder.*validation fraction"):
        load_dataset(f"folder:{tmp_path}", "test")


def test_mixed_sizes_name_first_mismatch(tmp_path):
    write_image(tmp_path / "a.png", _rgb(1, 8, 8))
    write_image(tmp_path / "b.png", _rgb(2, 8, 8))
    write_image(tmp_path / "c.png", _rgb(3, 9, 8))
    write_image(tmp_path / "d.png", _rgb(4, 7, 8))
    with pytest.raises(VaelabError) as info:
        load_dataset(f"folder:{tmp_path}")
    msg = str(info.value)
    assert "c.png" in msg and "d.png" not in msg
    assert "data.image_size" in msg and "data.channels" in msg


def test_mixed_modes(tmp_path):
    write_image(tmp_path / "a.png", _rgb(1, 8, 8))
    write_image(tmp_path / "b.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(VaelabError, match=r"b\.png is 8x8 grayscale .* data\.channels"):
        load_dataset(f"folder:{tmp_path}")


def test_first_mismatch_across_thread_batches(tmp_path):
    """Many files (several worker batches): the error names the first bad file in order."""
    n = 2 * folder_mod._BATCH + 50
    small, big = np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8)
    bad = {n - 10, folder_mod._BATCH + 7}
    for i in range(n):
        write_image(tmp_path / f"{i:05d}.png", big if i in bad else small)
    with pytest.raises(VaelabError, match=f"{folder_mod._BATCH + 7:05d}.png"):
        load_dataset(f"folder:{tmp_path}")
    ds = load_dataset(f"folder:{tmp_path}", image_size=2)
    assert ds.images.shape == (n, 1, 2, 2)


def test_convert_size_and_channels(tmp_path):
    write_image(tmp_path / "a.png", _rgb(1, 40, 20))
    write_image(tmp_path / "b.jpg", _rgb(2, 10, 30))
    write_image(tmp_path / "c.png", np.full((16, 16), 77, np.uint8))
    ds = load_dataset(f"folder:{tmp_path}", image_size=12, channels=3)
    assert ds.images.shape == (3, 3, 12, 12)
    assert (ds.images[2] == 77).all()  # gray -> RGB repeats the value
    gray = load_dataset(f"folder:{tmp_path}", image_size=12, channels=1)
    assert gray.images.shape == (3, 1, 12, 12)


def test_center_crop_keeps_middle(tmp_path):
    img = np.zeros((10, 30), np.uint8)
    img[:, 10:20] = 255  # the middle square is white, the sides black
    write_image(tmp_path / "wide.png", img)
    ds = load_dataset(f"folder:{tmp_path}", image_size=10)
    assert (ds.images == 255).all()


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_image_named(tmp_path, content):
    write_image(tmp_path / "good.png", _rgb(1))
    (tmp_path / "zbad.png").write_bytes(content)
    with pytest.raises(VaelabError, match=r"zbad\.png"):
        load_dataset(f"folder:{tmp_path}")


def test_truncated_jpeg_named(tmp_path):
    path = write_image(tmp_path / "cut.jpg", _rgb(1, 64, 64))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(VaelabError, match=r"cut\.jpg"):
        load_dataset(f"folder:{tmp_path}")


def test_misnamed_file_still_loads(tmp_path):
    """A PNG saved as .jpg is opened by content when the extension's format fails."""
    write_image(tmp_path / "really_png.jpg", _rgb(1), fmt="PNG")
    ds = load_dataset(f"folder:{tmp_path}")
    np.testing.assert_array_equal(ds.images[0], _rgb(1).transpose(2, 0, 1))


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(VaelabError, match="no image files"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(VaelabError, match="not a directory"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(VaelabError, match="needs a path"):
        load_dataset("folder:")


def test_check_folder_dataset(tmp_path):
    write_image(tmp_path / "train" / "a" / "1.png", _rgb(1))
    write_image(tmp_path / "test" / "a" / "1.png", _rgb(2))
    lines = check_dataset(f"folder:{tmp_path}")
    assert any("split train: OK, 1 images 3x8x6" in line for line in lines)
    assert any("split test" in line for line in lines)


def test_alpha_is_converted_only_when_asked_like_any_other_mode(tmp_path):
    from PIL import Image

    from vaelab.data import load_dataset
    from vaelab.errors import VaelabError

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "a" / "0.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(root / "a" / "1.png")
    with pytest.raises(VaelabError, match="alpha channel .*data.channels"):
        load_dataset(f"folder:{root}", "train")
    ds = load_dataset(f"folder:{root}", "train", channels=3)
    assert ds.images.shape == (2, 3, 8, 8) and (ds.images[1] == ds.images[0]).all()
