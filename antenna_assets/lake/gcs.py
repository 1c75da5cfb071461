"""The lake on Google Cloud Storage: gs:// URLs, the Hadoop GCS connector's configuration, and a
start-up check of bucket and credentials through dagster-gcp's `GCSResource`.

Against an emulator (`ANTENNA_GCS_ENDPOINT`) both the Python client and the connector go there
without credentials; otherwise they use Application Default Credentials, or the service-account
key file named by GOOGLE_APPLICATION_CREDENTIALS.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from antenna_assets.settings import Settings

GCS_SCHEME = "gs://"
CREDENTIALS_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"

# Hadoop 3.5's core-default.xml ships defaults with size suffixes ("64m") for its own gs:// client,
# which the Google connector parses as plain numbers and fails on: give the same sizes in bytes.
_SIZES_IN_BYTES = {
    "fs.gs.block.size": str(64 << 20),
    "fs.gs.rewrite.max.chunk.size": str(512 << 20),
    "fs.gs.outputstream.buffer.size": str(8 << 20),
    "fs.gs.inputstream.inplace.seek.limit": str(8 << 20),
    "fs.gs.inputstream.min.range.request.size": str(2 << 20),
}


class GcsLakeError(RuntimeError):
    """The lake on GCS cannot be used; the one-line message says what to create or set."""


def is_gcs(path: str) -> bool:
    return path.startswith(GCS_SCHEME)


def split_gcs_url(url: str) -> tuple[str, str]:
    """`gs://bucket/a/b/` -> (`bucket`, `a/b`)."""
    bucket, _, prefix = url[len(GCS_SCHEME):].partition("/")
    if not is_gcs(url) or not bucket:
        raise GcsLakeError(f"{url!r} is not a gs://bucket/prefix URL")
    return bucket, prefix.strip("/")


def uses_gcs(settings: Settings, roots: Iterable[str] = ()) -> bool:
    """True when a lake or checkpoint root is on gs://, or a run is pointed at an emulator."""
    roots = tuple(roots) or (settings.lake_root, settings.checkpoint_root)
    return bool(settings.gcs_endpoint) or any(is_gcs(root) for root in roots)


def hadoop_conf(settings: Settings) -> dict[str, str]:
    """The connector's `fs.gs.*` keys: on Spark, prefix them with `spark.hadoop.`."""
    conf = {
        "fs.gs.impl": "com.google.cloud.hadoop.fs.gcs.GoogleHadoopFileSystem",
        # Streaming checkpoints go through Hadoop's FileContext, which needs this binding too.
        "fs.AbstractFileSystem.gs.impl": "com.google.cloud.hadoop.fs.gcs.GoogleHadoopFS",
        **_SIZES_IN_BYTES,
    }
    if settings.gcs_project:
        conf["fs.gs.project.id"] = settings.gcs_project
    if settings.gcs_endpoint:
        conf["fs.gs.storage.root.url"] = settings.gcs_endpoint
        conf["fs.gs.auth.type"] = "UNAUTHENTICATED"
        # fake-gcs-server lacks the objects.move call the connector renames with: copy + delete instead.
        conf["fs.gs.operation.move.enable"] = "false"
    elif settings.gcs_credentials_file:
        # Explicit, so executors on other hosts need the key file at that path but not the variable.
        conf["fs.gs.auth.type"] = "SERVICE_ACCOUNT_JSON_KEYFILE"
        conf["fs.gs.auth.service.account.json.keyfile"] = settings.gcs_credentials_file
    else:
        conf["fs.gs.auth.type"] = "APPLICATION_DEFAULT"
    return conf


def spark_conf(settings: Settings, roots: Iterable[str] = ()) -> dict[str, str]:
    """`spark.hadoop.fs.gs.*` when the lake (or an emulator) needs it, else nothing."""
    if not uses_gcs(settings, roots):
        return {}
    return {f"spark.hadoop.{key}": value for key, value in hadoop_conf(settings).items()}


def configure_hadoop(session, settings: Settings) -> None:
    """Set the connector's keys on a running session's Hadoop configuration, which every later
    gs:// file system of the session is built from."""
    hadoop = session.sparkContext._jsc.hadoopConfiguration()
    for key, value in hadoop_conf(settings).items():
        hadoop.set(key, value)


