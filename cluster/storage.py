"""Storage that every node can reach: URIs (s3://, gs://, file://, NFS paths) via pyarrow.fs.

On one machine every actor sees the driver's disk; on a cluster a folder written by a Train
worker or read by a vLLM replica on another node must live on storage they all share. This
module is the one place that turns `out_dir` / `cache_dir` / Train `storage_path` strings
into a `(pyarrow filesystem, path)` pair, moves small files and folders through it, and
decides up front whether a plain path is node-local on a multi-node cluster.

Small files are written atomically (readers see the old or the new content, never half):
on local/NFS paths through a temp file and a rename; on object stores a single PUT already
is. Folders are marked complete with a `_RAYDISTILL_COMPLETE` file written last, so a
reader never takes a half-uploaded folder for a finished one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPLETE_MARKER = "_RAYDISTILL_COMPLETE"
# Schemes that are a node's own disk, not shared storage.
LOCAL_SCHEMES = ("", "file", "local")
# Filesystem types (as in /proc/mounts) that other machines can mount too.
NETWORK_FS_TYPES = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "ceph",
    "cephfs",
    "glusterfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.mountpoint-s3",
    "fuse.juicefs",
    "fuse.ceph",
    "fuse.glusterfs",
    "efs",
    "9p",
)
# Set to 1 when a path is shared although its mount type does not say so (e.g. a
# hostPath every pod mounts from the same NAS).
SHARED_ENV = "RAYDISTILL_SHARED_STORAGE"


def scheme(uri: str | os.PathLike) -> str:
    """The URI scheme ('' for a plain path)."""
    s = str(uri)
    head, sep, _ = s.partition("://")
    return head.lower() if sep and head.isidentifier() else ""


def is_remote(uri: str | os.PathLike) -> bool:
    """True for object stores and other non-local filesystems (s3://, gs://, hdfs://…)."""
    return scheme(uri) not in LOCAL_SCHEMES


def resolve(uri: str | os.PathLike, filesystem: Any = None) -> tuple[Any, str]:
    """`uri` → (pyarrow FileSystem, path inside it).

    A plain path is made absolute (`~` expanded) on the local filesystem. A given
    `filesystem` is used as is (e.g. a SubTreeFileSystem or one with credentials).
    """
    import pyarrow.fs as pafs

    s = str(uri)
    if filesystem is not None:
        return filesystem, s
    sch = scheme(s)
    if sch in ("", "local"):
        p = s.split("://", 1)[1] if sch == "local" else s
        return pafs.LocalFileSystem(), str(Path(p).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(s)
    except Exception as e:
        raise ValueError(
            f"cannot open storage URI {s!r}: {type(e).__name__}: {e}. Supported: plain or "
            "NFS paths, file://, s3:// (credentials from the AWS environment), gs:// "
            "(Google application credentials), hdfs://."
        ) from None


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a path or URI (URIs keep their scheme and '/' separators)."""
    b = str(base)
    if scheme(b):
        return "/".join([b.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(b).expanduser().joinpath(*parts))


def train_storage_path(out_dir: str | os.PathLike, sub: str = "ray_train") -> str:
    """Ray Train's `storage_path` under `out_dir`: a URI stays a URI, a path is absolute.

    (`Path("s3://b/x").resolve()` would turn a URI into a bogus local path.)
    """
    if is_remote(out_dir):
        return join(out_dir, sub)
    fs, p = resolve(out_dir)
    return str(Path(p) / sub)


# ---------------------------------------------------------------------- small files


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""


def write_bytes(uri: str | os.PathLike, data: bytes, filesystem: Any = None) -> None:
    """Write a small file atomically (temp file + rename on local/NFS; one PUT elsewhere)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri, filesystem)
    parent = _parent(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem) or filesystem is not None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        try:
            fs.move(tmp, path)
        except Exception:
            fs.delete_file(tmp)
            raise
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def write_text(uri: str | os.PathLike, text: str, filesystem: Any = None) -> None:
    write_bytes(uri, text.encode("utf-8"), filesystem)


def read_bytes(uri: str | os.PathLike, filesystem: Any = None) -> bytes:
    fs, path = resolve(uri, filesystem)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {uri}") from None


def read_text(uri: str | os.PathLike, filesystem: Any = None) -> str:
    return read_bytes(uri, filesystem).decode("utf-8")


def exists(uri: str | os.PathLike, filesystem: Any = None) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri, filesystem)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


# ------------------------------------------------------------------------- folders


def upload_dir(
    local_dir: str | os.PathLike, dest: str | os.PathLike, filesystem: Any = None
) -> str:
    """Copy a local folder to `dest` (replacing it), then mark it complete. Returns dest."""
    import pyarrow.fs as pafs

    src = Path(local_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"cannot upload {src}: not a folder")
    fs, path = resolve(dest, filesystem)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(
        str(src.absolute()),
        path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )
    # Written last: its presence means every file above is in place.
    with fs.open_output_stream(f"{path.rstrip('/')}/{COMPLETE_MARKER}") as f:
        f.write(b"")
    return str(dest)


