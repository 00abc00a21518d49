"""Which volume does what: the split policies and the roles they give each fastMRI file.

A run uses each fastMRI volume in one **role**:

* ``train``: the U-Net (and the in-domain classifier) learn from it;
* ``selection``: checkpoint selection and validation curves;
* ``evaluation``: the held-out volumes every metric of chapter 6 is computed on;
* ``inference``: reconstructed and written, never scored (the real ``*_test`` split,
  whose k-space is already undersampled and which holds no target).

A **split policy** maps the data's split folders to roles:

* ``synthetic``: ``train`` -> train, ``val`` -> selection, ``test`` -> evaluation. For the
  generated cohorts, whose every split holds targets.
* ``fastmri``: ``val`` -> evaluation, as in every fastMRI paper; the selection volumes are
  carved from ``train`` by a hash of each volume's ``patient_id`` (else of its file
  name) below ``selection_fraction``, so that no patient is in two roles and the carve
  does not depend on the order or number of files; ``test`` -> inference.

:func:`assign_roles` records for every file its role and why; :func:`policy_problems` is
what ``check-data`` and chapter 1 both refuse, so a directory one accepts the other runs.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, NamedTuple

from ..errors import ParameterError

POLICIES = ("synthetic", "fastmri")
ROLES = ("train", "selection", "evaluation", "inference")
#: roles whose volumes need a fully sampled target
TARGET_ROLES = ("train", "selection", "evaluation")
SELECTION_FRACTION = 0.1

_FOLDER_ROLE = {
    "synthetic": {"train": "train", "val": "selection", "test": "evaluation"},
    "fastmri": {"train": "train", "val": "evaluation", "test": "inference"},
}
#: the split folder each policy's selection and evaluation volumes come from
SPLIT_OF_ROLE = {
    "synthetic": {"train": "train", "selection": "val", "evaluation": "test", "inference": None},
    "fastmri": {"train": "train", "selection": "train", "evaluation": "val", "inference": "test"},
}


class FileEntry(NamedTuple):
    """What a policy needs to know of one file: its split folder, name, patient and target."""

    split: str
    name: str
    patient_id: str | None
    has_target: bool
    has_mask: bool = False


def check_policy(policy: str, selection_fraction: float = SELECTION_FRACTION) -> None:
    """Raise :class:`ParameterError` for an unknown policy or a fraction outside (0, 1)."""
    if policy not in POLICIES:
        raise ParameterError("split_policy", f"unknown split policy {policy!r}; use one of {', '.join(POLICIES)}")
    if isinstance(selection_fraction, bool) or not isinstance(selection_fraction, (int, float)) \
            or not 0.0 < float(selection_fraction) < 1.0:
        raise ParameterError("selection_fraction", f"must be a number in (0, 1), got {selection_fraction!r}")


def unit_hash(text: str) -> float:
    """A number in [0, 1) from the SHA-256 of ``text``: the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _key(entry: FileEntry) -> tuple[str, str]:
    if entry.patient_id:
        return "patient_id", entry.patient_id
    return "file name", entry.name


def assign_roles(files: Iterable[FileEntry], policy: str,
                 selection_fraction: float = SELECTION_FRACTION) -> list[dict[str, Any]]:
    """Give every file its role under ``policy``, and say why.

    Under ``fastmri``, a training-folder file goes to selection when the hash of its
    patient (else file name) is below ``selection_fraction``. If no patient falls below
    it (a small cohort), the patient with the smallest hash is taken, so selection is never
    empty while training keeps at least one patient.

    Returns:
        One dict per file, in input order: ``split``, ``file``, ``role``, ``why``.
    """
    check_policy(policy, selection_fraction)
    files = list(files)
    folder_role = _FOLDER_ROLE[policy]
    carve: dict[tuple[str, str], float] = {}
    if policy == "fastmri":
        carve = {_key(f): unit_hash(_key(f)[1]) for f in files if f.split == "train"}
        chosen = {k for k, u in carve.items() if u < selection_fraction}
        if not chosen and len(carve) > 1:
            chosen = {min(carve, key=carve.get)}
        if chosen and len(chosen) == len(carve):  # keep one patient to train on
            chosen.discard(max(chosen, key=carve.get))
    out = []
    for f in files:
        role = folder_role.get(f.split)
        if role is None:
            continue
        why = f"{policy} policy: the {f.split} split is for {role}"
        if policy == "fastmri" and f.split == "train":
            kind, value = _key(f)
            u = carve[(kind, value)]
            if (kind, value) in chosen:
                role = "selection"
                why = (f"fastmri policy: hash of {kind} {value[:12]} is {u:.3f}"
                       + (f" < selection_fraction {selection_fraction}" if u < selection_fraction
                          else f", the smallest of the training split (none is below {selection_fraction})"))
            else:
                why = f"fastmri policy: hash of {kind} {value[:12]} is {u:.3f}, not selected for checkpoint selection"
        out.append(dict(split=f.split, file=f.name, role=role, why=why))
    return out


def policy_problems(files: Iterable[FileEntry], policy: str, challenge: str,
                    selection_fraction: float = SELECTION_FRACTION,
                    needed: Iterable[str] = TARGET_ROLES) -> list[tuple[str, str]]:
    """What a run with ``policy`` would refuse in these files, each ``(where, what)``.

    A file in a role that needs a target but has none; a role of ``needed`` (default: train,
    selection and evaluation, what the chapters need; ``mrlib train`` needs only the first
    two) that gets no volume.
    """
    files = list(files)
    check_policy(policy, selection_fraction)
    problems = []
    by_name = {(f.split, f.name): f for f in files}
    roles = assign_roles(files, policy, selection_fraction)
    for a in roles:
        f = by_name[(a["split"], a["file"])]
        if a["role"] in TARGET_ROLES and not f.has_target:
            problems.append((f"fastmri/{challenge}_{f.split}/{f.name}",
                             f"has no target, but split_policy={policy} uses the {f.split} split for {a['role']}, "
                             "which needs fully sampled targets"
                             + (" (use split_policy=fastmri for the real test split)" if policy == "synthetic" else "")))
        if a["role"] == "inference" and not f.has_target and not f.has_mask:
            problems.append((f"fastmri/{challenge}_{f.split}/{f.name}",
                             "has neither a target nor a stored mask: its undersampling is unknown, "
                             "so it can be neither scored nor reconstructed"))
    for role in needed:
        if not any(a["role"] == role for a in roles):
            split = SPLIT_OF_ROLE[policy][role]
            problems.append((f"fastmri/{challenge}_{split}",
                             f"split_policy={policy} takes its {role} volumes from the {split} split, "
                             + ("whose volumes belong to too few patients to carve from (at least 2 needed)"
                                if role == "selection" and policy == "fastmri"
                                else "which is missing or empty")))
    return problems


def role_summary(assignments: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Volumes per role."""
    counts = dict.fromkeys(ROLES, 0)
    for a in assignments:
        counts[a["role"]] += 1
    return counts
