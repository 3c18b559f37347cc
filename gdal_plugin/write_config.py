# SPDX-License-Identifier: Apache-2.0
"""Write gdal_TEC.json next to the installed plugin: which Python/libpython/package the plugin uses.

Run with the project's interpreter (the venv's python): ``python write_config.py PLUGINDIR --repo REPO``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("plugindir")
    ap.add_argument("--repo", help="source checkout to put on sys.path (when not pip-installed)")
    args = ap.parse_args()
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    libpython = os.path.join(libdir, soname) if libdir and soname else ""
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and os.path.exists(libpython)):
        print(f"warning: {sys.executable} has no shared libpython ({libpython!r}); the plugin can "
              "only use a Python already running in the host process", file=sys.stderr)
    pythonpath = []
    if args.repo:
        pythonpath.append(os.path.abspath(args.repo))
    # For hosts with their own interpreter (QGIS): the venv's packages.
    pythonpath.append(sysconfig.get_paths()["purelib"])
    cfg = {
        "python": os.path.join(sys.prefix, "bin", "python"),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "libpython": libpython,
        "pythonpath": pythonpath,
        "module": "terracodec.gdal_bridge",
    }
    os.makedirs(args.plugindir, exist_ok=True)
    out = os.path.join(args.plugindir, "gdal_TEC.json")
    with open(out, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
