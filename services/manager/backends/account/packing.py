"""Packing for migration: the home moves as one tar archive (sparse files stay sparse, owners by
number are remapped to the new account on arrival). Running processes do not move."""
from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

from ....common import errors

HOME_ARCHIVE = "home.tar"


def archive_home(pw: pwd.struct_passwd, archive: Path) -> None:
    """The account's home into archive; nothing left there on failure."""
    try:
        r = subprocess.run(["tar", "--create", "--sparse", "--numeric-owner", "--xattrs", "--acls",
                            "--file", str(archive), "--directory", pw.pw_dir, "."],
                           capture_output=True, text=True)
        if r.returncode not in (0, 1):  # 1: a file changed while read (only outside the freezer)
            raise errors.BackendError(f"the home of {pw.pw_name} could not be archived: "
                                      f"{r.stderr.strip()[-300:]}")
    except BaseException:
        archive.unlink(missing_ok=True)
        raise


def extract_home(pw: pwd.struct_passwd, archive: Path) -> None:
    """archive into the account's home, everything in it then owned by the account."""
    r = subprocess.run(["tar", "--extract", "--sparse", "--xattrs", "--acls", "--no-same-owner",
                        "--file", str(archive), "--directory", pw.pw_dir],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise errors.BackendError(f"the home archive could not be unpacked into {pw.pw_dir}: "
                                  f"{r.stderr.strip()[-300:]}")
    subprocess.run(["chown", "-R", "--no-dereference", f"{pw.pw_uid}:{pw.pw_gid}", pw.pw_dir], check=True,
                   capture_output=True)
