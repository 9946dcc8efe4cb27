"""The studies folder's datastore, with label saves that never lose what a user saved.

MONAI Label's LocalDatastore saves a label with `shutil.copy(upload, labels/<tag>/<id><ext>)`:
a crash or a full disk mid-copy leaves a truncated label in place of the previous one, and a
second save of the same image simply overwrites the first. `SafeLocalDatastore.save_label`
keeps MONAI Label's bookkeeping (same file name, same datastore JSON entry, same lock) and
changes two things:

* the new file is written to a temp file in the same folder, fsynced and renamed over the old
  one (`lib.model.atomic_write`): readers (the trainer, a viewer) see the old label or the new
  one, never a partial file;
* the label it replaces is first kept as `labels/<tag>/.history/<id>/<seq>-<UTC time><ext>` (a
  hard link, so no extra space), so every earlier save can be restored by copying it back. MONAI Label's folder scans match label file
  names by extension and never descend into the `.history` folder.

It also keeps every read and write inside the studies folder (docs/reliability.md):

* image ids and label tags that are not plain names (`../x`, `/tmp/x`, NUL, encoded forms; see
  lib/guards/paths.py) raise UnsafePathError instead of becoming a path;
* a file or label folder that is a symlink pointing out of the studies folder is not listed, not
  served (get_image_uri/get_label_uri answer "", i.e. not found), not trained on and not zipped;
* the datastore JSON is written atomically (MONAI Label truncates it in place, so a crash could
  leave it empty), and a corrupt one found at start is moved aside (`<name>.corrupt-<time>`), logged,
  and rebuilt from the files, instead of stopping the server.
"""
import json
import logging
import os
import shutil
import time
from typing import Any, Dict, List, Optional

from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException

from lib.guards.paths import UnsafePathError, inside, name_problem
from lib.model.checkpoint import atomic_write

logger = logging.getLogger(__name__)

HISTORY = ".history"


class SafeLocalDatastore(LocalDatastore):
    """LocalDatastore whose label saves are atomic and keep every replaced label, and whose paths
    all stay inside the studies folder."""

    def __init__(self, datastore_path: str, *args, **kwargs):
        self._root = os.path.realpath(datastore_path)
        config = kwargs.get("datastore_config", "datastore_v2.json")
        recover_corrupt_json(os.path.join(datastore_path, config))
        super().__init__(datastore_path, *args, **kwargs)

    # ------------------------------------------------------------------ paths stay inside
    def _checked(self, value: str, what: str) -> str:
        problem = name_problem(value)
        if problem:
            raise UnsafePathError(f"{what} {value!r:.80} {problem}")
        return value

    def _inside(self, path: str, what: str) -> str:
        if not inside(path, self._root):
            e = UnsafePathError(f"{what} resolves outside the studies folder (a link pointing out); the server "
                                "does not follow it: copy the file into the studies folder")
            e.status_code = 403
            raise e
        return path

    def _list_files(self, path, patterns):
        files = super()._list_files(path, patterns)
        outside = [n for n in files if not inside(os.path.join(path, n), self._root)]
        for n in outside:
            logger.warning(f"ignored {os.path.join(path, n)}: a link pointing outside the studies folder")
            files.pop(n)
        return files

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        return uri if not uri or inside(uri, self._root) else ""

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        if name_problem(label_tag) or name_problem(label_id):
            return ""
        uri = super().get_label_uri(label_id, label_tag)
        return uri if not uri or inside(uri, self._root) else ""

    def link_out(self, image_id: str, tag: Optional[str] = None) -> Optional[str]:
        """The path of `image_id`'s file (or its `tag` label) in the studies folder when it is a link
        pointing outside it; None otherwise (lets the guards answer 403 instead of 404)."""
        if name_problem(image_id) or (tag is not None and name_problem(tag)):
            return None
        folder = self._datastore.image_path() if tag is None else self._datastore.label_path(tag)
        exts = [e.replace("*", "") for e in self._extensions]
        for path in [os.path.join(folder, image_id + e) for e in exts] + [folder]:
            if os.path.lexists(path) and not inside(path, self._root):
                return path
        return None

    def datalist(self, full_path=True) -> List[Dict[str, Any]]:
        rows = super().datalist(full_path=True)
        kept = [r for r in rows if all(inside(p, self._root) for p in r.values())]
        if len(kept) != len(rows):
            logger.warning(f"datalist: {len(rows) - len(kept)} entries skipped (links pointing outside the studies folder)")
        if not full_path:
            kept = [{k: os.path.relpath(v, self._root) for k, v in r.items()} for r in kept]
        return kept

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        if image_id:
            self._checked(image_id, "image id")
        else:
            self._checked(self._to_id(os.path.basename(image_filename))[0], "image file name")
        _, ext = self._to_id(os.path.basename(image_filename))
        dest = os.path.join(self._datastore.image_path(), (image_id or self._to_id(os.path.basename(image_filename))[0]) + ext)
        self._inside(dest, "the image's file")
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        obj = self._datastore.objects.get(image_id)
        if obj:  # MONAI Label removes the link's target (realpath): refuse a link pointing out
            self._inside(os.path.join(self._datastore.image_path(), self._filename(image_id, obj.image.ext)), "the image file")
        return super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        self._checked(label_id, "image id")
        self._checked(label_tag, "tag")
        uri = super().get_label_uri(label_id, label_tag)
        if uri:
            self._inside(uri, "the label file")
        return super().remove_label(label_id, label_tag)

    def _update_datastore_file(self, lock=True):
        """MONAI Label's, written atomically (temp file, fsync, rename): a crash keeps the old file."""
        def write():
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write(self._datastore_config_path, lambda f: f.write(text.encode()), tmp_suffix=".part")
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        label_tag = label_tag or DefaultLabelTag.FINAL.value
        self._checked(image_id, "image id")
        self._checked(label_tag, "tag")
        _, label_ext = self._to_id(os.path.basename(label_filename))
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, label_ext)
        dest = os.path.join(label_path, name)
        self._inside(label_path if os.path.lexists(label_path) else os.path.dirname(label_path), "the label folder")
        if os.path.lexists(dest):
            self._inside(dest, "the label file")
        logger.info(f"Saving label {image_id} => {label_tag} => {dest} (atomic, previous kept)")

        with FileLock(self._lock_file):
            os.makedirs(label_path, exist_ok=True)
            extensions = {e.replace("*", "") for e in self._extensions} | {label_ext}
            kept = keep_previous(label_path, image_id, extensions)
            with open(label_filename, "rb") as src:
                atomic_write(dest, lambda f: shutil.copyfileobj(src, f), tmp_suffix=".part")
            for name in current_label_files(label_path, image_id, extensions - {label_ext}):
                os.remove(os.path.join(label_path, name))  # the same label under an old extension (kept above)
            label_info = dict(label_info or {})
            label_info["ts"] = int(time.time())
            label_info["name"] = name
            if kept:
                label_info["previous"] = os.path.relpath(kept[-1], label_path)
            obj.labels[label_tag] = DataModel(info=label_info, ext=label_ext)
            self._update_datastore_file(lock=False)
        return image_id


