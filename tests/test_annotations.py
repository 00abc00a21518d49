"""fastMRI+ annotations as the real ``knee.csv`` and ``knee_file_list.csv`` are: each quirk
is counted and handled, the file list gives true negatives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrlib.data import annotations as ann
from mrlib.data.check import check_data_dir
from mrlib.errors import DataError

HEADER = "file,slice,study_level,x,y,width,height,label\n"

#: Rows written as in the real knee.csv, one quirk each (CSV line numbers in comments).
QUIRKS = HEADER + (
    "file1,0,Yes,,,,,Artifact\n"  # 2: study-level, empty box fields
    "file1,3,No,10,20,8,6,meniscus   TEAR\n"  # 3: a plain box, label in odd case and spacing
    "file1,3,No,5,5,0,4,Meniscus Tear\n"  # 4: zero width
    "file1,4,No,60,-1,10,12,Joint Effusion \n"  # 5: past the bottom (y = -1) and the right edge
    "file2.h5,0,No,-3,2,10,5,Bone - Lesion\n"  # 6: negative x
    "file2,1,No,50,2,5,5,bone-lesion\n"  # 7: right of the 48-wide image
    "file9,1,No,1,1,1,1,Meniscus Tear\n"  # 8: a file not in the data directory
    "file9,0,Yes,,,,,artifact\n"  # 9: study-level row of that file
)
SHAPES = {"file1": (64, 64), "file2": (32, 48)}


@pytest.fixture
def quirks(tmp_path) -> Path:
    p = tmp_path / "knee.csv"
    p.write_text(QUIRKS)
    return p


def test_the_labels_are_the_real_ones_and_match_leniently():
    assert len(ann.KNEE_LABELS) == len(set(ann.KNEE_LABELS)) == 22
    assert all(ann.canonical_label(label) == label for label in ann.KNEE_LABELS)  # no two collide
    assert ann.canonical_label("  joint   EFFUSION ") == "Joint Effusion"
    assert ann.canonical_label("bone -subchondral Edema") == "Bone- Subchondral edema"
    assert ann.canonical_label("LCL complex - high grade sprain") == "LCL Complex- High Grade Sprain"
    assert ann.canonical_label("Bone - Fracture/Contusion/dislocation") == "Bone-Fracture/Contusion/dislocation"
    assert ann.canonical_label(" ACL \t Tear ") == "ACL Tear"  # unknown: cleaned, kept


def test_each_quirk_is_counted_and_handled(quirks):
    df = ann.read_boxes(quirks, image_shape=SHAPES, files=["file1.h5", "file2"])
    assert list(df.index) == [3, 5, 6]
    assert ann.boxes_for(df, "file1", 3) == [(10, 64 - 20 - 6, 8, 6, "Meniscus Tear")]
    # y_img = 64 + 1 - 12 = 53, cut at row 64; x cut at column 64
    assert ann.boxes_for(df, "file1", 4) == [(60, 53, 4, 11, "Joint Effusion")]
    assert ann.boxes_for(df, "file2", 0) == [(0, 32 - 2 - 5, 7, 5, "Bone - Lesion")]
    assert ann.boxes_for(df, "file2", 1) == [] and ann.boxes_for(df, "file1.h5", 3) == ann.boxes_for(df, "file1", 3)
    # the whole-table index holds the same boxes, and only the slices that have one
    assert ann.slice_boxes(df) == {(f, s): ann.boxes_for(df, f, s) for f, s in [("file1", 3), ("file1", 4), ("file2", 0)]}
    assert {k: df.attrs[k] for k in ann.COUNT_ATTRS} == {
        "n_missing_file": 2, "n_study_level": 1, "n_not_lesion": 0,
        "n_degenerate": 1, "n_outside": 1, "n_clipped": 2,
    }
    assert df.attrs["missing_files"] == ["file9"]
    assert df.attrs["study_level_labels"] == ["artifact"]


def test_without_files_or_shapes_every_file_is_kept_and_only_rows_are_clipped(quirks):
    df = ann.read_boxes(quirks, image_height=64)
    assert df.attrs["n_missing_file"] == 0 and df.attrs["missing_files"] == []
    assert df.attrs["n_study_level"] == 2 and df.attrs["n_outside"] == 0
    assert ann.boxes_for(df, "file9", 1) == [(1, 64 - 1 - 1, 1, 1, "Meniscus Tear")]
    assert ann.boxes_for(df, "file1", 4) == [(60, 53, 10, 11, "Joint Effusion")]  # no right edge known
    assert ann.boxes_for(df, "file2", 1) == [(50, 64 - 2 - 5, 5, 5, "Bone - Lesion")]


def test_a_box_entirely_below_the_image_is_outside(tmp_path):
    p = tmp_path / "knee.csv"
    p.write_text(HEADER + "f,0,No,1,-20,4,10,Meniscus Tear\n")  # rows 30..39 of a 20-row image
    df = ann.read_boxes(p, image_shape={"f": (20, 20)})
    assert len(df) == 0 and df.attrs["n_outside"] == 1 and df.attrs["n_clipped"] == 0


def test_lesion_labels_filter_boxes(quirks):
    df = ann.read_boxes(quirks, image_shape=SHAPES, files=SHAPES, lesion_labels=["MENISCUS tear", "bone -  lesion"])
    assert sorted(set(df["label"])) == ["Bone - Lesion", "Meniscus Tear"]
    assert df.attrs["n_not_lesion"] == 1  # the Joint Effusion
    assert (df.attrs["n_degenerate"], df.attrs["n_outside"]) == (1, 1)
    assert ann.read_boxes(quirks, image_shape=SHAPES, lesion_labels=[]).attrs["n_not_lesion"] == 0


def test_malformed_rows_are_still_errors_naming_the_line(tmp_path):
    p = tmp_path / "knee.csv"
    p.write_text(HEADER + "f,0,No,1,1,2,2,a\ng,0,No,1,1.5,2,2,a\n")
    with pytest.raises(DataError, match=r"knee\.csv: line 3: y is '1\.5', not an integer \(file g\)"):
        ann.read_boxes(p, files=["f"])  # even in a row that would be skipped
    p.write_text("file,slice,x,y,width,height\nf,0,1,1,2,2\n")
    with pytest.raises(DataError, match=r"knee\.csv: missing column\(s\) study_level, label"):
        ann.read_boxes(p)


def test_the_file_list_reads_as_the_real_one_is(tmp_path):
    p = tmp_path / "knee_file_list.csv"
    p.write_text("file1000000\nfile1000001\n\nfile1000003.h5\nfile1000001\nKnee data\n")  # no header, a caption
    assert ann.read_file_list(p) == ["file1000000", "file1000001", "file1000003"]
    p.write_bytes(b"\xef\xbb\xbffile1\r\nfile2\r\n")  # BOM, CRLF
    assert ann.read_file_list(p) == ["file1", "file2"]


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "names no file"),
        (b"Knee data\n", "names no file"),
        (b"file1\nfile 2\nfile3\n", r"line 2: 'file 2' is not a file name"),
        (HEADER.encode() + b"file1,0,No,1,1,2,2,a\nfile1,1,No,1,1,2,2,a\n", r"line 2: 'file1,0,No"),  # knee.csv
        (b"file1\n\xff\xfe\n", "not a readable text file"),
    ],
)
def test_a_malformed_file_list_is_named(tmp_path, content, match):
    p = tmp_path / "knee_file_list.csv"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        ann.read_file_list(p)
    assert info.value.where == str(p)
    with pytest.raises(DataError, match="does not exist"):
        ann.read_file_list(tmp_path / "absent.csv")


def test_annotation_counts_tell_negatives_from_unreviewed(quirks):
    stems = ["file1", "file2.h5", "file3", "file4"]
    df = ann.read_boxes(quirks, image_shape=SHAPES, files=stems)
    counts = ann.annotation_counts(df, stems, reviewed=["file1", "file3", "file8"])
    assert counts == json.loads(json.dumps(counts))
    assert {k: counts[k] for k in ("files", "boxes", "positive", "reviewed", "negative", "unreviewed")} == {
        "files": 4, "boxes": 3, "positive": 2, "reviewed": 2, "negative": 1, "unreviewed": 1,
    }
    assert (counts["missing_file"], counts["missing_files"], counts["clipped"]) == (2, ["file9"], 2)
    unknown = ann.annotation_counts(df, stems)
    assert (unknown["positive"], unknown["negative"], unknown["unreviewed"]) == (2, 0, 2)


def test_check_data_dir_reports_the_counts(tmp_path):
    from mrlib.data.synth import SynthConfig, generate

    generate(tmp_path, SynthConfig(image_size=32, n_slices=2, n_train=1, n_val=1, n_test=1, kneemri_exams=0),
             progress=False)  # files file1000000 (train), file1001000 (val), file1002000 (test), 32x32
    adir = tmp_path / "annotations"
    (adir / "knee.csv").write_text(
        HEADER
        + "file1000000,0,No,28,2,8,6,Meniscus Tear\n"  # partly right of the image: clipped
        + "file1000000,1,No,3,3,4,0,Meniscus Tear\n"  # zero height
        + "file1000000,0,Yes,,,,,artifact\n"
        + "file1009999,0,No,1,1,2,2,Meniscus Tear\n"  # no such file here
    )
    (adir / "knee_file_list.csv").write_text("file1000000\nfile1001000\nfile1009999\nKnee data\n")
    report = check_data_dir(tmp_path, deep=False)
    assert report.ok, report.problems
    assert report.found["annotations"] == {
        "boxes": 1, "files": 1, "study_level": 1, "degenerate": 1, "clipped": 1, "outside": 0, "missing_file": 1,
        "labels": {"Meniscus Tear": 1}, "reviewed": 2, "positive": 1, "negative": 1, "unreviewed": 1,
    }
    assert "1 box(es) on 1 file(s) (1 clipped)" in report.format()
    assert "1 with a box, 1 reviewed without, 1 not reviewed" in report.format()

    (adir / "knee_file_list.csv").write_text("file1000000\nfile 1001000\nfile1009999\n")
    with open(adir / "knee.csv", "a") as f:
        f.write("file1001000,5,No,1,1,2,2,Meniscus Tear\n")  # the file has 2 slices
    report = check_data_dir(tmp_path, deep=False)
    assert sorted(Path(w).name for w, _ in report.problems) == ["knee.csv", "knee_file_list.csv"], report.problems
    assert any("line 6: slice 5 of file1001000" in what for _, what in report.problems)
    assert "reviewed" not in report.found["annotations"] and report.found["annotations"]["boxes"] == 2
