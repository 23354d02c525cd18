"""`vws image add|list|show|rm`: the catalogue of virtual-machine images."""
from __future__ import annotations

import getpass
import os

import grpc

from . import commands
from . import output as out
from .connection import TIMEOUT, CliError, Connection, describe_rpc_error, exit_code, image_name, reaching
from ..common import names
from ..v1 import image_pb2, repository_pb2

IMG = image_pb2.Image
IMG_FILE = image_pb2.ImageFile
IMAGE_FLAGS = {IMG_FILE.ROLE_KERNEL: "kernel", IMG_FILE.ROLE_INITRD: "initrd", IMG_FILE.ROLE_DISK: "disk"}


def boot_name(value: int) -> str:
    return out.enum_name(IMG.Boot, value, "BOOT_").lower()


def show_image(image) -> None:
    rows = [
        ("name", image.name), ("boot", boot_name(image.boot)), ("owner", image.owner or "-"),
        ("visibility", out.enum_name(IMG.Visibility, image.visibility, "VISIBILITY_").lower()),
        ("guest agent", "yes" if image.guest_agent else "no"),
        ("kernel args", image.kernel_args or "-"), ("description", image.description or "-"),
        ("size", out.size(image.size_bytes)), ("created", out.when(image.create_time)),
    ]
    for f in image.files:
        role = out.enum_name(IMG_FILE.Role, f.role, "ROLE_").lower()
        rows.append((role, f"{out.size(f.size_bytes)} {out.enum_name(IMG_FILE.Format, f.format, 'FORMAT_').lower()}"))
        rows += [("  digest", f.digest), ("  stored at", f.location)]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v}")


def image_flags_in(text: str, flags: dict[int, str]) -> str:
    """A field path of CreateImage in an error, as the flag that gave it."""
    for i, flag in flags.items():
        for field, shown in ((f"image.files[{i}].location", f"--{flag}"),
                             (f"image.files[{i}].digest", f"--{flag}-digest"),
                             (f"image.files[{i}].format", "--format"),
                             (f"image.files[{i}].role", f"--{flag}")):
            text = text.replace(field, shown)
    for field, shown in (("image_id", "NAME"), ("image.kernel_args", "--kernel-args"),
                         ("image.description", "--description")):
        text = text.replace(field, shown)
    return text


def cmd_image_add(args) -> int:
    conn = Connection(args)
    image_id = names.parse_image_name(args.name, "NAME")
    if bool(args.kernel) == bool(args.disk):
        raise CliError("give --kernel FILE (and optionally --initrd FILE) for an image booted by the hypervisor, "
                       "or --disk FILE for one that boots from its disk; not both", 2)
    for flag, value, needs, given in (
            ("--initrd", args.initrd, "--kernel", args.kernel),
            ("--kernel-args", args.kernel_args, "--kernel", args.kernel),
            ("--kernel-digest", args.kernel_digest, "--kernel", args.kernel),
            ("--initrd-digest", args.initrd_digest, "--initrd", args.initrd),
            ("--format", args.format, "--disk", args.disk),
            ("--disk-digest", args.disk_digest, "--disk", args.disk)):
        if value and not given:
            raise CliError(f"{flag} goes with {needs}", 2)
    image = image_pb2.Image(
        boot=IMG.BOOT_KERNEL if args.kernel else IMG.BOOT_DISK,
        visibility=IMG.VISIBILITY_PUBLIC if args.public else IMG.VISIBILITY_PRIVATE,
        kernel_args=args.kernel_args or "", description=args.description or "", guest_agent=not args.no_agent)
    flags: dict[int, str] = {}
    for role, path, digest in ((IMG_FILE.ROLE_KERNEL, args.kernel, args.kernel_digest),
                               (IMG_FILE.ROLE_INITRD, args.initrd, args.initrd_digest),
                               (IMG_FILE.ROLE_DISK, args.disk, args.disk_digest)):
        if not path:
            continue
        fmt = IMG_FILE.FORMAT_UNSPECIFIED
        if role == IMG_FILE.ROLE_DISK and args.format:
            fmt = IMG_FILE.FORMAT_QCOW2 if args.format == "qcow2" else IMG_FILE.FORMAT_RAW
        flags[len(image.files)] = IMAGE_FLAGS[role]
        # The repository reads the file itself: it needs the whole path.
        image.files.add(role=role, format=fmt, digest=digest or "", location=os.path.abspath(path))
    repository = conn.repository()
    try:
        with reaching(conn.unreachable("repository", conn.repository_address())):
            r = repository.CreateImage(repository_pb2.CreateImageRequest(
                image_id=image_id, image=image, owner=getpass.getuser()), timeout=args.timeout)
    except grpc.RpcError as exc:
        raise CliError(image_flags_in(describe_rpc_error(exc), flags), exit_code(exc)) from None
    out.emit(args, r.image, lambda i: print(f"{i.name}  {boot_name(i.boot)}  {out.size(i.size_bytes)}  "
                                        f"{out.enum_name(IMG.Visibility, i.visibility, 'VISIBILITY_').lower()}"))
    return 0


