"""cluster/storage.py: URIs through real pyarrow filesystems, and the node-local-path check."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from raydistill.cluster import storage


def _tree(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def folder(tmp_path):
    src = tmp_path / "student"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    return src


def test_scheme_and_join():
    assert storage.scheme("s3://b/x") == "s3" and storage.is_remote("gs://b/x")
    assert not storage.is_remote("/mnt/nfs/runs") and not storage.is_remote("file:///tmp/x")
    assert storage.join("s3://b/runs/", "x", "/y") == "s3://b/runs/x/y"
    assert storage.join("/data/runs", "x") == "/data/runs/x"
    assert storage.train_storage_path("gs://b/runs/sst2") == "gs://b/runs/sst2/ray_train"
    assert storage.train_storage_path("runs/x").endswith("/runs/x/ray_train")
    assert storage.train_storage_path("runs/x").startswith("/")


@pytest.mark.parametrize("kind", ["file_uri", "subtree", "mock"])
def test_round_trip_small_files_and_folders(kind, tmp_path, folder):
    if kind == "file_uri":
        base, fs = f"file://{tmp_path / 'bucket'}", None
    elif kind == "subtree":
        (tmp_path / "bucket").mkdir()
        base, fs = "runs", pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    else:  # pyarrow's in-memory filesystem (what an object store looks like to pyarrow)
        base, fs = "bucket", pafs.FileSystem.from_uri("mock:///")[0]

    report = storage.join(base, "sst2", "report.json") if not fs else f"{base}/sst2/report.json"
    storage.write_text(report, '{"ok": true}', fs)
    assert storage.read_text(report, fs) == '{"ok": true}'
    storage.write_text(report, '{"ok": false}', fs)  # overwrite in place
    assert storage.read_text(report, fs) == '{"ok": false}'
    assert storage.exists(report, fs)
    with pytest.raises(FileNotFoundError, match="no file"):
        storage.read_text(report + ".missing", fs)

    dest = f"{base}/students/kd-0"
    storage.upload_dir(folder, dest, fs)
    assert storage.is_complete(dest, fs)
    back = storage.download_dir(dest, tmp_path / "back", fs)
    assert _tree(back) == {**_tree(folder), storage.COMPLETE_MARKER: b""}
    # Temp files of the atomic writes are gone.
    listing = fs or storage.resolve(base)[0]
    root = base if fs else storage.resolve(base)[1]
    names = [i.path for i in listing.get_file_info(pafs.FileSelector(root, recursive=True))]
    assert not [n for n in names if ".tmp-" in n], names


def test_download_refuses_incomplete_folder(tmp_path, folder):
    dest = f"file://{tmp_path / 'b' / 'half'}"
    storage.upload_dir(folder, dest)
    (tmp_path / "b" / "half" / storage.COMPLETE_MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        storage.download_dir(dest, tmp_path / "x")


def test_ensure_local_copies_once_and_passes_paths_through(tmp_path, folder):
    assert storage.ensure_local(str(folder), tmp_path / "cache") == str(folder)
    mock, _ = pafs.FileSystem.from_uri("mock:///")
    storage.upload_dir(folder, "bkt/teacher", mock)
    a = storage.ensure_local("bkt/teacher", tmp_path / "cache", mock)
    assert (
        _tree(folder).items() <= _tree(tmp_path / "cache" / "remote" / a.rsplit("/", 1)[1]).items()
    )
    mock.delete_file("bkt/teacher/config.json")  # the cached copy is reused
    assert storage.ensure_local("bkt/teacher", tmp_path / "cache", mock) == a


def test_bad_uri_names_it():
    with pytest.raises(ValueError, match="nosuchfs://x"):
        storage.resolve("nosuchfs://x/y")


# --------------------------------------------------------------- node-local decision


def _nodes(*ips, dead=()):
    return [
        {"NodeID": f"n{i}", "NodeManagerAddress": ip, "Alive": ip not in dead}
        for i, ip in enumerate(ips)
    ]


MOUNTS = [("/", "overlay"), ("/mnt/shared", "nfs4"), ("/home", "ext4"), ("/mnt/fuse", "fuse.s3fs")]


@pytest.mark.parametrize(
    "path, nodes, warn",
    [
        ("/home/u/runs", _nodes("10.0.0.1"), False),  # one machine
        ("/home/u/runs", _nodes("127.0.0.1", "127.0.0.1"), False),  # two nodes, one host
        ("/home/u/runs", _nodes("10.0.0.1", "10.0.0.2", dead=("10.0.0.2",)), False),
        ("/home/u/runs", _nodes("10.0.0.1", "10.0.0.2"), True),
        ("/tmp/x", _nodes("10.0.0.1", "10.0.0.2"), True),  # on the overlay root
        ("/mnt/shared/runs", _nodes("10.0.0.1", "10.0.0.2"), False),
        ("/mnt/shared", _nodes("10.0.0.1", "10.0.0.2"), False),
        ("/mnt/sharedX/runs", _nodes("10.0.0.1", "10.0.0.2"), True),  # not under the mount
        ("/mnt/fuse/a", _nodes("10.0.0.1", "10.0.0.2"), False),
        ("s3://bkt/runs", _nodes("10.0.0.1", "10.0.0.2"), False),
        ("file:///home/u/runs", _nodes("10.0.0.1", "10.0.0.2"), True),
        (None, _nodes("10.0.0.1", "10.0.0.2"), False),
    ],
)
def test_node_local_problem(path, nodes, warn):
    msg = storage.node_local_problem("out_dir", path, nodes, mounts=MOUNTS, env={})
    assert (msg is not None) == warn, msg
    if warn:
        assert "out_dir=" in msg and "2 machines" in msg and "s3://" in msg


def test_shared_env_silences_and_problems_are_named():
    nodes = _nodes("10.0.0.1", "10.0.0.2")
    paths = {"out_dir": "/home/u/runs", "cache_dir": "/mnt/shared/cache"}
    got = storage.shared_storage_problems(paths, nodes, mounts=MOUNTS, env={})
    assert len(got) == 1 and got[0].startswith("out_dir=/home/u/runs (on ext4 at /home)")
    env = {storage.SHARED_ENV: "1"}
    assert storage.shared_storage_problems(paths, nodes, mounts=MOUNTS, env=env) == []


def test_read_mounts_parses_this_machine():
    mounts = storage.read_mounts()
    assert ("/", mounts[0][1]) in mounts or any(m[0] == "/" for m in mounts)


def test_run_folders_must_be_paths_and_train_storage_takes_uris(tmp_path):
    from raydistill.cluster.runtime import check_storage, train_storage
    from raydistill.config import ConfigError, RunConfig

    cfg = RunConfig(out_dir="s3://bucket/run")
    with pytest.raises(ConfigError, match=r"out_dir=s3://bucket/run.*cluster\.storage_path"):
        check_storage(cfg)
    ok = RunConfig(out_dir=str(tmp_path / "run"))
    assert train_storage(ok) == str(tmp_path / "run" / "ray_train")
    ok.cluster.storage_path = "s3://bucket/ckpt"
    assert train_storage(ok) == "s3://bucket/ckpt"
