"""A TFDS data set that is not prepared, on a machine that cannot download it, fails in seconds.

`tfds` retries an unreachable download for minutes before it gives up. `prepare(builder, data)` prepares
the builder when it is not prepared yet, but first checks in a few seconds that this machine can open a
connection at all (to TFDS's download host, or to the HTTPS proxy when one is set); if it cannot, it raises
an error that names `config.data.tfds_data_dir` and says how to prepare the data on a connected machine.
"""

import os
import socket
import urllib.parse

DOWNLOAD_HOST = ("storage.googleapis.com", 443)  # TFDS's own mirror, tried before a data set's source URLs.
TIMEOUT_S = 3.0


def _probe_address() -> tuple[str, int]:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        proxy = os.environ.get(name)
        if proxy:
            parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if parsed.hostname:
                return parsed.hostname, parsed.port or 80
    return DOWNLOAD_HOST


def _download_is_mocked(builder) -> bool:
    """Under `tfds.testing.mock_data` downloading is a no-op that needs no network."""
    return getattr(type(builder).download_and_prepare, "__name__", "") == "mock_download_and_prepare"


def network_problem(timeout_s: float = TIMEOUT_S) -> str | None:
    """None when a connection to the download host (or the proxy) opens within `timeout_s`, else why not."""
    host, port = _probe_address()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as error:
        return f"no connection to {host}:{port} ({error.__class__.__name__}: {error})"


def offline_message(name: str, tfds_data_dir: str, builder_dir: str, problem: str) -> str:
    where = tfds_data_dir or "DIR"
    return (
        f"config.data.tfds_name={name!r} is not prepared in {builder_dir} and this machine cannot download it: "
        f"{problem}. Prepare it on a machine with internet access: python -c \"import tensorflow_datasets as "
        f"tfds; tfds.builder({name!r}, data_dir={where!r}).download_and_prepare()\", copy {where} here (or to "
        f"a bucket both machines see), and pass --config.data.tfds_data_dir={where} "
        f"(now {tfds_data_dir!r}, TFDS's default when empty)."
    )


def prepare(builder, name: str, tfds_data_dir: str, download_config=None, needs_network: bool = True) -> None:
    """`builder.download_and_prepare(...)` unless it is prepared; offline, a ValueError within seconds.

    `name` and `tfds_data_dir` are config.data.tfds_name and config.data.tfds_data_dir, for the message.
    `needs_network=False` skips the check, for data sets prepared from files you downloaded (manual_dir).
    """
    if builder.is_prepared():
        return
    problem = network_problem() if needs_network and not _download_is_mocked(builder) else None
    if problem is not None:
        raise ValueError(offline_message(name, tfds_data_dir, str(builder.data_dir), problem))
    if download_config is None:
        builder.download_and_prepare()
    else:
        builder.download_and_prepare(download_config=download_config)