def recover_corrupt_json(path: str) -> Optional[str]:
    """Move a datastore JSON that is not valid aside (`<path>.corrupt-<UTC time>`) and say so in the
    log; the datastore is then rebuilt from the image and label files. Returns the new name."""
    if not os.path.isfile(path):
        return None
    from monailabel.datastore.local import LocalDatastoreModel

    try:
        with open(path) as f:
            LocalDatastoreModel.model_validate_json(f.read())
        return None
    except (ValueError, UnicodeDecodeError) as e:  # pydantic's ValidationError is a ValueError
        moved = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        os.replace(path, moved)
        logger.error(f"datastore file {path} is corrupt ({str(e).splitlines()[0][:200]}); moved to {moved}; "
                     "rebuilding the datastore from the image and label files (label info such as 'previous' and "
                     "scores is lost; the files are not)")
        return moved


def keep_previous(label_path: str, image_id: str, extensions) -> List[str]:
    """Copy the current label file(s) of `image_id` into its history folder (hard link when the
    file system allows: no extra space). Returns the copies, as `<seq>-<UTC time><ext>`.

    A label may exist under another extension than the new one (saved as .nrrd, now .nii.gz);
    each is kept. The originals stay in place until the new label is written."""
    kept = []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = os.path.join(label_path, HISTORY, image_id)
    for name in current_label_files(label_path, image_id, extensions):
        os.makedirs(folder, exist_ok=True)
        seq = len(os.listdir(folder)) + 1
        target = os.path.join(folder, f"{seq:04d}-{stamp}{name[len(image_id):]}")
        source = os.path.join(label_path, name)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        kept.append(target)
    return kept


def current_label_files(label_path: str, image_id: str, extensions) -> List[str]:
    """Names in `label_path` that are exactly `image_id` + one of `extensions` (".nii.gz", ...)."""
    names = [image_id + ext for ext in sorted(set(extensions))]
    return [n for n in names if os.path.isfile(os.path.join(label_path, n))]


def history(label_path: str, image_id: str) -> List[str]:
    """Earlier saved labels of `image_id`, oldest first."""
    folder = os.path.join(label_path, HISTORY, image_id)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)) if os.path.isdir(folder) else []


FETCH_LOCKS = ".sammed3d-fetch-locks"


