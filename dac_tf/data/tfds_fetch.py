"""Downloading a tfds dataset: a fast offline check first, no partial files left after.

Offline, tfds' own HTTP client retries 10 times with exponential backoff (about 3.5
minutes) before it gives up, and it leaves its partial downloads behind. So
`download_and_prepare` here first opens one TCP connection per download host (or the
proxy in front of it), bounded by `PREFLIGHT_TIMEOUT_S` seconds: offline it fails
within that, before tfds writes anything, with a one-line `DatasetError` naming the
host, the folder tfds looked in and the command that pre-downloads the dataset. A
download that fails later (connection lost, checksum mismatch, Ctrl-C) has whatever
it created removed.

Only tfds' public API is used: `DatasetBuilder.url_infos` (the URLs and file names of
the builder's registered checksums), `DatasetBuilder.data_dir_root`, and the
download, extraction and manual folders, which are passed to `download_and_prepare`
explicitly (their tfds default values, as `download_dir` and a
`tfds.download.DownloadConfig`), so the folders checked and cleaned here are by
construction the ones tfds uses.
"""

import os
import shutil
import socket
import threading
import urllib.parse

from dac_tf.data.splits import DatasetError
from dac_tf.data.splits import short_error

# Where each tfds builder downloads from, as in the checksums files of tfds 4.9.10
# (image_classification/cifar.py, datasets/svhn_cropped/checksums.tsv). Used only when
# the builder lists no URLs itself (`url_infos`), so the offline check still knows
# which host to try. tfds 4.9.10 has its GCS mirror of prepared datasets switched
# off, so these hosts are the only source.
FALLBACK_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
    "svhn_cropped": tuple(f"http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
                          for split in ("train", "test", "extra")),
}
# One TCP connect per download host, bounded by this many seconds (DNS lookup
# included), answers "is there a network?" long before tfds' retries would.
PREFLIGHT_TIMEOUT_S = 5.0
# How deep below a tfds-owned folder the pre-download listing goes. tfds creates its
# partial files at most two levels down (<name>/<config>/<version>,
# downloads/<name>/<file>.tmp.<uuid>/, downloads/extracted/<archive>/); whatever it
# writes further down sits inside a folder that is new and so removed as a whole.
_SNAPSHOT_DEPTH = 2


def tfds_error(dataset, tfds_name, what):
    """Builds the one-line error for a tfds dataset that cannot be made available.

    Args:
      dataset: the --dataset string ("svhn").
      tfds_name: the tfds builder name ("svhn_cropped").
      what: what went wrong, one sentence without the trailing period; it should name
        the folder tfds looked in.

    Returns:
      A `DatasetError` whose message is one line: the CLI prints it as is, and a
      multi-line tfds traceback would bury the fix.
    """
    message = (
        f"Dataset {dataset!r} (tfds {tfds_name!r}) {what}. Fix: on a machine with "
        f"internet run `python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{tfds_name}', data_dir='DIR').download_and_prepare()\"`, copy "
        "DIR to this machine and pass --data_dir=DIR, or use --dataset=npz:PATH.")
    return DatasetError(" ".join(message.splitlines()))


