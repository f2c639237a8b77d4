"""Scenario: a tfds dataset requested on a machine without network.

`tfds.testing.mock_data` never reaches tfds' download code, so (but for the one test
that checks mock_data still works offline) the builders here run their real
`download_and_prepare` with the network blocked: a module that tfds imports on that
path but that our setup.py does not install shows up as an ImportError. Only public
APIs are patched: `socket`, `requests.Session.get` (how tfds opens a URL), urllib3's
`Retry.sleep` and a builder's `url_infos`.
"""

import _thread
import dataclasses
import hashlib
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
import urllib3

from dac_tf import data

HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu",
         "svhn": "ufldl.stanford.edu"}
TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


class _Offline:
    """Blocks every socket connection and records which hosts were tried."""

    def __init__(self, monkeypatch):
        self.hosts = []

        def refuse_getaddrinfo(host, *args, **kwargs):
            self.hosts.append(host)
            raise OSError("network disabled in this test")

        def refuse_create_connection(address, *args, **kwargs):
            self.hosts.append(address[0])
            raise OSError("network disabled in this test")

        def refuse_connect(sock, address):
            self.hosts.append(address[0] if isinstance(address, tuple) else address)
            raise OSError("network disabled in this test")

        monkeypatch.setattr(socket, "getaddrinfo", refuse_getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", refuse_create_connection)
        monkeypatch.setattr(socket.socket, "connect", refuse_connect)


@pytest.fixture
def offline(monkeypatch):
    return _Offline(monkeypatch)


class _Requests:
    """tfds' HTTP requests as `requests.Session.get` sees them.

    Attributes:
      expected: URLs the test waits for at teardown (each requested, all finished).
      on_request: None, or a function of the URL run before the real request (it may
        raise instead, as a failed transfer would).
      finished: URLs whose request has ended, in order.
    """

    def __init__(self):
        self.expected = set()
        self.on_request = None
        self.finished = []
        self.active = 0
        self.changed = threading.Condition()


@pytest.fixture
def tfds_http(monkeypatch):
    """Makes tfds' HTTP client give up at once, and waits for its download threads.

    tfds downloads with `requests` through a urllib3 `Retry` of 10 retries with
    exponential backoff: offline, about 3.5 minutes of sleep. `Retry.sleep`, urllib3's
    public hook between two attempts, made a no-op keeps the retries but not the
    waits, so the test still goes through tfds' whole HTTP code, in milliseconds.

    tfds raises as soon as one URL fails while its thread pool still works on the
    others (svhn has three), so the teardown waits until every URL in `expected` has
    been requested and no request is in flight: a thread outliving the patches would
    retry for minutes and touch the next test's sockets.
    """
    state = _Requests()
    real_get = requests.Session.get

    def tracked_get(session, url, *args, **kwargs):
        with state.changed:
            state.active += 1
        try:
            if state.on_request is not None:
                state.on_request(url)
            return real_get(session, url, *args, **kwargs)
        finally:
            with state.changed:
                state.active -= 1
                state.finished.append(url)
                state.changed.notify_all()

    monkeypatch.setattr(urllib3.util.retry.Retry, "sleep", lambda self, response=None: None)
    monkeypatch.setattr(requests.Session, "get", tracked_get)
    yield state
    with state.changed:
        assert state.changed.wait_for(
            lambda: state.active == 0 and state.expected <= set(state.finished),
            timeout=30), (state.active, state.expected, state.finished)


def _network_looks_up(monkeypatch):
    """The preflight's connection opens; nothing else changes."""
    class _Open:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: _Open())


def _chain(exc):
    """The exception, its causes and contexts, each once."""
    seen, todo = [], [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _listing(root):
    """Every path under root, relative, with file contents, so any change shows."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _fill_unrelated(root):
    """Files a user may already have in a data_dir, next to the dataset's folders."""
    files = {
        "notes.txt": b"keep me",
        "mnist/3.0.1/dataset_info.json": b"{}",
        "downloads/other.tar.gz": b"another dataset's download",
        "downloads/extracted/TAR_GZ.other/readme": b"another extraction",
        "downloads/mnist/file.bin": b"mnist download",
    }
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)


