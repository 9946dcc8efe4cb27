"""Hostile and malformed input against a real server: every kind gets a 4xx that says what to fix.

One `monailabel start_server` (conftest.reliability_server) with `max_upload_mb 2`. Each case is
one kind of bad input on one route; it must be answered with the expected 4xx status and a JSON
`detail` message within the timeout (never a 500, never a hang). Afterwards the server still
serves, the canary folder beside the studies is untouched, and nothing new exists outside the
studies folder. The list is the table in docs/reliability.md.
"""
import http.client
import io
import json
import os
import tarfile
import zipfile

import numpy as np
import pytest
import requests

from conftest import tree_snapshot

TIMEOUT = 60
BIG = 3 << 20  # over the server's 2 MB upload limit


# ---------------------------------------------------------------------------------- payloads


def nrrd_bomb() -> bytes:
    """A NRRD header claiming 10^5 voxels per side (10^15 voxels) followed by 64 bytes."""
    return b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\n\n" + b"\0" * 64


def nifti1_bomb() -> bytes:
    """A NIfTI-1 header with the largest dims it can hold (32767^3 = 3.5e13 voxels)."""
    import nibabel as nib

    h = nib.Nifti1Header()
    h.set_data_shape((32767, 32767, 32767))
    h.set_data_dtype(np.uint8)
    f = io.BytesIO()
    h.write_to(f)
    return f.getvalue() + b"\0" * 64


def nifti2_bomb() -> bytes:
    """A NIfTI-2 header claiming 10^5 voxels per side."""
    import nibabel as nib

    h = nib.Nifti2Header()
    h.set_data_shape((100000, 100000, 100000))
    h.set_data_dtype(np.uint8)
    f = io.BytesIO()
    h.write_to(f)
    return f.getvalue() + b"\0" * 64


