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
"""
import logging
import os
import shutil
import time
from typing import Any, Dict, List

from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException

from lib.model.checkpoint import atomic_write

logger = logging.getLogger(__name__)

HISTORY = ".history"


class SafeLocalDatastore(LocalDatastore):
    """LocalDatastore whose label saves are atomic and keep every replaced label."""

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        label_tag = label_tag or DefaultLabelTag.FINAL.value
        _, label_ext = self._to_id(os.path.basename(label_filename))
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, label_ext)
        dest = os.path.join(label_path, name)
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
    """Make a DICOMweb datastore's first access of a series safe to run twice at once.

    MONAI Label's DICOMWebDatastore downloads a series into `<cache>/<id>/` and converts it to
    `<cache>/<id>.nii.gz` the first time `get_image_uri(id)` (or `get_label_uri` for a SEG) is
    called, with no lock: it only checks whether those paths exist yet. The server answers
    inference in worker threads (lib/guards/infer.py), and scoring and training run in subprocesses
    that fetch series too, so two callers can download and convert the same series into the same
    paths at once. Here each fetch holds a file lock per series id (threads and processes alike);
    fetches of different series still run in parallel.
    """
    import hashlib

    folder = os.path.join(datastore._datastore_path, FETCH_LOCKS)  # the DICOMweb cache folder
    os.makedirs(folder, exist_ok=True)

    def locked(fetch, id_name: str):
        def fetch_under_lock(*args, **kwargs):  # MONAI Label passes the id by position or by name
            series_id = args[0] if args else kwargs.get(id_name)
            name = hashlib.sha1(str(series_id).encode()).hexdigest() + ".lock"
            with FileLock(os.path.join(folder, name)):
                return fetch(*args, **kwargs)
        return fetch_under_lock

    # instance attributes: MONAI Label builds the datastore (clients, credentials) and we keep it
    datastore.get_image_uri = locked(datastore.get_image_uri, "image_id")
    datastore.get_label_uri = locked(datastore.get_label_uri, "label_id")
    return datastore
