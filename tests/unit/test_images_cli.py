"""The CLI's pieces for images and progress: the progress line and bar (drawn only on a
terminal), the translation of CreateImage's field paths into the flags that gave them, and the
new commands' arguments."""
from __future__ import annotations

import io

from vws.cli import images, main, output, workspaces
from vws.v1 import workspace_pb2

MiB = 1 << 20


class Terminal(io.StringIO):
    def isatty(self):
        return True


def progress(done=48 * MiB, total=64 * MiB, rate=8 * MiB, activity="propagating image busybox"):
    return workspace_pb2.Progress(activity=activity, done_bytes=done, total_bytes=total, bytes_per_second=rate)


def test_progress_line():
    assert output.progress_line(progress()) == "propagating image busybox: 75% (48M of 64M, 8M/s)"
    assert output.progress_line(progress(done=0, rate=0)) == "propagating image busybox: 0% (0B of 64M)"
    assert output.progress_line(progress(total=0, rate=0)) == "propagating image busybox: 48M"
    assert output.progress_line(progress(done=0, total=0, rate=0)) == "propagating image busybox"


def test_the_bar_is_drawn_in_place_on_a_terminal_and_taken_away():
    term = Terminal()
    bar = output.ProgressBar(term)
    bar.show(progress(done=16 * MiB))
    bar.show(progress(done=32 * MiB))
    drawn = term.getvalue()
    assert drawn.count("\r") == 2 and "\n" not in drawn and " 50%  32M/64M  8M/s" in drawn and "[" in drawn
    bar.show(None)
    assert term.getvalue().endswith("\r\033[K") and not bar.drawn
    bar.show(None)  # nothing drawn: nothing to take away
    assert term.getvalue().count("\r") == 3
    line = bar.render(progress(), 70)
    assert len(line) <= 70 and line.startswith("propagating image busybox [") and line.endswith("  2s left")
    assert bar.render(progress(), 20) == "propagating image b"[:19]  # too narrow for a bar: cut


def test_nothing_is_written_when_not_a_terminal():
    pipe = io.StringIO()
    bar = output.ProgressBar(pipe)
    bar.show(progress())
    bar.show(None)
    assert pipe.getvalue() == ""


def test_create_image_fields_are_shown_as_flags():
    flags = {0: "kernel", 1: "initrd"}
    text = ("INVALID_ARGUMENT: image.files[0].digest: /k has digest a, not b; "
            "image.files[1].location: /i does not exist; image_id: 'X' is not an image name")
    assert images.image_flags_in(text, flags) == (
        "INVALID_ARGUMENT: --kernel-digest: /k has digest a, not b; --initrd: /i does not exist; "
        "NAME: 'X' is not an image name")
    assert images.image_flags_in("image.files[0].format: is qcow2", {0: "disk"}) == "--format: is qcow2"


def test_new_commands_parse():
    p = main.build_parser()
    a = p.parse_args(["image", "add", "busybox", "--kernel", "k", "--initrd", "i", "--kernel-args", "console=ttyS0",
                      "--public", "--kernel-digest", "blake3-4m:x", "-o", "json"])
    assert a.fn is images.cmd_image_add and a.public and a.kernel_digest == "blake3-4m:x" and a.output == "json"
    assert p.parse_args(["image", "list", "--all"]).fn is images.cmd_image_list
    assert p.parse_args(["image", "show", "busybox", "-o", "json"]).fn is images.cmd_image_show
    assert p.parse_args(["image", "rm", "busybox"]).fn is images.cmd_image_rm
    assert p.parse_args(["stop", "w1234", "--force"]).force is True
    assert p.parse_args(["stop", "w1234"]).force is False
    assert p.parse_args(["suspend", "w1234"]).fn is workspaces.cmd_suspend
    assert p.parse_args(["reboot", "w1234", "-o", "json"]).fn is workspaces.cmd_reboot
    # --image alone means a virtual machine; --kind still decides when given.
    assert p.parse_args(["create", "--image", "busybox"]).kind is None


def test_image_add_needs_one_boot_source_before_calling_anyone(capsys):
    assert main.main(["--endpoint", "127.0.0.1:1", "image", "add", "busybox"]) == 2
    assert "--kernel FILE" in capsys.readouterr().err
    assert main.main(["--endpoint", "127.0.0.1:1", "image", "add", "busybox", "--disk", "d", "--kernel-args", "x"]) == 2
    assert "--kernel-args goes with --kernel" in capsys.readouterr().err
    assert main.main(["--endpoint", "127.0.0.1:1", "image", "add", "Not_An_Id", "--disk", "d"]) == 2
    assert "NAME" in capsys.readouterr().err