def deflated_dicom_bomb() -> bytes:
    """A DICOM SEG-like file in the deflated transfer syntax: 20 KB that inflates to 20 MB."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.Rows, ds.Columns, ds.NumberOfFrames = 64, 64, 1
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.add_new(0x00091010, "OB", b"\0" * (20 << 20))
    f = io.BytesIO()
    ds.save_as(f, write_like_original=False)
    return f.getvalue()


def zip_bytes(members) -> bytes:
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return f.getvalue()


def zip_bomb() -> bytes:
    """50 MB of zeros in about 50 KB."""
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("scan.nii", "w") as m:
            for _ in range(50):
                m.write(b"\0" * (1 << 20))
    return f.getvalue()


def tar_bytes(add) -> bytes:
    f = io.BytesIO()
    with tarfile.open(fileobj=f, mode="w:gz") as t:
        add(t)
    return f.getvalue()


def tar_member(t, name, data=b"x", kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, (len(data) if kind == tarfile.REGTYPE else 0), target
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def small_image(data) -> bytes:
    with open(os.path.join(data["studies"], "synth_small_ct.nrrd"), "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------- cases
# (kind, route, request, expected status). `request(d)` -> dict(method, path, params, data, files,
# raw_path): `d` is the reliability data (studies, canary, ...). raw_path requests go out byte for
# byte (no client normalises their `..`).

IMG = "synth_small_ct"


def put_label(tag=None, image=IMG, name="label.nrrd", body=None, params=None):
    def req(d):
        q = {"image": image(d) if callable(image) else image}
        if tag is not None:
            q["tag"] = tag(d) if callable(tag) else tag
        return dict(method="PUT", path="/datastore/label", params=q, data={"params": params or "{}"},
                    files={"label": (name, body(d) if callable(body) else (body or small_image(d)))})
    return req


def put_image(image=None, name="new_case.nrrd", body=None, path="/datastore/image"):
    def req(d):
        q = {} if image is None else {"image": image(d) if callable(image) else image}
        return dict(method="PUT", path=path, params=q, data={"params": "{}"},
                    files={"file": (name, body(d) if callable(body) else (body or small_image(d)))})
    return req


def call(method, path, params=None, data=None, files=None, raw_path=None):
    return lambda d: dict(method=method, path=path, params=params, data=data, files=files, raw_path=raw_path)


def infer(image=IMG, params=None, files=None, session_id=None):
    def req(d):
        q = {"output": "json"}
        if image is not None:
            q["image"] = image(d) if callable(image) else image
        if session_id is not None:
            q["session_id"] = session_id
        p = params(d) if callable(params) else (params if params is not None else {"foreground": [[10, 10, 10]]})
        text = p if isinstance(p, str) else json.dumps(p)
        return dict(method="POST", path="/infer/sammed3d", params=q, data={"params": text},
                    files=files(d) if callable(files) else files)
    return req


def session_put(body, name="upload.zip", uncompress=True):
    return lambda d: dict(method="PUT", path="/session/", params={"uncompress": str(uncompress).lower()},
                          files={"files": (name, body() if callable(body) else body)})


CANARY_FILE = lambda d: os.path.join(d["canary"], "evil")  # noqa: E731
OUTSIDE_IMAGE = lambda d: os.path.join(d["canary"], "outside.nii.gz")  # noqa: E731
CLICKS = lambda n: {"foreground": [[10, 10, 10]] * n}  # noqa: E731

CASES = [
    # --- PUT /datastore/label: tag, image id, file name, file content
    ("label tag: absolute path", put_label(tag=CANARY_FILE), 400),
    ("label tag: ../../ traversal", put_label(tag="../../evil"), 400),
    ("label tag: URL-encoded %2e%2e%2f", put_label(tag="%2e%2e%2fevil"), 400),
    ("label tag: double-encoded %252e%252e%252f", put_label(tag="%252e%252e%252fevil"), 400),
    ("label tag: fullwidth unicode ．．／", put_label(tag="\uff0e\uff0e\uff0fevil"), 400),
    ("label tag: division-slash look-alike", put_label(tag="a\u2215b"), 400),
    ("label tag: NUL byte", put_label(tag="final\x00evil"), 400),
    ("label tag: hidden name .history", put_label(tag=".history"), 400),
    ("label tag: 300 characters", put_label(tag="t" * 300), 400),
    ("label tag: folder is a symlink out of the studies", put_label(tag="linked"), 403),
    ("label image id: ../ traversal", put_label(image="../" + IMG), 400),
    ("label image id: absolute path of a studies file", put_label(image=lambda d: os.path.join(d["studies"], IMG + ".nrrd")), 400),
    ("label image id: unknown", put_label(image="no_such_case"), 404),
    ("label file name: fullwidth ．．／ traversal", put_label(name="\uff0e\uff0e\uff0fevil.nrrd"), 400),
    ("label file name: hidden .x.nrrd", put_label(name=".x.nrrd"), 400),
    ("label file: NRRD header claims 10^5 voxels per side", put_label(body=lambda d: nrrd_bomb()), 400),
    ("label file: deflated DICOM SEG bomb (20 KB -> 20 MB)", put_label(name="seg.dcm", body=lambda d: deflated_dicom_bomb()), 400),
    ("label file: not a DICOM (.dcm)", put_label(name="seg.dcm", body=b"not a dicom file" * 10), 400),
    ("label file: over the upload limit", put_label(body=lambda d: b"\0" * BIG), 413),
    ("label params: JSON nested 100000 deep", put_label(params="[" * 100000), 400),
    # --- PUT /datastore/image (and the deprecated PUT /datastore/)
    ("image upload id: ../ traversal", put_image(image="../escaped"), 400),
    ("image upload id: absolute path", put_image(image=CANARY_FILE), 400),
    ("image upload id: URL-encoded traversal", put_image(image="..%2Fescaped"), 400),
    ("image upload id: NUL byte", put_image(image="case\x00.nii.gz"), 400),
    ("image upload id: hidden name", put_image(image=".hidden"), 400),
    ("image upload file name: fullwidth traversal", put_image(name="\uff0e\uff0e\uff0fescaped.nrrd"), 400),
    ("image upload file name: backslash traversal", put_image(name="..\\..\\escaped.nrrd"), 400),
    ("image upload: NRRD header 10^5 voxels per side", put_image(body=lambda d: nrrd_bomb()), 400),
    ("image upload: NIfTI-1 header 32767^3 voxels", put_image(name="bomb.nii", body=lambda d: nifti1_bomb()), 400),
    ("image upload: NIfTI-2 header 10^5 voxels per side", put_image(name="bomb2.nii", body=lambda d: nifti2_bomb()), 400),
    ("image upload: over the upload limit (Content-Length)", put_image(body=lambda d: b"\0" * BIG), 413),
    ("image upload: deprecated PUT /datastore/ with ../", put_image(image="../escaped", path="/datastore/"), 400),
    # --- removals
    ("image delete id: ../ traversal", call("DELETE", "/datastore/image", {"id": "../studies"}), 400),
    ("image delete id: absolute path (deprecated route)", call("DELETE", "/datastore/", {"id": "/etc"}), 400),
    ("image delete: symlink pointing out (not listed)", call("DELETE", "/datastore/image", {"id": "escape_link"}), 404),
    ("label delete tag: ../ traversal", call("DELETE", "/datastore/label", {"id": IMG, "tag": "../../evil"}), 400),
    ("label delete tag: absolute path", call("DELETE", "/datastore/label", {"id": IMG, "tag": "/tmp"}), 400),
    # --- downloads
    ("image download id: ../ traversal", call("GET", "/datastore/image", {"image": "../small"}), 400),
    ("image download: symlink pointing out of the studies", call("GET", "/datastore/image", {"image": "escape_link"}), 403),
    ("image HEAD id: absolute path", call("HEAD", "/datastore/image", {"image": "/etc/passwd"}), 400),
    ("label download tag: absolute path", call("GET", "/datastore/label", {"label": IMG, "tag": "/etc"}), 400),
    ("label download: tag folder is a symlink out", call("GET", "/datastore/label", {"label": IMG, "tag": "linked"}), 403),
    ("label HEAD id: ..", call("HEAD", "/datastore/label", {"image": "..", "tag": "final"}), 400),
    # --- info updates and the dataset zip
    ("image info id: ../ traversal", call("GET", "/datastore/image/info", {"image": "../x"}), 400),
    ("image info update id: NUL", call("PUT", "/datastore/image/info", {"image": "a\x00b"}, {"info": "{}"}), 400),
    ("image info update: info not JSON", call("PUT", "/datastore/image/info", {"image": IMG}, {"info": "{x"}), 400),
    ("image info update: unknown id", call("PUT", "/datastore/image/info", {"image": "nope"}, {"info": "{}"}), 404),
    ("label info update id: ../ traversal", call("PUT", "/datastore/label/info", {"label": "../x", "tag": "final"},
                                                 {"info": "{}"}), 400),
    ("label info update (deprecated) tag: absolute", call("PUT", "/datastore/updatelabelinfo",
                                                          {"label": IMG, "tag": "/abs"}, {"params": "{}"}), 400),
    ("dataset zip: limit_cases -1", call("GET", "/datastore/dataset", {"limit_cases": "-1"}), 400),
    # --- infer
    ("infer image id: absolute path outside", infer(image=OUTSIDE_IMAGE), 400),
    ("infer image id: ../ traversal", infer(image="../studies/" + IMG), 400),
    ("infer image: symlink pointing out of the studies", infer(image="escape_link"), 403),
    ("infer params.image: replaces the id with a path", infer(params=lambda d: {"image": OUTSIDE_IMAGE(d),
                                                                                 "foreground": [[1, 1, 1]]}), 400),
    ("infer params.session: injected session", infer(params={"session": {"image": "/etc/passwd"},
                                                             "foreground": [[1, 1, 1]]}), 400),
    ("infer session_id: ../..", infer(image=None, session_id="../.."), 400),
    ("infer clicks: 20 000 points", infer(params=CLICKS(20000)), 400),
    ("infer clicks: a million points (body over the limit)", infer(params=CLICKS(1000000)), 413),
    ("infer label name: NUL byte", infer(params={"label": "liver\x00", "foreground": [[1, 1, 1]]}), 400),
    ("infer params: JSON nested 100000 deep", infer(params="[" * 100000), 400),
    ("infer uploaded file: NRRD header 10^5 voxels per side",
     infer(image="", files=lambda d: {"file": ("bomb.nrrd", nrrd_bomb())}), 400),
    ("infer uploaded file name: fullwidth traversal",
     infer(image="", files=lambda d: {"file": ("\uff0e\uff0e\uff0fx.nrrd", small_image(d))}), 400),
    # --- sessions
    ("session get id: .. (raw path)", call("GET", "/session/..", raw_path="/session/.."), 400),
    ("session delete id: .. (raw path)", call("DELETE", "/session/..", raw_path="/session/.."), 400),
    ("session get id: %2e%2e encoded", call("GET", "/session/%2e%2e", raw_path="/session/%2e%2e"), 400),
    ("session upload: zip member ../../evil (zip slip)", session_put(zip_bytes([("../../evil.nii", b"x")])), 400),
    ("session upload: zip member absolute path", session_put(zip_bytes([("/tmp/evil.nii", b"x")])), 400),
    ("session upload: zip bomb (50 MB of zeros)", session_put(zip_bomb), 400),
    ("session upload: tar member ../evil", session_put(tar_bytes(lambda t: tar_member(t, "../evil")), "a.tar.gz"), 400),
    ("session upload: tar symlink member", session_put(tar_bytes(lambda t: tar_member(
        t, "link", kind=tarfile.SYMTYPE, target="/etc/passwd")), "a.tar.gz"), 400),
    ("session upload: not an archive with uncompress", session_put(b"plain bytes", "a.zip"), 400),
    ("session upload: NRRD header bomb", session_put(nrrd_bomb(), "bomb.nrrd", uncompress=False), 400),
    # --- tasks
    ("train: unknown model", call("POST", "/train/nope"), 404),
    ("train: option of the wrong type", lambda d: dict(method="POST", path="/train/sammed3d",
                                                        json={"max_epochs": "abc"}), 400),
    ("scoring: unknown method with a NUL byte", call("POST", "/scoring/%00evil", raw_path="/scoring/%00evil"), 404),
    ("activelearning: unknown strategy", call("POST", "/activelearning/nope"), 404),
    ("model download: unknown model ..", call("GET", "/model/..", raw_path="/model/.."), 404),
]


def send(server, req, timeout=TIMEOUT):
    if req.get("raw_path"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        conn.request(req["method"], req["raw_path"])
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, body
    r = requests.request(req["method"], server.url + req["path"], params=req.get("params"), data=req.get("data"),
                         files=req.get("files"), json=req.get("json"), timeout=timeout)
    return r.status_code, r.content


@pytest.fixture(scope="module")
def before(reliability_server, reliability_data):
    d = reliability_data
    return {"canary": tree_snapshot(d["canary"]), "root": sorted(os.listdir(d["root"]))}


def test_there_are_at_least_50_kinds():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("kind,make,status", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_a_4xx_that_says_what_to_fix(reliability_server, reliability_data, before, kind, make, status):
    d = dict(reliability_data)
    req = make(d)
    code, body = send(reliability_server, req)
    assert code == status, f"{kind}: {code} {body[:300]!r}"
    if req["method"] != "HEAD":
        detail = json.loads(body)["detail"]
        assert isinstance(detail, str) and len(detail) > 15, detail
        assert "Internal Server Error" not in detail


def test_the_server_still_serves_and_nothing_outside_was_touched(reliability_server, reliability_data, before):
    d = reliability_data
    assert requests.get(reliability_server.url + "/info/", timeout=TIMEOUT).status_code == 200
    r = requests.post(reliability_server.url + "/infer/sammed3d", params={"image": IMG, "output": "json"},
                      data={"params": json.dumps({"foreground": [[8, 8, 8]], "label": "after"})}, timeout=300)
    assert r.status_code == 200, r.text
    assert tree_snapshot(d["canary"]) == before["canary"]
    assert sorted(os.listdir(d["root"])) == before["root"]
    assert not os.path.exists(CANARY_FILE(d))
    studies = os.listdir(d["studies"])
    assert not [n for n in studies if "escaped" in n or "bomb" in n or n.startswith("new_case")], studies
    assert "Traceback" not in reliability_server.log(), reliability_server.log_tail()  # no unhandled error


def test_ohif_and_static_routes_serve_nothing_outside_their_folders(reliability_server):
    for raw in ("/ohif/../../../../etc/passwd", "/ohif/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/ohif/%2e%2e/%2e%2e/setup.py",
                "/static/../../../etc/passwd", "/static/..%2F..%2Fapp.py"):
        status, body = send(reliability_server, {"method": "GET", "raw_path": raw})
        assert status in (200, 404), (raw, status)
        assert b"root:" not in body and b"import " not in body, raw
        if status == 200:
            assert body.lstrip().lower().startswith(b"<!doctype html"), raw  # the viewer's index.html


def test_a_chunked_upload_over_the_limit_is_cut_off_with_413(reliability_server, reliability_data):
    """No Content-Length (Transfer-Encoding: chunked): the body is counted as it arrives."""
    boundary = "reliabilityboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chunked_case.nrrd\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()

    def chunks():
        yield head
        for _ in range(BIG // (64 << 10)):
            yield b"\0" * (64 << 10)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = requests.put(reliability_server.url + "/datastore/image", data=chunks(), timeout=TIMEOUT,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "upload limit" in r.json()["detail"], r.text
    assert requests.get(reliability_server.url + "/info/", timeout=TIMEOUT).status_code == 200
    assert not [n for n in os.listdir(reliability_data["studies"]) if n.startswith("chunked_case")]


def test_a_checkpoint_carrying_a_pickle_payload_is_refused(tmp_path):
    """Checkpoints load with torch.load(weights_only=True): a pickled callable is refused, never run."""
    import pickle

    import torch
    from lib.model import CheckpointError, load_checkpoint

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "x", "model_state_dict": {}, "evil": Payload()}, str(path), pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path), map_location="cpu")
    assert not marker.exists()
    with pytest.raises(Exception):
        torch.load(str(path), weights_only=True)
    assert not marker.exists()
