"""Write an exported model folder to a local directory or a ``gs://bucket/prefix``.

The google-cloud-storage client honours ``STORAGE_EMULATOR_HOST`` by itself, which is how the tests
point it at the local emulator. The manifest is uploaded last, so a reader that finds it finds every
file it names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common.errors import StorageUnavailable
from common.model_store import split_gcs_uri

MANIFEST = "manifest.json"


def _ordered(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda p: (p.name == MANIFEST, p.name))


def publish_folder(local_dir: Path, destination: str) -> list[str]:
    """Copy every file of ``local_dir`` to ``destination`` (a path or gs:// prefix); return their URIs."""
    files = _ordered([p for p in local_dir.iterdir() if p.is_file()])
    if destination.startswith("gs://"):
        return _upload(files, destination)
    dest = Path(destination)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        if dest.resolve() != local_dir.resolve():
            shutil.copy2(f, dest / f.name)
        out.append(str(dest / f.name))
    return out


def _upload(files: list[Path], uri: str) -> list[str]:
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    bucket_name, prefix = split_gcs_uri(uri)
    try:
        client = storage.Client()
        bucket = client.bucket(bucket_name)
        out = []
        for f in files:
            name = f"{prefix}/{f.name}" if prefix else f.name
            bucket.blob(name).upload_from_filename(str(f), checksum="crc32c")
            out.append(f"gs://{bucket_name}/{name}")
        return out
    except (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.TooManyRequests, ConnectionError) as exc:
        raise StorageUnavailable(f"could not upload to {uri}: {exc}") from exc
    except DefaultCredentialsError as exc:
        raise StorageUnavailable(f"no Google Cloud credentials to upload to {uri}: {exc}") from exc
