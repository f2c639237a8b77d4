"""Tests of dac_tf.data.tfds_fetch's parts: the network check, the URL list, the cleanup.

The scenario they make up (a tfds dataset requested offline) is tested end to end in
test_tfds_download_offline.py.
"""

import os
import socket
import threading
import time

import pytest
import tensorflow_datasets as tfds

from dac_tf.data import tfds_fetch

TFDS_NAMES = ("cifar10", "cifar100", "svhn_cropped")


def test_fallback_urls_match_installed_tfds():
    # The table is what the offline check falls back to; it must name the URLs tfds
    # really downloads from.
    for name in TFDS_NAMES:
        assert sorted(tfds_fetch.FALLBACK_URLS[name]) == sorted(
            tfds.builder(name).url_infos), name


def test_urls_to_fetch_leaves_out_files_in_the_manual_folder(tmp_path):
    builder = tfds.builder("svhn_cropped", data_dir=str(tmp_path))
    manual = tmp_path / "manual"
    manual.mkdir()
    urls = sorted(builder.url_infos)
    assert tfds_fetch.urls_to_fetch(builder, "svhn_cropped", str(manual)) == urls
    test_url = next(url for url in urls if url.endswith("/test_32x32.mat"))
    (manual / "test_32x32.mat").write_bytes(b"placed by hand")
    assert tfds_fetch.urls_to_fetch(builder, "svhn_cropped", str(manual)) == [
        url for url in urls if url != test_url]


@pytest.mark.parametrize("https_proxy,no_proxy,expect", [
    ("http://proxy.example:3128", "", ("proxy.example", 3128, True)),
    ("proxy.example:8080", "", ("proxy.example", 8080, True)),
    ("http://proxy.example:3128", "cs.toronto.edu", ("www.cs.toronto.edu", 443, False)),
    ("", "", ("www.cs.toronto.edu", 443, False)),
])
def test_connection_targets_are_those_requests_would_use(monkeypatch, https_proxy,
                                                         no_proxy, expect):
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    if https_proxy:
        monkeypatch.setenv("HTTPS_PROXY", https_proxy)
    if no_proxy:
        monkeypatch.setenv("NO_PROXY", no_proxy)
    url = tfds_fetch.FALLBACK_URLS["cifar10"][0]
    assert tfds_fetch.connection_targets([url]) == [(url, *expect)]


def test_connection_targets_one_per_endpoint(monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    urls = tfds_fetch.FALLBACK_URLS["svhn_cropped"]  # three files, one host
    targets = tfds_fetch.connection_targets(urls)
    assert targets == [(urls[0], "ufldl.stanford.edu", 80, False)]


def test_connect_error_on_a_real_local_port():
    # A listening socket on the loopback: the connection opens. Closed again: refused.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        assert tfds_fetch.connect_error("127.0.0.1", port, 5.0) is None
    finally:
        server.close()
    error = tfds_fetch.connect_error("127.0.0.1", port, 5.0)
    assert isinstance(error, ConnectionRefusedError)


def test_connect_error_gives_up_on_a_hanging_lookup(monkeypatch):
    # A DNS lookup that never answers must not hold the run: the check has its own
    # deadline, independent of the socket timeout.
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(3)
        raise OSError("too late")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    error = tfds_fetch.connect_error("www.cs.toronto.edu", 443, 0.2)
    assert time.monotonic() - start < 2
    assert isinstance(error, TimeoutError)
    release.set()


def test_tfds_error_is_one_line_with_the_pre_download_command():
    error = tfds_fetch.tfds_error("svhn", "svhn_cropped", "went\nwrong under /x")
    message = str(error)
    assert "\n" not in message
    assert message.startswith("Dataset 'svhn' (tfds 'svhn_cropped') went wrong under /x.")
    assert ("`python -c \"import tensorflow_datasets as tfds; tfds.builder("
            "'svhn_cropped', data_dir='DIR').download_and_prepare()\"`") in message


# ------------------------------------------------------------------- DownloadFootprint


def _write(path, content=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, names in os.walk(root) for n in names + dirs)


def _footprint(root):
    downloads = os.path.join(root, "downloads")
    return tfds_fetch.DownloadFootprint(
        root, "cifar10", download_dir=downloads,
        extract_dir=os.path.join(downloads, "extracted"))


def test_footprint_removes_only_what_appeared_in_the_folders_of_its_dataset(tmp_path):
    root = str(tmp_path)
    kept = ["notes.txt", "cifar10/0.0.1/keep", "downloads/cifar10/old.tar.gz",
            "downloads/extracted/TAR_GZ.old/readme", "downloads/mnist/file.bin"]
    for rel in kept:
        _write(os.path.join(root, rel))
    footprint = _footprint(root)
    # What a failed attempt writes for cifar10 ...
    created = ["cifar10/3.0.2/incomplete.abc/part", "downloads/cifar10/f.tmp.1/partial",
               "downloads/extracted/TAR_GZ.new/data_batch_1.bin"]
    # ... and what another process writes meanwhile for another dataset.
    others = ["mnist/3.0.1/new", "downloads/mnist/new.bin", "downloads/other.tar.gz"]
    for rel in created + others:
        _write(os.path.join(root, rel))
    footprint.remove_new()
    remaining = _files(root)
    for rel in kept + others:
        assert rel in remaining
    for rel in created:
        assert rel not in remaining
    assert "cifar10/3.0.2" not in remaining  # a new folder goes as a whole
    assert "downloads/cifar10/f.tmp.1" not in remaining


def test_footprint_removes_a_data_dir_it_had_to_create(tmp_path):
    root = str(tmp_path / "a" / "b" / "tfds")
    footprint = _footprint(root)
    _write(os.path.join(root, "downloads", "cifar10", "f.tmp.1", "partial"))
    footprint.remove_new()
    assert os.listdir(tmp_path) == []  # "a" and "b" were created for it too


def test_footprint_keeps_a_new_downloads_folder_someone_else_wrote_into(tmp_path):
    root = str(tmp_path)
    footprint = _footprint(root)
    _write(os.path.join(root, "downloads", "cifar10", "f.tmp.1", "partial"))
    _write(os.path.join(root, "downloads", "mnist", "file.bin"))
    footprint.remove_new()
    assert _files(root) == ["downloads", "downloads/mnist", "downloads/mnist/file.bin"]
    # Alone, the new downloads folder goes too.
    os.makedirs(tmp_path / "other")
    footprint = _footprint(str(tmp_path / "other"))
    _write(os.path.join(tmp_path, "other", "downloads", "cifar10", "f.tmp.2", "partial"))
    footprint.remove_new()
    assert os.listdir(tmp_path / "other") == []
