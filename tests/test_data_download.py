"""Downloads from a local HTTP server (127.0.0.1) or file:// URLs via the mirror table."""

import gzip
import http.server
import os
import threading

import numpy as np
import pytest

from datafiles import IDX_FILES, cifar_arrays, http_root, idx_bytes, md5, write_cifar_tar  # noqa: F401
from vaelab.data import download as dl
from vaelab.data import download_dataset, load_dataset
from vaelab.errors import VaelabError


def _serve_mnist(folder, n=10, seed=0):
    """Write the four IDX .gz files into ``folder``; return {filename: bytes}."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, (img, lab) in IDX_FILES.items():
        files[img] = gzip.compress(idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)), mtime=0)
        files[lab] = gzip.compress(idx_bytes(rng.integers(0, 10, n, dtype=np.uint8)), mtime=0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _use(monkeypatch, name, mirrors, files):
    monkeypatch.setitem(dl.MIRRORS, name, mirrors)
    monkeypatch.setitem(dl.CHECKSUMS, name, {f: md5(d) for f, d in files.items()})


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith(".")]


def test_download_success_verifies_and_loads(tmp_path, http_root, monkeypatch):
    root, url = http_root
    files = _serve_mnist(root / "good")
    _use(monkeypatch, "mnist", [f"{url}/good/"], files)
    data = tmp_path / "data"
    ds = load_dataset("mnist", "test", data_dir=data, download=True)
    assert len(ds) == 10
    # only the split asked for was fetched
    assert sorted(p.name for p in (data / "mnist").iterdir()) == sorted(IDX_FILES["test"])
    for name in IDX_FILES["test"]:
        assert (data / "mnist" / name).read_bytes() == files[name]
    where = download_dataset("mnist", data_dir=data, progress=True)
    assert where == data / "mnist"
    assert sorted(p.name for p in where.iterdir()) == sorted(files)
    assert _leftovers(where) == []


def test_bad_checksum_mirror_skipped(tmp_path, http_root, monkeypatch):
    root, url = http_root
    files = _serve_mnist(root / "good")
    tampered = _serve_mnist(root / "evil", seed=1)  # valid IDX files, wrong content
    assert tampered != files
    _use(monkeypatch, "mnist", [f"{url}/evil/", f"{url}/good/"], files)
    where = download_dataset("mnist", data_dir=tmp_path, progress=False)
    for name, data in files.items():
        assert (where / name).read_bytes() == data
    assert _leftovers(where) == []


def test_only_bad_checksum_leaves_no_file(tmp_path, http_root, monkeypatch):
    root, url = http_root
    files = _serve_mnist(root / "good")
    _serve_mnist(root / "evil", seed=1)
    _use(monkeypatch, "mnist", [f"{url}/evil/"], files)
    with pytest.raises(VaelabError) as info:
        load_dataset("mnist", "train", data_dir=tmp_path, download=True)
    msg = str(info.value)
    assert f"{url}/evil/train-images-idx3-ubyte.gz" in msg and "md5 mismatch" in msg and "\n" not in msg
    folder = tmp_path / "mnist"
    assert not folder.exists()  # no file, no partial file, no empty folder


def test_first_mirror_404_falls_back(tmp_path, http_root, monkeypatch):
    root, url = http_root
    files = _serve_mnist(root / "good")
    (root / "empty").mkdir()
    _use(monkeypatch, "mnist", [f"{url}/empty/", f"{url}/good/"], files)
    ds = load_dataset("mnist", "train", data_dir=tmp_path, download=True)
    assert len(ds) == 10


def test_all_mirrors_fail_names_each_url_and_reason(tmp_path, http_root, monkeypatch):
    root, url = http_root
    (root / "empty").mkdir()
    files = {"train_32x32.mat": b"x", "test_32x32.mat": b"y", "extra_32x32.mat": b"z"}
    refused = "http://127.0.0.1:9/nothing-listens/"  # discard port: connection refused
    _use(monkeypatch, "svhn", [f"{url}/empty/", refused], files)
    with pytest.raises(VaelabError) as info:
        load_dataset("svhn", "test", data_dir=tmp_path, download=True)
    msg = str(info.value)
    assert f"{url}/empty/test_32x32.mat (HTTP 404" in msg
    assert f"{refused}test_32x32.mat (" in msg
    assert "\n" not in msg
    assert not (tmp_path / "svhn" / "test_32x32.mat").exists()
    assert not (tmp_path / "svhn").exists()  # "nothing written": not even an empty folder


def test_file_urls_and_existing_files_kept(tmp_path, monkeypatch):
    files = _serve_mnist(tmp_path / "mirror")
    _use(monkeypatch, "mnist", [(tmp_path / "mirror").as_uri() + "/"], files)
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    # a user-supplied decompressed file counts as present and is not replaced
    raw = gzip.decompress(files["train-images-idx3-ubyte.gz"])
    (data / "train-images-idx3-ubyte").write_bytes(raw)
    download_dataset("mnist", data_dir=tmp_path / "data", progress=False)
    assert not (data / "train-images-idx3-ubyte.gz").exists()
    assert (data / "train-labels-idx1-ubyte.gz").read_bytes() == files["train-labels-idx1-ubyte.gz"]
    assert len(load_dataset("mnist", data_dir=tmp_path / "data")) == 10


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    files = _serve_mnist(tmp_path / "mirror")
    _use(monkeypatch, "mnist", [(tmp_path / "mirror").as_uri() + "/"], files)

    def broken_stream(url, out, label, progress):
        out.write(b"partial")
        raise dl._MirrorFailed("connection reset")

    monkeypatch.setattr(dl, "_stream", broken_stream)
    with pytest.raises(VaelabError, match="connection reset"):
        download_dataset("mnist", data_dir=tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()  # the folders it made are gone too


def test_cifar_download_and_extract(tmp_path, http_root, monkeypatch):
    root, url = http_root
    batches = cifar_arrays(n_per_batch=2)
    tar = write_cifar_tar(root / "cifar-10-python.tar.gz", batches)
    _use(monkeypatch, "cifar10", [f"{url}/"], {tar.name: tar.read_bytes()})
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, download=True)
    np.testing.assert_array_equal(ds.images.reshape(2, -1), batches["test_batch"][0])
    assert (tmp_path / "cifar10" / "cifar-10-python.tar.gz").is_file()


def test_nothing_to_download_for_local_datasets(tmp_path):
    with pytest.raises(VaelabError, match="nothing to download"):
        download_dataset(f"folder:{tmp_path}")
    assert (download_dataset("mnist-sample") / "t10k-images-idx3-ubyte.gz").is_file()


def test_unwritable_data_dir(tmp_path, monkeypatch):
    files = _serve_mnist(tmp_path / "mirror")
    _use(monkeypatch, "mnist", [(tmp_path / "mirror").as_uri() + "/"], files)
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    with pytest.raises(VaelabError, match="not a folder|cannot create"):
        download_dataset("mnist", data_dir=blocker, progress=False)


def test_official_table_is_complete():
    """Every downloadable dataset has mirrors and an md5 for each published file."""
    assert set(dl.MIRRORS) == set(dl.CHECKSUMS) == {"mnist", "fashion-mnist", "kmnist", "svhn", "cifar10"}
    assert dl.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert dl.CHECKSUMS["cifar10"]["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert any("yann.lecun.com" in m for m in dl.MIRRORS["mnist"])
    for table in dl.CHECKSUMS.values():
        assert all(len(h) == 32 and int(h, 16) >= 0 for h in table.values())


class _CutOffHandler(http.server.BaseHTTPRequestHandler):
    """Promises 100000 bytes, sends 10, hangs up: an interrupted download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_connection_cut_mid_file(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutOffHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setitem(dl.MIRRORS, "svhn", [url])
        with pytest.raises(VaelabError, match=r"could not download test_32x32\.mat: http://127\.0\.0\.1:\d+/test_32x32\.mat "
                                                  r"\(connection closed after 10 of 100000 bytes\)"):
            download_dataset("svhn", data_dir=tmp_path, splits=["test"], progress=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not (tmp_path / "svhn").exists()  # nothing written, not even its folder