# ---------------------------------------------------------- tfds' own download path


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_real_tfds_download_reaches_the_network(tmp_path, offline, tfds_http, dataset):
    # tfds directly, without dac_tf's preflight: this proves that the installed
    # packages carry the real download_and_prepare up to its HTTP request.
    builder = tfds.builder(TFDS_NAMES[dataset], data_dir=str(tmp_path / "tfds"))
    tfds_http.expected = set(builder.url_infos)
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        builder.download_and_prepare()
    assert time.monotonic() - start < 30
    chain = _chain(info.value)
    imports = [e for e in chain if isinstance(e, ImportError)]
    assert not imports, f"tfds needs a module that is not installed: {imports[0]!r}"
    assert any(isinstance(e, requests.exceptions.ConnectionError) for e in chain), chain
    assert any(isinstance(e, OSError) and "network disabled" in str(e) for e in chain)
    assert HOSTS[dataset] in offline.hosts


def _cifar_tar(prefix, files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            member = tarfile.TarInfo(prefix + name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def _fake_downloads(dataset, rng):
    """Small stand-ins for a dataset's real files, in their real formats.

    Returns:
      (files, x_test, y_test): files maps the last component of each download URL
      to its bytes; x_test, y_test are the test split as `data.load` must return it.
    """
    def images(num):
        return rng.integers(0, 256, size=(num, 32, 32, 3), dtype=np.uint8)

    def records(imgs, *label_columns):
        # CIFAR binary format: label byte(s), then the image as 3 planes of 32x32.
        rows = [bytes(int(col[i]) for col in label_columns)
                + imgs[i].transpose(2, 0, 1).tobytes() for i in range(len(imgs))]
        return b"".join(rows)

    if dataset == "cifar10":
        parts = {f"data_batch_{i}.bin": (images(3), rng.integers(0, 10, 3))
                 for i in range(1, 6)}
        parts["test_batch.bin"] = (images(4), np.array([0, 3, 9, 3]))
        members = {name: records(x, y) for name, (x, y) in parts.items()}
        members["batches.meta.txt"] = "\n".join(CIFAR10_NAMES).encode() + b"\n\n"
        return ({"cifar-10-binary.tar.gz": _cifar_tar("cifar-10-batches-bin/", members)},
                *parts["test_batch.bin"])
    if dataset == "cifar100":
        parts = {"train.bin": (images(5), rng.integers(0, 100, 5)),
                 "test.bin": (images(4), np.array([0, 42, 99, 7]))}
        members = {name: records(x, y // 5, y) for name, (x, y) in parts.items()}
        members["coarse_label_names.txt"] = "\n".join(f"c{i}" for i in range(20)).encode()
        members["fine_label_names.txt"] = "\n".join(f"f{i}" for i in range(100)).encode()
        return ({"cifar-100-binary.tar.gz": _cifar_tar("cifar-100-binary/", members)},
                *parts["test.bin"])
    # A required dependency (setup.py), so a plain import: missing, the test fails.
    import scipy.io  # pylint: disable=g-import-not-at-top
    files = {}
    for split, num in (("train", 3), ("test", 4), ("extra", 2)):
        x, digits = images(num), (np.arange(num) + 7) % 10  # test: 7, 8, 9, 0
        buffer = io.BytesIO()
        # SVHN's .mat layout: X is [32, 32, 3, N]; y is [N, 1] with digit 0 stored as 10.
        scipy.io.savemat(buffer, {"X": np.moveaxis(x, 0, -1),
                                  "y": np.where(digits == 0, 10, digits)[:, None]})
        files[f"{split}_32x32.mat"] = buffer.getvalue()
        if split == "test":
            x_test, y_test = x, digits
    return files, x_test, y_test


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_real_tfds_prepares_files_from_the_manual_folder(tmp_path, offline, monkeypatch,
                                                         dataset):
    # tfds' documented offline route: the downloads put into <data_dir>/downloads/
    # manual. Everything from there on is real tfds code (checksum validation,
    # tar.gz extraction, the builder's parsing of the files, shard writing): a module
    # it needs and we do not install (scipy for svhn's .mat files) fails this test.
    files, x_test, y_test = _fake_downloads(dataset, np.random.default_rng(0))
    builder_cls = tfds.builder_cls(TFDS_NAMES[dataset])
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    stand_ins = {}
    for url, info in tfds.builder(TFDS_NAMES[dataset], data_dir=str(tmp_path)).url_infos.items():
        content = files[info.filename]
        (manual / info.filename).write_bytes(content)
        # The stand-in's checksum registered for the URL, so tfds accepts it.
        stand_ins[url] = dataclasses.replace(info, size=type(info.size)(len(content)),
                                             checksum=hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(builder_cls, "url_infos", stand_ins)
    splits = data.load(dataset, data_dir=str(tmp_path))
    # tfds shuffles examples when it writes them; the images are random, so each
    # identifies its example.
    assert {img.tobytes(): int(label) for img, label in
            zip(splits.x_test, splits.y_test)} == {
                img.tobytes(): int(label) for img, label in zip(x_test, y_test)}
    assert splits.x_test.dtype == np.uint8 and splits.y_test.dtype == np.int32
    if dataset == "cifar10":
        assert splits.class_names == CIFAR10_NAMES
    assert offline.hosts == []  # all files local: nothing tried to connect
    # Prepared now, so a second load needs no download at all.
    assert len(data.load(dataset, data_dir=str(tmp_path), download=False).x_test) == len(
        x_test)


# ------------------------------------------------------------ dac_tf's offline error


def _assert_offline_error(message, dataset, location):
    tfds_name = TFDS_NAMES[dataset]
    assert "\n" not in message and "\r" not in message
    assert f"'{dataset}'" in message
    assert "no network connection" in message
    assert HOSTS[dataset] in message
    assert str(location) in message  # the folder tfds looked in
    assert ("python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{tfds_name}', data_dir='DIR').download_and_prepare()\""
            ) in message
    assert "--data_dir=DIR" in message
    assert "--dataset=npz:PATH" in message


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
@pytest.mark.parametrize("state", ["empty", "with_other_files", "missing"])
def test_load_offline_fails_fast_in_one_line_and_leaves_no_trace(
        tmp_path, offline, dataset, state):
    root = tmp_path / "tfds"
    if state != "missing":
        root.mkdir()
    if state == "with_other_files":
        _fill_unrelated(str(root))
    before = _listing(str(root)) if root.exists() else None
    start = time.monotonic()
    with pytest.raises(data.DatasetError) as info:
        data.load(dataset, data_dir=str(root))
    assert time.monotonic() - start < 30
    assert isinstance(info.value, ValueError)  # a UserError: the CLI prints one line
    _assert_offline_error(str(info.value), dataset, root / TFDS_NAMES[dataset])
    assert HOSTS[dataset] in offline.hosts  # the answer came from a real attempt
    if before is None:
        assert not root.exists()
        assert os.listdir(tmp_path) == []
    else:
        assert _listing(str(root)) == before


def test_tilde_in_data_dir_means_home(tmp_path, offline, monkeypatch):
    # tfds itself would take "~" literally and write a "~" folder into the working
    # directory; a shell leaves --data_dir=~/tfds unexpanded.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DatasetError) as info:
        data.load("cifar10", data_dir="~/tfds")
    assert str(tmp_path / "home" / "tfds" / "cifar10") in str(info.value)
    assert os.listdir(tmp_path) == []


def test_the_pre_download_command_in_the_message_runs(tmp_path, offline):
    # The command the error tells the user to run, run as they would (bash, python
    # -c) with the download itself blocked: it must get as far as tfds' network code,
    # never stop on a quoting slip or a missing module.
    with pytest.raises(data.DatasetError) as info:
        data.load("cifar10", data_dir=str(tmp_path / "tfds"))
    command = re.search(r"`(python -c .*?)`", str(info.value)).group(1)
    command = command.replace("python", shlex.quote(sys.executable), 1)
    command = command.replace("'DIR'", repr(str(tmp_path / "dir")))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""\
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network disabled in this test")
        socket.getaddrinfo = socket.create_connection = socket.socket.connect = refuse
        import urllib3
        # tfds' retries without their minutes of backoff.
        urllib3.util.retry.Retry.sleep = lambda self, response=None: None
        """))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run(["bash", "-c", command], env=env, cwd=tmp_path,
                            capture_output=True, timeout=300, check=False)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "requests.exceptions.ConnectionError" in stderr, stderr[-3000:]
    assert "network disabled in this test" in stderr
    assert "ImportError" not in stderr and "ModuleNotFoundError" not in stderr


def test_file_in_the_manual_folder_needs_no_network(tmp_path, offline):
    # An offline machine can also be set up by putting the archive into tfds' manual
    # folder; the network check must not refuse that. (The stand-in fails tfds'
    # checksum, which shows tfds went on to use it; what tfds created meanwhile, an
    # extraction folder, is removed.)
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"not the real archive")
    before = _listing(str(tmp_path))
    with pytest.raises(data.DatasetError, match="NonMatchingChecksumError"):
        data.load("cifar10", data_dir=str(tmp_path))
    assert offline.hosts == []
    assert _listing(str(tmp_path)) == before


def test_mock_data_needs_no_network(offline):
    # Under tfds.testing.mock_data, download_and_prepare downloads nothing: the
    # network check must stay out of the way (the CLI tests run this way offline).
    with tfds.testing.mock_data(num_examples=8):
        splits = data.load("cifar10")
    assert splits.x_test.shape == (8, 32, 32, 3)
    assert offline.hosts == []


def test_proxy_unreachable_is_named(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(data.DatasetError, match=r"the proxy proxy\.example:3128 that "
                       r"https://www\.cs\.toronto\.edu/\S+ goes through"):
        data.load("cifar10", data_dir=str(tmp_path))
    assert offline.hosts == ["proxy.example"]
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------- cleanup after a failed download


@pytest.mark.parametrize("dataset", ["cifar10", "svhn"])
@pytest.mark.parametrize("state", ["with_other_files", "missing"])
def test_failed_download_removes_only_what_it_created(tmp_path, monkeypatch, tfds_http,
                                                      dataset, state):
    # The network looks fine to the preflight (create_connection answers) but tfds'
    # own connections fail: the download starts, writes its partial files, and fails.
    hosts = []

    def refuse(host, *args, **kwargs):
        hosts.append(host)
        raise OSError("network disabled in this test")

    _network_looks_up(monkeypatch)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    root = tmp_path / "data" / "tfds"
    if state == "with_other_files":
        _fill_unrelated(str(root))
        # A folder of the same dataset from earlier, e.g. another version.
        (root / TFDS_NAMES[dataset] / "0.0.1").mkdir(parents=True)
        (root / TFDS_NAMES[dataset] / "0.0.1" / "keep").write_bytes(b"old version")
    before = _listing(str(root)) if root.exists() else None
    tfds_http.expected = set(tfds.builder(TFDS_NAMES[dataset]).url_infos)
    seen_during_download = {}
    tfds_http.on_request = lambda url: seen_during_download.update(_listing(str(root)))
    start = time.monotonic()
    with pytest.raises(data.DatasetError) as info:
        data.load(dataset, data_dir=str(root))
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "\n" not in message
    assert "download or preparation failed" in message and "ConnectionError" in message
    assert "--data_dir=DIR" in message
    assert HOSTS[dataset] in hosts
    # tfds did write partial files while it downloaded (its incomplete.* dataset
    # folder it removes itself, except when the process is killed) ...
    assert any(".tmp." in path for path in seen_during_download), seen_during_download
    # ... and none of them is left, while everything that was there before is.
    if before is None:
        assert not (tmp_path / "data").exists()
    else:
        assert _listing(str(root)) == before


def test_interrupted_download_is_cleaned_up_and_reraised(tmp_path, monkeypatch, tfds_http):
    # Ctrl-C in the middle of a transfer: the partial file is removed too, and the
    # KeyboardInterrupt goes on (it is not turned into a DatasetError).
    seen_during_download = {}

    def interrupted_transfer(url):
        del url
        for dirpath, dirnames, _ in os.walk(tmp_path / "downloads"):
            for name in dirnames:
                if ".tmp." in name:  # where tfds writes the file being downloaded
                    with open(os.path.join(dirpath, name, "partial"), "wb") as f:
                        f.write(b"half a file")
        seen_during_download.update(_listing(str(tmp_path)))
        _thread.interrupt_main()  # what Ctrl-C does to the waiting main thread
        raise requests.exceptions.ConnectionError("transfer stopped")

    _network_looks_up(monkeypatch)
    tfds_http.expected = set(tfds.builder("cifar10").url_infos)
    tfds_http.on_request = interrupted_transfer
    (tmp_path / "notes.txt").write_bytes(b"keep me")
    with pytest.raises(KeyboardInterrupt):
        data.load("cifar10", data_dir=str(tmp_path))
    assert any(path.endswith("/partial") for path in seen_during_download)
    assert _listing(str(tmp_path)) == {"notes.txt": b"keep me"}
