"""Fetches the admin UI's third-party scripts (htmx, Chart.js) from the npm registry at build time.

They are not committed: `pip install .` and `pip install -e .` download each pinned tarball once,
check it against the registry's sha512 integrity, and extract the one file the UI serves into
`src/meterway/ui/static/vendor/` (ignored by git). A file already there with the right digest is
kept, so a rebuild needs no network. Without the registry the install goes on with a warning (the
UI then says it has no charts), unless METERWAY_REQUIRE_UI_ASSETS=1. Standard library only: this
runs before any dependency.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

REGISTRY = "https://registry.npmjs.org"
VENDOR = Path(__file__).parent / "src" / "meterway" / "ui" / "static" / "vendor"

# (package, version, sha512 integrity of the tarball, file inside it, name served, its license file)
ASSETS = (
    (
        "htmx.org",
        "2.0.8",
        "sha512-fm297iru0iWsNJlBrjvtN7V9zjaxd+69Oqjh4F/Vq9Wwi2kFisLcrLCiv5oBX0KLfOX/zG8AUo9ROMU5XUB44Q==",
        "package/dist/htmx.min.js",
        "htmx.min.js",
        "package/LICENSE",
    ),
    (
        "chart.js",
        "4.5.1",
        "sha512-GIjfiT9dbmHRiYi6Nl2yFCq7kkwdkp1W/lp2J99rX0yo9tgJGn3lKQATztIjb5tVtevcBtIdICNWqlq5+E8/Pw==",
        "package/dist/chart.umd.min.js",
        "chart.umd.min.js",
        "package/LICENSE.md",
    ),
)


class AssetError(RuntimeError):
    """A UI asset could not be fetched or did not match its pinned digest."""


def fetch_assets() -> None:
    VENDOR.mkdir(parents=True, exist_ok=True)
    for package, version, integrity, member, served, license_member in ASSETS:
        stamp = VENDOR / f"{served}.integrity"
        if (VENDOR / served).exists() and stamp.exists() and stamp.read_text() == integrity:
            continue
        url = f"{REGISTRY}/{package}/-/{package.rsplit('/', 1)[-1]}-{version}.tgz"
        try:
            with urllib.request.urlopen(url, timeout=60) as reply:
                tarball = reply.read()
        except OSError as e:
            raise AssetError(f"could not download {package}@{version} for the admin UI: {e}") from None
        got = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
        if got != integrity:
            raise AssetError(f"{package}@{version}: tarball digest {got} is not the pinned {integrity}")
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            for name, target in ((member, served), (license_member, f"{served}.LICENSE")):
                extracted = archive.extractfile(name)
                if extracted is None:
                    raise AssetError(f"{package}@{version} has no {name}")
                (VENDOR / target).write_bytes(extracted.read())
        stamp.write_text(integrity)


class BuildWithAssets(build_py):
    def run(self) -> None:
        try:
            fetch_assets()
        except AssetError as e:
            # A mirror of PyPI alone (no npm registry) still installs the gateway; the UI then works
            # without charts and in-place updates, and says so. CI sets METERWAY_REQUIRE_UI_ASSETS=1.
            if os.environ.get("METERWAY_REQUIRE_UI_ASSETS") == "1":
                raise
            sys.stderr.write(f"warning: {e}; the admin UI will have no charts\n")
        super().run()


setup(cmdclass={"build_py": BuildWithAssets})
