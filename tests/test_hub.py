"""hub: download with resume and checksum, safe unpacking, class-folder mapping, registry, pack.

A real HTTP server on 127.0.0.1 (started per test, with Range support and an option
to drop the connection midway) stands in for Hugging Face / Google Drive.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

import hub
from common.cli.errors import UserError, run_cli
from common.data.datasets import get_dataset
from common.data.imagefolder import ImageFolder, check_same_classes, find_classes

NETTE = get_dataset("imagenet-nette").wnids()


# --------------------------------------------------------------------------- helpers

def png_bytes(seed: int) -> bytes:
    img = Image.new("RGB", (8, 8), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def release_files(folders: list[str], per_class: int = 2) -> dict[str, bytes]:
    """``{folder/file: bytes}`` like a released set (SRe2L names its files classNNN_idNNN)."""
    return {f"{c}/class{i:03d}_id{j:03d}.png": png_bytes(100 * i + j)
            for i, c in enumerate(folders) for j in range(per_class)}


def make_zip(files: dict[str, bytes], wrapper: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(wrapper + name, data)
    return buf.getvalue()


def add_tar_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def make_tar(files: dict[str, bytes], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            add_tar_file(tf, name, data)
        if extra:
            extra(tf)
    return buf.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


class Handler(BaseHTTPRequestHandler):
    timeout = 10

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        route = srv.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        data, start = route["data"], 0
        if rng and not route.get("ignore_range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", route.get("type", "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drop = route.get("drop_after")
        if drop is not None and start < drop:
            route["drop_after"] = None               # only the first time
            self.wfile.write(body[:drop - start])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.routes, srv.requests = {}, []
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    guard = threading.Timer(60, srv.shutdown)     # bounded: stops by itself even if a test hangs
    guard.daemon = True
    guard.start()
    yield srv
    guard.cancel()
    srv.shutdown()
    srv.server_close()


def quick(**kw):
    return dict(progress=False, retry_wait=0, timeout=5, **kw)


# --------------------------------------------------------------------------- class layouts

def test_folder_naming():
    assert hub.folder_naming("new012") == ("new000", 12)
    assert hub.folder_naming("00012") == ("00000", 12)
    assert hub.folder_naming("n01440764") == ("wnid", None)
    assert hub.folder_naming("00_circle") == ("other", None)


def test_plan_mapping_index_layouts_follow_the_class_order():
    order = ["a_cat", "b_dog", "c_eel"]
    assert hub.plan_class_mapping(["new002", "new000", "new001"], order) == \
        ("new000", {"new000": "a_cat", "new001": "b_dog", "new002": "c_eel"})
    assert hub.plan_class_mapping(["00001", "00000", "00002"], order)[1] == \
        {"00000": "a_cat", "00001": "b_dog", "00002": "c_eel"}
    # unpadded / differently padded indices are the same classes
    assert hub.plan_class_mapping(["new0", "new1", "new10"] + [f"new{i}" for i in range(2, 10)],
                                  [f"c{i:02d}" for i in range(11)])[1]["new10"] == "c10"
    assert hub.plan_class_mapping(NETTE[::-1], sorted(NETTE)) == ("wnid", {w: w for w in NETTE})
    assert hub.plan_class_mapping(["x", "y"], ["y", "x"]) == ("names", {"x": "x", "y": "y"})
    assert hub.plan_class_mapping(["new000", "cat"], None, keep_names=True)[1] == {"cat": "cat", "new000": "new000"}


@pytest.mark.parametrize("folders, order, message", [
    (["new000", "00001", "new002"], ["a", "b", "c"], r"mixed class-folder naming: 00000: 00001; new000: new000, new0"),
    (["new000", "new001", "new003"], ["a", "b", "c"], r"new003 is index 3, out of range for the 3 classes of VAL$"),
    (["new001", "new002", "new003"], ["a", "b", "c"], r"look 1-based"),
    (["new000", "new002"], ["a", "b", "c"], r"2 class folders but VAL has 3 classes; missing class indices 1"),
    (["new1", "new001"], ["a", "b"], r"ambiguous class folders: new001 and new1 both mean class index 1"),
    (["cat", "dog"], None, r"unknown class-folder layout \(cat, dog\)"),
    (["cat", "dog"], ["a_cat", "b_dog"], r"unknown class-folder layout.*differ from the classes of VAL"),
    (["new000", "new001"], None, r"indices .* no class order .* --classes-from"),
    (NETTE[:9] + ["n09999999"], sorted(NETTE), rf"missing {NETTE[9]}; not in the class order n09999999"),
    ([], ["a"], r"no class folders"),
])
def test_plan_mapping_refuses_ambiguous_layouts(folders, order, message):
    with pytest.raises(UserError, match=message):
        hub.plan_class_mapping(folders, order, "VAL")


def test_strip_wrappers_keeps_a_single_class_folder():
    def names(ms):
        return sorted(m.name for m in ms)
    ms = [hub.Member("wrap", "dir"), hub.Member("wrap/inner/new000/a.png", "file"),
          hub.Member("wrap/inner/new001/b.png", "file"), hub.Member("wrap/inner/new001/l.png", "link",
                                                                    target="wrap/inner/new001/b.png")]
    out, prefix = hub.strip_wrappers(ms)
    assert prefix == "wrap/inner/" and names(out) == ["new000/a.png", "new001/b.png", "new001/l.png"]
    assert out[-1].target == "new001/b.png"
    one_class = [hub.Member("new000/a.png", "file")]
    assert hub.strip_wrappers(one_class)[1] == ""


# --------------------------------------------------------------------------- download

def test_http_fetch_renames_new000_folders_to_the_val_classes(server, tiny_data, tmp_path):
    val_classes = find_classes(tiny_data / "val")
    files = release_files(["new000", "new001", "new002"])
    data = make_zip(files, wrapper="sre2l_tiny_ipc2/")
    server.routes["/set.zip"] = {"data": data}
    out = tmp_path / "fetched"
    m = hub.fetch(server.url("/set.zip"), out, sha256=hashlib.sha256(data).hexdigest(),
                  classes_from=tiny_data / "val", **quick())

    assert find_classes(out) == val_classes
    got = tree(out)
    for name, blob in files.items():                 # every file byte-identical, in its renamed class folder
        cls, fname = name.split("/")
        assert got[f"{val_classes[int(cls[3:])]}/{fname}"] == blob
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["class_mapping"] == {"new000": val_classes[0], "new001": val_classes[1], "new002": val_classes[2]}
    assert saved["sha256_verified"] and saved["ipc"] == 2 and saved["archive_prefix_stripped"] == "sre2l_tiny_ipc2/"
    assert m["num_images"] == 6
    ds = ImageFolder(out)                               # what relabel_eval --val-dir checks
    check_same_classes(val_classes, ds.classes, "val", "fetched set")
    assert ds.count_per_class() == [2, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "fetched"]   # no archive, no temp dirs left


def test_interrupted_download_resumes_with_a_range_request(server, tiny_data, tmp_path):
    data = make_zip(release_files(["new000", "new001", "new002"], per_class=20))
    half = len(data) // 2
    server.routes["/set.zip"] = {"data": data, "drop_after": half}
    out = tmp_path / "fetched"
    with pytest.raises(UserError, match=r"download interrupted .*run the same command again to resume"):
        hub.fetch(server.url("/set.zip"), out, classes_from=tiny_data / "val", retries=0, **quick())
    part = tmp_path / "fetched.download.part"
    assert part.stat().st_size == half and not out.exists()

    hub.fetch(server.url("/set.zip"), out, sha256=hashlib.sha256(data).hexdigest(),
              classes_from=tiny_data / "val", retries=0, **quick())
    assert server.requests == [("/set.zip", None), ("/set.zip", f"bytes={half}-")]
    assert len(list(out.rglob("*.png"))) == 60 and not part.exists()


def test_broken_connection_is_retried_in_the_same_call(server, tiny_data, tmp_path):
    data = make_zip(release_files(["new000", "new001", "new002"], per_class=10))
    server.routes["/set.zip"] = {"data": data, "drop_after": 1000}
    hub.fetch(server.url("/set.zip"), tmp_path / "out", sha256=hashlib.sha256(data).hexdigest(),
              classes_from=tiny_data / "val", retries=2, **quick())
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]


def test_server_ignoring_range_restarts_from_zero(server, tiny_data, tmp_path):
    data = make_zip(release_files(["new000", "new001", "new002"], per_class=10))
    server.routes["/set.zip"] = {"data": data, "drop_after": 700, "ignore_range": True}
    with pytest.raises(UserError, match="interrupted"):
        hub.fetch(server.url("/set.zip"), tmp_path / "out", classes_from=tiny_data / "val", retries=0, **quick())
    hub.fetch(server.url("/set.zip"), tmp_path / "out", sha256=hashlib.sha256(data).hexdigest(),
              classes_from=tiny_data / "val", retries=0, **quick())
    assert server.requests[-1] == ("/set.zip", "bytes=700-")     # asked to resume, got 200, started over
    assert len(list((tmp_path / "out").rglob("*.png"))) == 30


def test_complete_partial_file_is_accepted_on_416(server, tiny_data, tmp_path):
    """A run killed after the last byte but before the rename: the server answers 416 to the resume."""
    data = make_zip(release_files(["new000", "new001", "new002"]))
    server.routes["/set.zip"] = {"data": data}
    (tmp_path / "out.download.part").write_bytes(data)
    (tmp_path / "out.download.json").write_text(json.dumps({"url": server.url("/set.zip"), "length": len(data)}))
    hub.fetch(server.url("/set.zip"), tmp_path / "out", sha256=hashlib.sha256(data).hexdigest(),
              classes_from=tiny_data / "val", **quick())
    assert server.requests == [("/set.zip", f"bytes={len(data)}-")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


def test_wrong_checksum_removes_the_download(server, tiny_data, tmp_path):
    server.routes["/set.zip"] = {"data": make_zip(release_files(["new000", "new001", "new002"]))}
    with pytest.raises(UserError, match=r"sha256 mismatch: expected 0{64}, got [0-9a-f]{64}; the downloaded file "
                                        r"was removed"):
        hub.fetch(server.url("/set.zip"), tmp_path / "out", sha256="0" * 64, classes_from=tiny_data / "val",
                  **quick())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("route, message", [
    ({"data": b"<html>confirm download</html>", "type": "text/html; charset=utf-8"}, "HTML page, not an archive"),
    (None, "HTTP 404"),
    ({"data": b"just some bytes, not an archive"}, "not a .zip or .tar"),
])
def test_bad_downloads_are_clear_errors(server, tmp_path, route, message):
    if route:
        server.routes["/x.zip"] = route
    with pytest.raises(UserError, match=message):
        hub.fetch(server.url("/x.zip"), tmp_path / "out", keep_names=True, **quick())
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- unsafe archives

def _tar_with(extra_name, kind, target=""):
    def extra(tf):
        ti = tarfile.TarInfo(extra_name)
        ti.type, ti.linkname = kind, target
        if kind == tarfile.REGTYPE:
            ti.size = 4
            tf.addfile(ti, io.BytesIO(b"evil"))
        else:
            tf.addfile(ti)
    return make_tar(release_files(["new000", "new001"]), extra), ".tar.gz"


def _zip_with(name, data=b"evil", mode=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in release_files(["new000", "new001"]).items():
            zf.writestr(n, d)
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return buf.getvalue(), ".zip"


@pytest.mark.parametrize("make, message", [
    (lambda: _tar_with("../evil.txt", tarfile.REGTYPE), r"'\.\./evil\.txt' has a '\.\.' component"),
    (lambda: _tar_with("new000/../../evil.txt", tarfile.REGTYPE), r"has a '\.\.' component"),
    (lambda: _tar_with("/tmp/abs_evil.txt", tarfile.REGTYPE), r"has an absolute path"),
    (lambda: _tar_with("new000/link.png", tarfile.SYMTYPE, "../../outside.png"), r"link pointing outside"),
    (lambda: _tar_with("new000/link.png", tarfile.SYMTYPE, "/etc/passwd"), r"link to an absolute path"),
    (lambda: _tar_with("new000/hard.png", tarfile.LNKTYPE, "../outside.png"), r"link pointing outside"),
    (lambda: _tar_with("new000/dev", tarfile.CHRTYPE), r"device file"),
    (lambda: _zip_with("../evil.png"), r"'\.\./evil\.png' has a '\.\.' component"),
    (lambda: _zip_with("..\\evil.png"), r"has a '\.\.' component"),
    (lambda: _zip_with("/abs_evil.png"), r"has an absolute path"),
    (lambda: _zip_with("new000/link.png", b"../../outside.png", stat.S_IFLNK | 0o777), r"link pointing outside"),
])
def test_unsafe_archives_are_refused_and_nothing_is_written(tmp_path, make, message):
    data, suffix = make()
    src = tmp_path / "src"
    src.mkdir()
    archive = src / f"evil{suffix}"
    archive.write_bytes(data)
    (tmp_path / "work").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="refused unsafe archive: .*" + message):
        hub.fetch(str(archive), tmp_path / "work" / "out", keep_names=True, **quick())
    assert snapshot(tmp_path) == before
    assert not Path("/tmp/abs_evil.txt").exists()


def test_links_inside_the_tree_become_copies(tmp_path):
    def extra(tf):
        for name, kind, target in [("new001/sym.png", tarfile.SYMTYPE, "../new000/class000_id000.png"),
                                   ("new001/hard.png", tarfile.LNKTYPE, "new000/class000_id001.png")]:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = kind, target
            tf.addfile(ti)
    files = release_files(["new000", "new001"])
    archive = tmp_path / "set.tar.gz"
    archive.write_bytes(make_tar(files, extra))
    out = tmp_path / "out"
    hub.fetch(str(archive), out, keep_names=True, **quick())
    assert not (out / "new001/sym.png").is_symlink()
    assert (out / "new001/sym.png").read_bytes() == files["new000/class000_id000.png"]
    assert (out / "new001/hard.png").read_bytes() == files["new000/class000_id001.png"]


def test_corrupt_member_leaves_no_output(tmp_path):
    files = release_files(["new000", "new001"])
    files["new000/big.png"] = bytes(range(256)) * 400
    data = bytearray(make_zip(files))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("new000/big.png")
    start = info.header_offset + 30 + len(info.filename) + 20
    data[start:start + 50] = bytes(b ^ 0xFF for b in data[start:start + 50])
    archive = tmp_path / "set.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match="set.zip: corrupt archive"):
        hub.fetch(str(archive), tmp_path / "out", keep_names=True, **quick())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.zip"]       # the half-unpacked temp dir is gone


def test_archive_over_the_size_limit_is_refused_before_writing(tmp_path):
    archive = tmp_path / "bomb.zip"
    files = release_files(["new000", "new001"])
    files["new000/huge.png"] = bytes(4 << 20)          # 4 MiB of zeros: a few KiB compressed
    archive.write_bytes(make_zip(files))
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(UserError, match=r"unpacks to 4\.0 MiB, over --max-size 1\.0 MiB; refused before writing"):
        hub.fetch(str(archive), tmp_path / "out", keep_names=True, max_size=hub.parse_size("1M"), **quick())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]


def test_download_over_the_size_limit_is_refused(server, tmp_path):
    server.routes["/big.zip"] = {"data": bytes(200_000)}
    with pytest.raises(UserError, match="over --max-size"):
        hub.fetch(server.url("/big.zip"), tmp_path / "out", keep_names=True, max_size=100_000, **quick())


def test_copy_refuses_a_stream_longer_than_declared():
    with pytest.raises(UserError, match="more bytes than its header declares"):
        hub._copy_limited(io.BytesIO(b"x" * (3 << 20)), io.BytesIO(), 10, "member")


def test_parse_size():
    assert hub.parse_size("20G") == 20 << 30
    assert hub.parse_size("1.5k") == 1536
    assert hub.parse_size("512MiB") == 512 << 20
    assert hub.parse_size("1000") == 1000


# --------------------------------------------------------------------------- layouts end to end

@pytest.mark.parametrize("files, message", [
    (release_files(["cat", "dog"]), r"unknown class-folder layout \(cat, dog\)"),
    ({"new000/readme.txt": b"x", "new001/notes.txt": b"y"}, r"no image files in class folders"),
    ({"a.png": png_bytes(1), "b.png": png_bytes(2)}, r"images at the top level"),
    ({**release_files(["new000"]), "new001/readme.txt": b"x"}, r"class folder\(s\) without images: new001"),
])
def test_layout_problems_are_one_line_errors(tmp_path, capsys, files, message):
    archive = tmp_path / "set.zip"
    archive.write_bytes(make_zip(files))
    code = run_cli(hub.main, ["fetch", str(archive), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and re.search(message, err[-1]) and err[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_imagenet_subset_releases_map_through_the_dataset_class_list(tmp_path):
    archive = tmp_path / "rded.zip"
    files = release_files([f"{i:05d}" for i in range(10)], per_class=1)
    archive.write_bytes(make_zip(files))
    out = tmp_path / "out"
    m = hub.fetch(str(archive), out, dataset="imagenet-nette", **quick())
    assert m["class_naming"] == "00000" and find_classes(out) == sorted(NETTE)
    assert (out / sorted(NETTE)[3] / "class003_id000.png").read_bytes() == files["00003/class003_id000.png"]

    archive.write_bytes(make_zip(release_files(NETTE, per_class=1)))
    m = hub.fetch(str(archive), out, dataset="imagenet-nette", force=True, **quick())
    assert m["class_naming"] == "wnid" and m["class_mapping"] == "identity"


def test_classes_from_a_teacher_checkpoint(tmp_path, tiny_data, tiny_teacher):
    archive = tmp_path / "set.zip"
    archive.write_bytes(make_zip(release_files(["00002", "00000", "00001"])))
    hub.fetch(str(archive), tmp_path / "out", classes_from=tiny_teacher, **quick())
    assert find_classes(tmp_path / "out") == find_classes(tiny_data / "train")
    assert (tmp_path / "out" / "02_triangle" / "class000_id000.png").read_bytes() == png_bytes(0)


def test_existing_output_needs_force(tmp_path):
    archive = tmp_path / "set.zip"
    archive.write_bytes(make_zip(release_files(["new000", "new001"])))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists; pass --force"):
        hub.fetch(str(archive), tmp_path / "out", keep_names=True, **quick())
    hub.fetch(archive.as_uri(), tmp_path / "out", keep_names=True, force=True, **quick())   # file:// URL
    assert find_classes(tmp_path / "out") == ["new000", "new001"] and not (tmp_path / "out" / "keep.txt").exists()


# --------------------------------------------------------------------------- registry

def test_registry_list_and_fetch_by_name(tmp_path, tiny_data, monkeypatch, capsys):
    archive = tmp_path / "mine.zip"
    archive.write_bytes(make_zip(release_files(["new000", "new001", "new002"])))
    user = tmp_path / "registry.json"
    user.write_text(json.dumps({"sets": [
        {"name": "my-set-ipc2", "url": archive.as_uri(), "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
         "dataset": "custom", "ipc": 2, "method": "DELT", "image_format": "png", "class_naming": "new000"},
        {"name": "parquet-only", "url": "https://example.org/x", "fetchable": False, "notes": "a parquet dataset"},
    ]}))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(user))
    hub.main(["list"])
    table = capsys.readouterr().out
    assert re.search(r"my-set-ipc2\s+DELT\s+custom\s+2\s+png\s+new000\s+[0-9a-f]{12}\.\.\.", table)
    assert "sre2l-in1k-rn18-4k-ipc50" in table                       # built-in entries stay

    m = hub.fetch("MY-SET-IPC2", tmp_path / "out", classes_from=tiny_data / "val", **quick())
    assert m["sha256_verified"] and m["registry_entry"]["name"] == "my-set-ipc2"
    assert find_classes(tmp_path / "out") == find_classes(tiny_data / "val")
    with pytest.raises(UserError, match="parquet-only cannot be fetched: a parquet dataset"):
        hub.fetch("parquet-only", tmp_path / "o2", **quick())
    with pytest.raises(UserError, match="not a URL, an existing file or a registry name"):
        hub.fetch("no-such-set", tmp_path / "o3", **quick())


def test_builtin_registry_is_well_formed():
    reg = hub.load_registry()
    assert len(reg) >= 8
    for e in reg.values():
        assert e["url"].startswith("https://") and e["method"] in ("SRe2L", "CDA", "RDED", "DELT")
        assert e["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", e["sha256"])


def test_bad_registry_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text('{"sets": [{"name": "x"}]}')
    with pytest.raises(UserError, match=r"set #0 needs at least \"name\" and \"url\""):
        hub.load_registry(bad)


def test_normalize_url():
    assert hub.normalize_url("https://drive.google.com/file/d/1Rr_ik94-x/view?usp=sharing") == \
        "https://drive.google.com/uc?export=download&id=1Rr_ik94-x"
    assert hub.normalize_url("https://huggingface.co/datasets/u/r/blob/main/a.zip") == \
        "https://huggingface.co/datasets/u/r/resolve/main/a.zip"


# --------------------------------------------------------------------------- pack

def test_pack_is_deterministic_and_round_trips_through_fetch(server, tiny_data, tmp_path, capsys):
    src = tiny_data / "train"
    first = tmp_path / "a.tar.gz"
    before = tree(src)
    digest = hub.pack(src, first, progress=False)
    printed = capsys.readouterr().out.split()
    assert printed == [digest, str(first)] and digest == hashlib.sha256(first.read_bytes()).hexdigest()
    assert tree(src) == before and not (src / "manifest.json").exists()   # the packed folder is never written
    with tarfile.open(first) as tf:                      # the archive carries a manifest made from the files
        manifest = json.loads(tf.extractfile("manifest.json").read())
    assert manifest["stage"] == "hub.pack" and manifest["num_images"] == 24
    assert manifest["files_sha256"]["00_circle/img_000.png"] == \
        hashlib.sha256((src / "00_circle/img_000.png").read_bytes()).hexdigest()

    for p in src.rglob("*.png"):                         # new mtimes must not change the archive
        os.utime(p, (1e9, 1e9))
    assert hub.pack(src, tmp_path / "b.tar.gz", progress=False) == digest
    with tarfile.open(first) as tf:
        infos = tf.getmembers()
    names = [i.name for i in infos]
    assert "manifest.json" in names and names == sorted(names[:3]) + sorted(names[3:])
    assert all(i.mtime == 0 and i.uid == 0 and i.uname == "" for i in infos)

    server.routes["/shared.tar.gz"] = {"data": first.read_bytes()}
    out = tmp_path / "fetched"
    m = hub.fetch(server.url("/shared.tar.gz"), out, sha256=digest, **quick())   # manifest vouches for names
    assert m["class_mapping"] == "identity" and m["packed_manifest"]["num_images"] == 24
    got, want = tree(out), tree(src)
    got.pop("manifest.json"), want.pop("manifest.json", None)
    assert got == want


def test_pack_refuses_a_folder_that_is_not_an_imagefolder(tmp_path):
    (tmp_path / "set" / "empty_class").mkdir(parents=True)
    with pytest.raises(UserError, match="class folder\\(s\\) without images: empty_class"):
        hub.pack(tmp_path / "set", tmp_path / "x.tar.gz", progress=False)
    with pytest.raises(UserError, match="does not exist"):
        hub.pack(tmp_path / "missing", tmp_path / "x.tar.gz", progress=False)