def is_complete(uri: str | os.PathLike, filesystem: Any = None) -> bool:
    """True when the folder at `uri` was fully written by `upload_dir`."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri, filesystem)
    marker = f"{path.rstrip('/')}/{COMPLETE_MARKER}"
    return fs.get_file_info(marker).type == pafs.FileType.File


def download_dir(
    src: str | os.PathLike, local_dir: str | os.PathLike, filesystem: Any = None
) -> Path:
    """Copy a folder from `src` into `local_dir` (replaced atomically by a rename)."""
    import pyarrow.fs as pafs

    fs, path = resolve(src, filesystem)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no folder at {src}")
    if not is_complete(src, filesystem):
        raise FileNotFoundError(
            f"folder {src} is incomplete (no {COMPLETE_MARKER}): upload failed or still running"
        )
    dest = Path(local_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    pafs.copy_files(
        path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def ensure_local(
    src: str | os.PathLike, cache_root: str | os.PathLike, filesystem: Any = None
) -> str:
    """A local path for folder `src`: itself if it is a path, else a node-local copy.

    Actors call this on their own node; the copy is cached by the URI's hash and reused.
    """
    if filesystem is None and not is_remote(src):
        return str(resolve(src)[1])
    key = hashlib.sha256(str(src).encode()).hexdigest()[:16]
    name = str(src).rstrip("/").rsplit("/", 1)[-1] or "root"
    dest = Path(cache_root).expanduser() / "remote" / f"{name}-{key}"
    if not (dest / COMPLETE_MARKER).exists():
        download_dir(src, dest, filesystem)
    return str(dest)


# ------------------------------------------------------------- shared-storage check


def _mount_of(path: str, mounts: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The (mount point, fs type) holding `path`: the longest matching mount point."""
    best = None
    for point, fstype in mounts:
        p = point.rstrip("/") or "/"
        under = p == "/" or path == p or path.startswith(p + "/")
        if under and (best is None or len(p) > len(best[0])):
            best = (p, fstype)
    return best


def read_mounts(proc_mounts: str = "/proc/mounts") -> list[tuple[str, str]]:
    """(mount point, fs type) of this machine's mounts; [] where /proc/mounts is missing."""
    try:
        lines = Path(proc_mounts).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[1].replace("\\040", " "), parts[2]))
    return out


def node_hosts(nodes: Iterable[dict[str, Any]]) -> set[str]:
    """Distinct machines among the alive Ray nodes (nodes on one IP share one disk)."""
    return {
        str(n.get("NodeManagerAddress") or n.get("NodeID"))
        for n in nodes
        if n.get("Alive", n.get("alive", True))
    }


def node_local_problem(
    what: str,
    path: str | os.PathLike | None,
    nodes: Iterable[dict[str, Any]],
    *,
    mounts: Iterable[tuple[str, str]] | None = None,
    env: dict[str, str] | None = None,
) -> str | None:
    """A warning when `path` is on a node's own disk while Ray spans several machines.

    `nodes` is `ray.nodes()`; `mounts` (default: this machine's /proc/mounts) decides
    whether a plain path is a network mount. None when the path is fine.
    """
    if path is None:
        return None
    hosts = node_hosts(nodes)
    if len(hosts) <= 1:
        return None
    if is_remote(path):
        return None
    env = os.environ if env is None else env
    if str(env.get(SHARED_ENV, "")).lower() in ("1", "true", "yes"):
        return None
    local = resolve(path)[1]
    mount = _mount_of(local, read_mounts() if mounts is None else mounts)
    if mount is not None and (
        mount[1] in NETWORK_FS_TYPES or mount[1].split(".")[0] in ("nfs", "nfs4")
    ):
        return None
    on = f" (on {mount[1]} at {mount[0]})" if mount else ""
    return (
        f"{what}={path}{on} is a node-local path, but the Ray cluster spans {len(hosts)} "
        "machines: checkpoints written by Train workers and models read by the teacher "
        "pool on other nodes will be missing there. Use storage every node mounts (NFS, "
        "EFS, a ReadWriteMany PVC) or a URI (s3://…, gs://…); set "
        f"{SHARED_ENV}=1 if this path is shared after all."
    )


def shared_storage_problems(
    paths: dict[str, str | os.PathLike | None],
    nodes: Iterable[dict[str, Any]],
    *,
    mounts: Iterable[tuple[str, str]] | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """`node_local_problem` for each named path (e.g. {"out_dir": …, "cache_dir": …})."""
    nodes = list(nodes)
    mounts = read_mounts() if mounts is None else list(mounts)
    out = []
    for what, p in paths.items():
        msg = node_local_problem(what, p, nodes, mounts=mounts, env=env)
        if msg:
            out.append(msg)
    return out