def download_and_prepare(builder, dataset, tfds_name, location):
    """Runs `builder.download_and_prepare()` after checking the network, atomically.

    Offline it fails within `PREFLIGHT_TIMEOUT_S` seconds, before tfds writes
    anything. If the download or the preparation fails later (connection lost,
    checksum mismatch, Ctrl-C, ...), whatever this attempt created under the tfds
    data_dir is removed, so neither a partial download nor a half-written dataset
    folder is left for the next run to trip over.

    Args:
      builder: the tfds `DatasetBuilder`, not prepared yet.
      dataset: the --dataset string, for the error message.
      tfds_name: the tfds builder name, for the error message.
      location: the folder tfds looks in, for the error message.

    Raises:
      DatasetError: a download host cannot be reached, or the download or the
        preparation failed.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if getattr(type(builder).download_and_prepare, "__module__", "").startswith(
            "tensorflow_datasets.testing"):
        # tfds.testing.mock_data makes download_and_prepare a no-op (its documented
        # behaviour): nothing is downloaded or written, so there is no network to
        # check and nothing to clean up.
        builder.download_and_prepare()
        return
    root = os.fspath(builder.data_dir_root)
    download_dir = os.path.join(root, "downloads")
    config = tfds.download.DownloadConfig(
        extract_dir=os.path.join(download_dir, "extracted"),
        manual_dir=os.path.join(download_dir, "manual"))
    urls = urls_to_fetch(builder, tfds_name, config.manual_dir)
    for url, host, port, via_proxy in connection_targets(urls):
        error = connect_error(host, port, PREFLIGHT_TIMEOUT_S)
        if error is not None:
            target = (f"the proxy {host}:{port} that {url} goes through" if via_proxy
                      else f"{host}:{port} (to fetch {url})")
            raise tfds_error(dataset, tfds_name, f"is not prepared under {location} "
                             f"and cannot be downloaded: no network connection to "
                             f"{target}: {short_error(error)}")
    footprint = DownloadFootprint(root, builder.name, download_dir=download_dir,
                                  extract_dir=config.extract_dir)
    try:
        builder.download_and_prepare(download_dir=download_dir, download_config=config)
    except BaseException as e:  # pylint: disable=broad-except
        # BaseException: a Ctrl-C in the middle of a download leaves the same
        # partial files as a dropped connection.
        footprint.remove_new()
        if not isinstance(e, Exception):
            raise
        raise tfds_error(dataset, tfds_name, f"is not prepared under {location} and "
                         f"its download or preparation failed ({short_error(e)}); the "
                         "partial files were removed") from e


def urls_to_fetch(builder, tfds_name, manual_dir):
    """The URLs `download_and_prepare` will fetch over the network.

    A URL whose file is in the manual folder (`manual_dir/<file name>`, the name
    from the builder's checksums) is left out: tfds takes it from there without a
    connection, its documented way to prepare a dataset on a machine without
    internet, which must not be refused. A download still in tfds' cache from an
    earlier tfds run that did not finish preparing is not looked for (tfds has no
    public API to ask): offline, that case gets the same error as an empty data_dir.

    Args:
      builder: the tfds `DatasetBuilder`.
      tfds_name: its name, to look up `FALLBACK_URLS`.
      manual_dir: the manual folder passed to tfds.

    Returns:
      A sorted list of URLs.
    """
    try:
        url_infos = dict(builder.url_infos or {})
    except Exception:  # pylint: disable=broad-except
        # Reading the checksums file goes through importlib resources; if that breaks,
        # the fixed table still lets the check name the right host.
        url_infos = {}
    if not url_infos:
        return sorted(FALLBACK_URLS.get(tfds_name, ()))
    return sorted(url for url, info in url_infos.items()
                  if not (info.filename
                          and os.path.exists(os.path.join(manual_dir, info.filename))))


def connection_targets(urls):
    """One (url, host, port, via_proxy) per distinct endpoint a download connects to.

    tfds downloads with `requests`, which honours HTTP(S)_PROXY / NO_PROXY; behind
    a proxy the only connection made from this machine is to the proxy, so that is
    the one to check.

    Args:
      urls: the URLs to be downloaded.

    Returns:
      A list of (url, host, port, via_proxy), the first URL for each endpoint.
    """
    import requests  # pylint: disable=g-import-not-at-top  (a tfds dependency)

    targets = {}
    for url in urls:
        proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
        if proxy and "://" not in proxy:
            proxy = f"http://{proxy}"  # as requests reads a scheme-less proxy
        parts = urllib.parse.urlsplit(proxy or url)
        default_port = {"https": 443, "http": 80}.get(parts.scheme, 1080)
        try:
            port = parts.port or default_port
        except ValueError:  # a malformed port: let tfds report it
            continue
        if parts.hostname:
            targets.setdefault((parts.hostname, port), (url, bool(proxy)))
    return [(url, host, port, via_proxy)
            for (host, port), (url, via_proxy) in targets.items()]


def connect_error(host, port, timeout):
    """Tries one TCP connection; returns None if it opened, else the error.

    The connection runs in a daemon thread joined with `timeout`, because
    `create_connection`'s own timeout does not cover the DNS lookup, which can hang
    much longer on a machine without network.

    Args:
      host: host name or address.
      port: TCP port.
      timeout: seconds to wait in all, the DNS lookup included.

    Returns:
      None, or the `OSError` (a `TimeoutError` when there was no answer in time).
    """
    outcome = {}

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as e:  # gaierror, ConnectionRefusedError, timeout, ...
            outcome["error"] = e

    thread = threading.Thread(target=connect, name="dac_tf-preflight", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    return outcome.get("error") or TimeoutError(f"no answer within {timeout:g} s")


class DownloadFootprint:
    """What exists, before a download, where tfds writes for one builder.

    `remove_new` later deletes what appeared there since, and nothing that existed
    before. Only the folders tfds uses for this builder are looked at (the dataset
    folder <root>/<name>, its downloads <download_dir>/<name>, which tfds keeps per
    dataset, and <extract_dir>, plus the <root> and <download_dir> folders
    themselves), so files that another process writes meanwhile for another dataset
    in the same data_dir are left alone. A root that did not exist before is removed
    whole, with any parent folders tfds had to create for it.

    Remote data_dirs (gs://...) are not tracked: nothing is removed there.
    """

    def __init__(self, root, name, *, download_dir, extract_dir):
        """Lists what exists now.

        Args:
          root: the tfds data_dir root.
          name: the builder's name.
          download_dir: the download folder passed to tfds.
          extract_dir: the extraction folder passed to tfds.
        """
        self._local = "://" not in root
        root = os.path.abspath(root) if self._local else root
        self._downloads = os.path.abspath(download_dir) if self._local else download_dir
        self._owned = (os.path.join(root, name), os.path.join(self._downloads, name),
                       os.path.abspath(extract_dir) if self._local else extract_dir)
        # The top-most folder the attempt would create to make `root` exist.
        self._created_top = None
        path = root
        while self._local and not os.path.lexists(path):
            self._created_top = path
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        self._before = set()
        if self._local and self._created_top is None:
            if os.path.lexists(self._downloads):
                self._before.add(self._downloads)
            for owned in self._owned:
                if os.path.lexists(owned):
                    self._before.add(owned)
                    self._before.update(_paths_below(owned, depth=_SNAPSHOT_DEPTH - 1))

    def remove_new(self):
        """Deletes what the attempt created; best effort, never raises."""
        if not self._local:
            return
        if self._created_top is not None:
            _remove(self._created_top)
            return
        for owned in self._owned:
            self._remove_new_under(owned, _SNAPSHOT_DEPTH)
        if self._downloads not in self._before:
            try:
                os.rmdir(self._downloads)  # only if empty: it may be shared by now
            except OSError:
                pass

    def _remove_new_under(self, path, depth):
        if not os.path.lexists(path):
            return
        if path not in self._before:
            _remove(path)
            return
        if depth == 0 or os.path.islink(path) or not os.path.isdir(path):
            return
        for child in _paths_below(path, depth=0):
            self._remove_new_under(child, depth - 1)


def _paths_below(path, *, depth):
    """Paths below `path`, down to `depth` further levels; empty if unreadable."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    out = []
    for entry in entries:
        out.append(entry.path)
        if depth > 0 and entry.is_dir(follow_symlinks=False):
            out += _paths_below(entry.path, depth=depth - 1)
    return out


def _remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass  # best effort: the original error is the one worth reporting
