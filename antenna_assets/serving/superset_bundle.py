"""The dashboards as code: `superset_assets/` (Superset's YAML export format) imported through
Superset's REST API.

The bundle goes to `/api/v1/assets/import/`, which overwrites by UUID: importing it twice leaves one
copy of each database, dataset, chart and dashboard. The database connection in the repository names
no host and no password; the stack's read-only role URL replaces it in the in-memory bundle and its
password is passed in the request, so it never lands in a file.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import requests
import yaml

from antenna_assets.errors import StackError

ASSETS = Path(__file__).resolve().parent / "superset_assets"
DATABASE_FILE = "databases/antenna_serving.yaml"
DASHBOARD_SLUG = "antenna-usage"
MASKED = "XXXXXXXXXX"  # Superset's placeholder for a password given at import


def load_assets(root: Path = ASSETS) -> dict[str, dict]:
    """Every YAML file of the bundle by its path in the bundle; a file that does not parse is named."""
    configs = {}
    for path in sorted(root.rglob("*.yaml")):
        name = path.relative_to(root).as_posix()
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise StackError(f"dashboard file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(config, dict) or ("uuid" not in config and name != "metadata.yaml"):
            raise StackError(f"dashboard file {path} is not a Superset export file (no uuid)")
        configs[name] = config
    return configs


def bundle_zip(configs: dict[str, dict], reader_url: str) -> bytes:
    """The import ZIP, with the database connection pointed at `reader_url` (password masked)."""
    reader = urlparse(reader_url)
    database = dict(configs[DATABASE_FILE])
    netloc = f"{reader.username}:{MASKED}@{reader.hostname}:{reader.port or 5432}"
    database["sqlalchemy_uri"] = f"postgresql+psycopg2://{netloc}{reader.path}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, config in {**configs, DATABASE_FILE: database}.items():
            bundle.writestr(f"antenna_usage/{name}", yaml.safe_dump(config, sort_keys=False))
    return buffer.getvalue()


class SupersetClient:
    """A logged-in session on Superset's REST API (JWT plus the CSRF token its writes need)."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 60):
        self.url = url
        self.timeout = timeout
        self.session = requests.Session()
        response = self.session.post(f"{url}/api/v1/security/login", timeout=timeout, json={
            "username": username, "password": password, "provider": "db", "refresh": False})
        if response.status_code != 200:
            raise StackError(f"cannot log in to Superset at {url} as {username}: HTTP {response.status_code}")
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        csrf = self.get("/api/v1/security/csrf_token/")["result"]
        self.session.headers.update({"X-CSRFToken": csrf, "Referer": url})

    def get(self, path: str, **params) -> dict:
        response = self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout)
        response.raise_for_status()
        return response.json()

    def import_assets(self, bundle: bytes, passwords: dict[str, str]) -> None:
        response = self.session.post(
            f"{self.url}/api/v1/assets/import/", timeout=self.timeout,
            files={"bundle": ("antenna_usage.zip", bundle, "application/zip")},
            data={"passwords": json.dumps(passwords)})
        if response.status_code != 200:
            raise StackError(f"Superset refused the dashboards in {ASSETS}: {_import_error(response)}")


def _import_error(response) -> str:
    """The failing files Superset names in its error (the bundle's file names), else its message."""
    try:
        errors = response.json().get("errors") or [response.json()]
    except ValueError:
        return f"HTTP {response.status_code}"
    parts = []
    for error in errors:
        extra = {k: v for k, v in (error.get("extra") or {}).items() if k.endswith(".yaml")}
        parts.append("; ".join(f"{name}: {detail}" for name, detail in extra.items()) or error.get("message", ""))
    return f"HTTP {response.status_code}: {' | '.join(parts)}"