def serialise_dicomweb_fetches(datastore):
    """Make a DICOMweb datastore's first access of a series safe to run twice at once, and safe to
    be killed half-way.

    MONAI Label's DICOMWebDatastore downloads a series into `<cache>/<id>/` and converts it to
    `<cache>/<id>.nii.gz` the first time `get_image_uri(id)` (or `get_label_uri` for a SEG) is
    called, with no lock: it only checks whether those paths exist yet. The server answers
    inference in worker threads (lib/guards/infer.py), and scoring and training run in subprocesses
    that fetch series too, so two callers can download and convert the same series into the same
    paths at once. Here each fetch holds a file lock per series id (threads and processes alike);
    fetches of different series still run in parallel. The lock is an flock: a killed process
    releases it, so the lock file it leaves behind blocks nobody.

    Existence is not completeness: a server killed while it downloads (some instances saved) or
    copies the converted file (half of it written) leaves paths that MONAI Label then takes as the
    series -- a 2-slice image served without an error, or a truncated .nii.gz that fails every
    click. So a fetch counts as complete only when its marker `<locks>/<sha1>.done` exists,
    written (after fsync of the files) once the fetch returned. Without the marker, whatever is
    cached for the series is discarded, logged, and fetched again. (A cache filled before this
    marker existed is fetched again once, series by series.) The datastore JSON in the cache is
    written atomically too (SafeLocalDatastore._update_datastore_file).
    """
    import hashlib

    from monailabel.interfaces.datastore import DefaultLabelTag

    folder = os.path.join(datastore._datastore_path, FETCH_LOCKS)  # the DICOMweb cache folder
    os.makedirs(folder, exist_ok=True)
    model = getattr(datastore, "_datastore", None)  # MONAI Label's LocalDatastoreModel: the cache's layout
    convert = getattr(datastore, "_convert_to_nifti", True)

    def cached_paths(kind: str, args, kwargs):
        """-> (series id, the paths a complete fetch leaves), or (id, None) when nothing is fetched."""
        if model is None:
            return (args[0] if args else kwargs.get("image_id" if kind == "image" else "label_id")), None
        if kind == "image":
            image_id = args[0] if args else kwargs.get("image_id")
            root, stem = model.image_path(), image_id
        else:
            image_id = args[0] if args else kwargs.get("label_id")
            tag = args[1] if len(args) > 1 else kwargs.get("label_tag")
            if tag != DefaultLabelTag.FINAL:
                return image_id, None  # a local label (MONAI Label's LocalDatastore): nothing fetched
            stem = args[2] if len(args) > 2 else kwargs.get("image_id", "")
            root = model.label_path(DefaultLabelTag.FINAL)
        if name_problem(str(image_id)) or (stem and name_problem(str(stem))):
            return image_id, None  # not a plain name: MONAI Label refuses or misses it, nothing is removed
        paths = [os.path.join(root, str(image_id))] + ([os.path.join(root, f"{stem}.nii.gz")] if convert else [])
        return image_id, [os.path.realpath(p) for p in paths if inside(p, datastore._datastore_path)]

    def complete(marker: str, paths: List[str]) -> bool:
        if not os.path.exists(marker):
            return False
        series_dir, *files = paths
        return os.path.isdir(series_dir) and bool(os.listdir(series_dir)) and all(os.path.isfile(p) for p in files)

    def discard(series_id, paths: List[str]) -> None:
        left = [p for p in paths if os.path.lexists(p)]
        if left:
            logger.warning(f"DICOMweb cache: series {series_id} was not completely fetched (a fetch was interrupted); "
                           f"discarding {', '.join(left)} and fetching it again")
        for p in left:
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)

    def locked(fetch, kind: str):
        def fetch_under_lock(*args, **kwargs):  # MONAI Label passes the id by position or by name
            series_id, paths = cached_paths(kind, args, kwargs)
            digest = hashlib.sha1(str(series_id).encode()).hexdigest()
            with FileLock(os.path.join(folder, digest + ".lock")):
                if not paths:
                    return fetch(*args, **kwargs)
                fetched = f"{kind}:{series_id}:{os.path.basename(paths[-1])}"  # a label: its SEG and image ids
                marker = os.path.join(folder, hashlib.sha1(fetched.encode()).hexdigest() + ".done")
                if complete(marker, paths):
                    return fetch(*args, **kwargs)  # MONAI Label finds the cached files
                if os.path.exists(marker):
                    os.remove(marker)
                discard(series_id, paths)
                result = fetch(*args, **kwargs)
                if result and os.path.exists(result):
                    _fsync_tree(paths)
                    atomic_write(marker, lambda f: f.write(json.dumps({"series": str(series_id), "paths": paths,
                                                                       "ts": time.time()}).encode()))
                return result
        return fetch_under_lock

    # instance attributes: MONAI Label builds the datastore (clients, credentials) and we keep it
    datastore.get_image_uri = locked(datastore.get_image_uri, "image")
    datastore.get_label_uri = locked(datastore.get_label_uri, "label")
    if hasattr(datastore, "_update_datastore_file"):  # the cache's datastore JSON, written atomically
        datastore._update_datastore_file = SafeLocalDatastore._update_datastore_file.__get__(datastore)
    return datastore


def _fsync_tree(paths: List[str]) -> None:
    """fsync the files (and folders) a fetch wrote, before its marker says it is complete."""
    for p in paths:
        if not os.path.exists(p):
            continue
        names = [os.path.join(p, n) for n in os.listdir(p)] if os.path.isdir(p) else [p]
        for name in names + [p if os.path.isdir(p) else os.path.dirname(p)]:
            try:
                fd = os.open(name, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