def cmd_image_list(args) -> int:
    conn = Connection(args)
    req = repository_pb2.ListImagesRequest(owner="" if args.all else conn.identity(), page_size=1000)
    found = []
    while True:
        r = conn.repository().ListImages(req, timeout=TIMEOUT)
        found.extend(r.images)
        if not r.next_page_token:
            break
        req.page_token = r.next_page_token
    if args.output == "json":
        out.print_json({"images": [out.to_dict(i) for i in found]})
        return 0
    rows = [[i.name.split("/", 1)[1], boot_name(i.boot), out.size(i.size_bytes),
             out.enum_name(IMG.Visibility, i.visibility, "VISIBILITY_").lower(), i.owner or "-",
             "yes" if i.guest_agent else "no", out.when(i.create_time), i.description or "-"] for i in found]
    print(out.table(rows, ["NAME", "BOOT", "SIZE", "VISIBILITY", "OWNER", "AGENT", "CREATED", "DESCRIPTION"]))
    return 0


def cmd_image_show(args) -> int:
    conn = Connection(args)
    image = conn.repository().GetImage(repository_pb2.GetImageRequest(name=image_name(args.name)),
                                       timeout=TIMEOUT).image
    out.emit(args, image, show_image)
    return 0


def cmd_image_rm(args) -> int:
    conn = Connection(args)
    name = image_name(args.name)
    conn.repository().DeleteImage(repository_pb2.DeleteImageRequest(name=name), timeout=TIMEOUT)
    print(f"{name} removed")
    return 0


def add_parsers(command) -> None:
    image_command = commands.group(command, "image", "the virtual-machine images: vws image add|list|show|rm",
                                   "image_command", "IMAGE_COMMAND")
    ic = image_command("add", cmd_image_add, "add an image to the catalogue: the repository copies its files "
                       "(from paths on its host) into its image store and records their digests", read=True)
    ic.add_argument("name", metavar="NAME", help="its id (lower case letters, digits, '-'), e.g. busybox")
    ic.add_argument("--kernel", metavar="FILE", help="a kernel the hypervisor loads directly")
    ic.add_argument("--initrd", metavar="FILE", help="with --kernel: its initial RAM disk")
    ic.add_argument("--kernel-args", metavar="ARGS", help="with --kernel: kernel command-line arguments, "
                                                          "e.g. 'console=ttyS0'")
    ic.add_argument("--disk", metavar="FILE", help="instead of --kernel: a disk that boots by itself")
    ic.add_argument("--format", choices=["raw", "qcow2"], help="with --disk: its format (default: what the file says)")
    for role in ("kernel", "initrd", "disk"):
        ic.add_argument(f"--{role}-digest", metavar="DIGEST",
                        help=f"refuse the {role} unless its digest is this (blake3-4m:...)")
    ic.add_argument("--public", action="store_true", help="everyone may boot it (default: only you)")
    ic.add_argument("--description", metavar="TEXT")
    ic.add_argument("--no-agent", action="store_true",
                    help="the guest runs no QEMU guest agent (vws exec cannot run programs in it)")
    ic.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the copy (default 600)")
    ic = image_command("list", cmd_image_list, "the images you may boot: public ones and your own", read=True)
    ic.add_argument("--all", action="store_true", help="every image, whoever's")
    image_command("show", cmd_image_show, "show one image: its files, digests and where they are kept",
                  read=True).add_argument("name", metavar="NAME")
    image_command("rm", cmd_image_rm, "remove an image (workspaces booted from it keep running)").add_argument(
        "name", metavar="NAME")