def gcs_client(settings: Settings):
    """A google-cloud-storage client from dagster-gcp's `GCSResource`; anonymous on an emulator."""
    from dagster_gcp import GCSResource
    from google.auth.exceptions import DefaultCredentialsError

    if settings.gcs_endpoint:
        # The client has no endpoint argument through GCSResource; this variable is how
        # google-cloud-storage is told about an emulator (it then needs no credentials).
        os.environ["STORAGE_EMULATOR_HOST"] = settings.gcs_endpoint
    elif settings.gcs_credentials_file and not Path(settings.gcs_credentials_file).is_file():
        raise GcsLakeError(f"{CREDENTIALS_VARIABLE}={settings.gcs_credentials_file}: no such file; "
                           "point it at a service-account JSON key file")
    try:
        return GCSResource(project=settings.gcs_project or None).get_client()
    except DefaultCredentialsError:
        raise GcsLakeError(
            f"no Google Cloud credentials found: set {CREDENTIALS_VARIABLE} to a service-account JSON key file "
            "(or use an attached service account / `gcloud auth application-default login`); "
            "for an emulator set ANTENNA_GCS_ENDPOINT"
        ) from None


def validate_gcs_root(settings: Settings, url: str) -> None:
    """Fail fast, before any Spark work, unless the bucket exists and the credentials may use it."""
    from google.api_core.exceptions import Forbidden, NotFound, Unauthorized
    from google.auth.exceptions import GoogleAuthError, TransportError
    from requests.exceptions import ConnectionError as RequestsConnectionError

    bucket_name, prefix = split_gcs_url(url)
    client = gcs_client(settings)
    where = settings.gcs_endpoint or "Google Cloud Storage"
    try:
        bucket = client.get_bucket(bucket_name)
        # Listing proves storage.objects.list too, which every reader of the lake needs.
        next(iter(client.list_blobs(bucket, prefix=prefix, max_results=1)), None)
    except NotFound:
        raise GcsLakeError(f"bucket {bucket_name!r} does not exist on {where} (lake root {url}): "
                           "create it or fix ANTENNA_LAKE_ROOT / ANTENNA_CHECKPOINT_ROOT") from None
    except (Forbidden, Unauthorized) as exc:
        raise GcsLakeError(f"the credentials may not use bucket {bucket_name!r} ({exc.code}): grant "
                           "roles/storage.objectAdmin and storage.buckets.get on it, or set "
                           f"{CREDENTIALS_VARIABLE} to another service account's key") from None
    except (RequestsConnectionError, TransportError) as exc:
        hint = "start the emulator or unset ANTENNA_GCS_ENDPOINT" if settings.gcs_endpoint else "check the network"
        raise GcsLakeError(f"cannot reach {where} for bucket {bucket_name!r} ({type(exc).__name__}): {hint}") from None
    except GoogleAuthError as exc:
        raise GcsLakeError(f"Google Cloud rejected the credentials ({type(exc).__name__}): check "
                           f"{CREDENTIALS_VARIABLE}") from None


def arrow_filesystem(settings: Settings, url: str):
    """pyarrow's file system for a lake URL (a gs:// one as the connector reaches it: the emulator
    anonymously, else the credentials above) and the URL's path on it."""
    from urllib.parse import urlparse

    from pyarrow import fs

    if not is_gcs(url):
        return fs.LocalFileSystem(), url
    if settings.gcs_endpoint:
        endpoint = urlparse(settings.gcs_endpoint)
        return fs.GcsFileSystem(anonymous=True, scheme=endpoint.scheme, endpoint_override=endpoint.netloc), \
            url[len(GCS_SCHEME):]
    return fs.GcsFileSystem(project_id=settings.gcs_project or None), url[len(GCS_SCHEME):]


def list_gcs_files(settings: Settings, url: str) -> list[str]:
    """gs:// URLs of every object under `url` (a folder), sorted; not the connector's `dir/` markers."""
    bucket_name, prefix = split_gcs_url(url)
    client = gcs_client(settings)
    blobs = client.list_blobs(bucket_name, prefix=f"{prefix}/" if prefix else None)
    return sorted(f"{GCS_SCHEME}{bucket_name}/{blob.name}" for blob in blobs if not blob.name.endswith("/"))
