"""The quality harness's arithmetic (bench/quality/metrics.py) on tiny made-up data, and the real manifest's shape.

No model runs here: `python -m bench.quality` (`make eval`) is what runs the detectors over the photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.quality import manifest as mf
from bench.quality import metrics as mx

DATA = Path(__file__).resolve().parents[1] / "bench" / "quality" / "data"


def entry(file: str, person: str | None = None, derived_from: str | None = None, photo: str | None = None,
          **labels: object) -> mf.Entry:
    raw: dict[str, object] = {"file": file, "faces": 1 if person else 0, "persons": 1 if person else 0,
                              "person": person, "phones": 0, "poor_image": False, "tags": [],
                              "source": "made up for a test", "licence": "CC0", "composite": False,
                              "derived_from": derived_from, **labels}
    if photo is not None:
        raw["photo"] = photo
    return mf.Entry.from_json(raw)


def embedding(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def euclidean(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


# --- independence and pairs -----------------------------------------------------------------------------------
def test_independence_key_follows_derived_from_and_stops_at_a_named_photo() -> None:
    entries = [entry("a.jpg", "ann"), entry("cu_a.jpg", "ann", derived_from="a.jpg"),
               entry("dark_cu_a.jpg", "ann", derived_from="cu_a.jpg"),
               entry("collage.jpg"), entry("tile_1.jpg", "bob", derived_from="collage.jpg", photo="tile_1.jpg"),
               entry("tile_2.jpg", "bob", derived_from="collage.jpg", photo="tile_2.jpg"),
               entry("blur_tile_1.jpg", "bob", derived_from="tile_1.jpg"),
               entry("copy_of_a.jpg", "ann", photo="a.jpg")]
    by_file = {e.file: e for e in entries}
    keys = {e.file: mf.independence_key(e, by_file) for e in entries}
    assert keys["cu_a.jpg"] == keys["dark_cu_a.jpg"] == keys["copy_of_a.jpg"] == "a.jpg"
    assert keys["tile_1.jpg"] == keys["blur_tile_1.jpg"] == "tile_1.jpg"  # a tile is its own photograph
    assert keys["tile_2.jpg"] == "tile_2.jpg"


def test_pairs_skip_a_picture_with_its_own_derivative_and_siblings() -> None:
    samples = [mx.Sample("a.jpg", "ann", "a.jpg", embedding(0, 0)),
               mx.Sample("cu_a.jpg", "ann", "a.jpg", embedding(0, 1)),  # a close-up of a.jpg
               mx.Sample("cu2_a.jpg", "ann", "a.jpg", embedding(0, 2)),  # another close-up of it
               mx.Sample("a2.jpg", "ann", "a2.jpg", embedding(1, 0)),  # another photo of ann
               mx.Sample("b.jpg", "bob", "b.jpg", embedding(5, 0)),
               mx.Sample("group_c.jpg", "cid", "b.jpg", embedding(9, 0))]  # another person cut from b's photo
    found = {(p.a, p.b): p for p in mx.pairs(samples, euclidean)}
    assert ("a.jpg", "cu_a.jpg") not in found and ("cu_a.jpg", "cu2_a.jpg") not in found
    assert found[("a.jpg", "a2.jpg")].same and found[("cu_a.jpg", "a2.jpg")].same
    assert not found[("a.jpg", "b.jpg")].same and found[("a.jpg", "b.jpg")].distance == pytest.approx(5.0)
    assert ("b.jpg", "group_c.jpg") in found and not found[("b.jpg", "group_c.jpg")].same
    assert sum(p.same for p in found.values()) == 3  # a2 with each of a, cu_a, cu2_a
    assert sorted(mx.reframing_distances(samples, euclidean)) == pytest.approx([1.0, 1.0, 2.0])


# --- thresholds -------------------------------------------------------------------------------------------------
def test_errors_at_a_threshold_follow_the_detectors_convention() -> None:
    errors = mx.errors_at(same=[0.1, 0.2, 0.3], different=[0.3, 0.5], threshold=0.3)
    assert (errors.false_mismatch.hits, errors.false_mismatch.n) == (0, 3)  # 0.3 is not above 0.3: a match
    assert (errors.false_match.hits, errors.false_match.n) == (1, 2)  # 0.3 at the threshold: accepted
    errors = mx.errors_at(same=[0.1, 0.2, 0.3], different=[0.3, 0.5], threshold=0.25)
    assert errors.false_mismatch.hits == 1 and errors.false_match.hits == 0


def test_calibration_stays_below_the_closest_impostor_by_the_reframing_margin() -> None:
    same = [0.02, 0.04, 0.05, 0.09]
    different = [0.2, 0.08, 0.3, 0.25]
    cal = mx.calibrate(same, different, reframing=[0.01, 0.02, 0.03])
    assert cal is not None
    assert cal.zero_false_match_limit == pytest.approx(0.08) and cal.margin == pytest.approx(0.02)
    assert cal.threshold == pytest.approx(0.06)
    assert cal.errors.false_match.hits == 0 and cal.errors.false_mismatch.hits == 1  # 0.09
    assert cal.at_limit.false_match.hits == 0 and cal.at_limit.threshold < 0.08


def test_calibration_edge_cases() -> None:
    assert mx.calibrate([0.1], []) is None
    fallback = mx.calibrate([0.1], [0.2])
    assert fallback is not None and fallback.threshold == pytest.approx(0.2 * (1 - mx.FALLBACK_MARGIN))
    huge_margin = mx.calibrate([0.1], [0.2], reframing=[0.5])
    assert huge_margin is not None and huge_margin.threshold == 0.0
    no_margin = mx.calibrate([0.1], [0.2], reframing=[0.0])
    assert no_margin is not None and no_margin.threshold < 0.2  # never at the impostor itself
    assert no_margin.errors.false_match.hits == 0


def test_sweep_is_sorted_and_deduplicated() -> None:
    rows = mx.sweep([0.1], [0.2], [0.3, 0.1, 0.1000000001, 0.2])
    assert [r.threshold for r in rows] == [0.1, 0.2, 0.3]
    assert [r.false_match.hits for r in rows] == [0, 1, 1]


def test_best_of_k_references_use_the_smallest_distance_and_skip_the_references_photos() -> None:
    samples = [mx.Sample(f"ann{i}.jpg", "ann", f"ann{i}.jpg", embedding(float(i), 0)) for i in range(4)]
    samples.append(mx.Sample("cu_ann0.jpg", "ann", "ann0.jpg", embedding(0, 0.5)))  # ann0's close-up
    samples.append(mx.Sample("bob.jpg", "bob", "bob.jpg", embedding(10, 0)))
    sets = mx.reference_sets(samples, 3)
    assert len(sets) == 4 and all(person == "ann" for person, _ in sets)  # bob has 1 photo: never enrolled
    assert [r.file for r in sets[0][1]] == ["ann0.jpg", "ann1.jpg", "ann2.jpg"]  # the original, not the close-up
    result = mx.best_of(samples, 3, euclidean)
    assert result.enrolled_people == 1 and result.reference_sets == 4
    # refs ann0-2: probe ann3 (1.0); refs ann1-3: probes ann0 (1.0) and its close-up (hypot(1, .5));
    # refs ann2,3,0 and ann3,0,1: ann0's photo is a reference, so only ann1 / ann2 (1.0 each)
    assert sorted(result.same) == pytest.approx(sorted([1.0, 1.0, float(np.hypot(1, 0.5)), 1.0, 1.0]))
    assert sorted(result.different) == pytest.approx([7.0, 7.0, 7.0, 8.0])  # bob against each set's nearest


# --- counting -----------------------------------------------------------------------------------------------------
def test_face_presence_and_count_figures() -> None:
    labels = [0, 0, 1, 2, 1, 3]
    found = [0, 1, 1, 1, 0, 3]
    assert (mx.presence_recall(labels, found).hits, mx.presence_recall(labels, found).n) == (3, 4)
    assert (mx.false_face_rate(labels, found).hits, mx.false_face_rate(labels, found).n) == (1, 2)
    assert (mx.presence_precision(labels, found).hits, mx.presence_precision(labels, found).n) == (3, 4)
    assert (mx.exact_count(labels, found).hits, mx.exact_count(labels, found).n) == (3, 6)
    assert mx.Rate(0, 0).value is None and str(mx.Rate(0, 0)) == "n/a (n=0)"
    assert str(mx.Rate(1, 4)) == "1/4 (25.0 %)"


def test_binary_precision_and_recall() -> None:
    scores = mx.binary([True, True, False, False, True], [True, False, True, False, True])
    assert (scores.tp, scores.fp, scores.fn, scores.tn) == (2, 1, 1, 1)
    assert scores.precision.value == pytest.approx(2 / 3) and scores.recall.value == pytest.approx(2 / 3)
    assert mx.binary([False], [False]).precision.value is None  # nothing flagged: no precision to speak of
    assert isinstance(mx.rate(np.array([True, False])).hits, int)  # numpy booleans give plain ints (JSON)


# --- the manifest ---------------------------------------------------------------------------------------------
def test_validate_catches_bad_entries() -> None:
    good = {"file": "a.jpg", "faces": 1, "persons": 1, "person": "ann", "phones": 0, "poor_image": False,
            "tags": ["portrait"], "source": "made up for a test", "licence": "CC0", "composite": False,
            "derived_from": None}
    assert mf.validate([good]) == []
    bad = [dict(good, faces=-1), dict(good, file="b.jpg", faces=2), dict(good, file="c.jpg", derived_from="x.jpg"),
           dict(good, file="d.jpg", licence=""), dict(good, file="e.jpg", colour="red"),
           dict(good, file="f.jpg", gaze={"yaw": 3})]
    errors = mf.validate([good, *bad])
    for needle in ("'faces'", "b.jpg: an identity needs", "c.jpg: derived_from", "d.jpg: bad or missing 'licence'",
                   "e.jpg: unknown fields", "f.jpg: gaze"):
        assert any(needle in e for e in errors), needle
    assert any("cycle" in e for e in mf.validate([dict(good, derived_from="b.jpg"),
                                                  dict(good, file="b.jpg", derived_from="a.jpg")]))


def test_the_manifest_is_well_formed() -> None:
    raw = json.loads((DATA / "manifest.json").read_text())
    assert mf.validate(raw, DATA) == []
    listed = {item["file"] for item in raw}
    on_disk = {path.name for path in DATA.glob("*.jpg")}
    assert listed == on_disk, (sorted(on_disk - listed), sorted(listed - on_disk))
    entries = mf.load(DATA)
    assert all(e.licence and e.source for e in entries)
    assert all(e.derived_from is not None for e in entries if "derived" in e.tags and not e.file.startswith(
        "covered_hand"))  # a hand over the lens may come from a photo outside the set
    closeups = [e for e in entries if "close_up" in e.tags and e.derived_from is not None and e.faces >= 1]
    assert len(closeups) >= 40
    assert sum(e.phones >= 1 and e.composite for e in entries) >= 10
    assert sum(e.faces == 0 and e.persons == 0 and not e.poor_image for e in entries) >= 20  # face-free photos
    for kind in ("dark", "bright", "blur", "covered"):
        assert sum(kind in e.tags and e.poor_image for e in entries) >= 10, kind
    people = {e.person for e in entries if e.person}
    assert len(people) >= 10
    total = sum(path.stat().st_size for path in DATA.iterdir())
    assert total < 15 * 2**20, total


# --- clips: events judged as a reviewer sees them ---------------------------------------------------------------
def test_clip_scoring_counts_found_false_flags_and_delays() -> None:
    from bench.quality.clips import Produced, Span, score

    expected = [Span("no_face", 8.0, 18.0), Span("no_face", 26.0, 30.0), Span("phone", 40.0, 46.0)]
    produced = [Produced("no_face", 8.5, 19.0),  # found: starts 0.5 s late, ends 1 s late
                Produced("no_face", 33.0, 35.0),  # overlaps nothing: a false flag
                Produced("phone", 20.0, 20.0),  # an instant outside the phone scene: a false flag
                Produced("multiple_people", 40.0, 42.0),  # no multiple_people expected: a false flag
                Produced("looking_away", 1.0, 6.0)]  # not labelled: never scored
    result = score(expected, produced)
    kinds = result["kinds"]
    assert result["verdicts"] == ["match", "false_flag", "false_flag", "false_flag", "unlabelled"]
    assert (kinds["no_face"]["expected"], kinds["no_face"]["found"], kinds["no_face"]["false_flags"]) == (2, 1, 1)
    assert kinds["no_face"]["start_delays"] == [0.5] and kinds["no_face"]["end_delays"] == [1.0]
    assert kinds["no_face"]["missed"] == [[26.0, 30.0]]
    assert (kinds["phone"]["expected"], kinds["phone"]["found"], kinds["phone"]["false_flags"]) == (1, 0, 1)
    assert kinds["multiple_people"]["false_flags"] == 1
    assert "looking_away" not in kinds


def test_clip_scoring_takes_the_first_start_and_last_end_and_touching_is_no_overlap() -> None:
    from bench.quality.clips import Produced, Span, score

    expected = [Span("phone", 10.0, 16.0)]
    # Two events within the scene (the vote broke): one expected event found once, delays from first and last.
    produced = [Produced("phone", 11.0, 12.0), Produced("phone", 13.0, 17.5), Produced("phone", 16.0, 18.0)]
    kinds = score(expected, produced)["kinds"]
    assert (kinds["phone"]["found"], kinds["phone"]["false_flags"]) == (1, 1)  # the last one only touches the end
    assert kinds["phone"]["start_delays"] == [1.0] and kinds["phone"]["end_delays"] == [1.5]


def test_clip_scoring_does_not_judge_a_kind_where_the_labels_cannot_tell() -> None:
    from bench.quality.clips import Produced, Span, score

    unjudged = [Span("identity_mismatch", 10.0, 18.0)]
    # The first starts in a group scene and ends 2 s after it (the end hysteresis): not judged; the second is apart.
    produced = [Produced("identity_mismatch", 11.0, 20.0), Produced("identity_mismatch", 21.0, 22.0)]
    result = score([], produced, unjudged)
    assert result["verdicts"] == ["not_judged", "false_flag"]
    assert result["kinds"]["identity_mismatch"]["false_flags"] == 1


def test_expected_events_follow_the_labels_merge_adjacent_scenes_and_skip_glimpses() -> None:
    from bench.quality.clips import Clip, Scene, expected_events

    entries = {e.file: e for e in [
        entry("ref.jpg", person="ann"), entry("ann.jpg", person="ann"), entry("bob.jpg", person="bob"),
        entry("room.jpg"), entry("room2.jpg"), entry("covered.jpg", poor_image=True),
        entry("phone.jpg", person="ann", phones=1), entry("group.jpg", faces=2, persons=2)]}
    clip = Clip("c", "", "ref.jpg", (
        Scene("ann.jpg", 5), Scene("room.jpg", 4), Scene("room2.jpg", 3), Scene("covered.jpg", 6),
        Scene("phone.jpg", 1, glimpse=True), Scene("phone.jpg", 6), Scene("bob.jpg", 10), Scene("group.jpg", 5)))
    expected, unjudged = expected_events(clip, entries)
    assert [(s.kind, s.start, s.end) for s in expected] == [
        ("no_face", 5.0, 12.0), ("poor_image", 12.0, 18.0), ("phone", 19.0, 25.0),
        ("identity_mismatch", 25.0, 35.0), ("multiple_people", 35.0, 40.0)]
    assert ("identity_mismatch", 35.0, 40.0) in [(s.kind, s.start, s.end) for s in unjudged]  # a group: unknown


def test_the_clip_manifest_refers_only_to_photos_in_the_manifest() -> None:
    from bench.quality import clips

    raw = json.loads(clips.CLIPS_FILE.read_text())
    files = {e.file for e in mf.load(DATA)}
    assert clips.validate(raw, files) == []
    parsed = clips.parse(raw)
    assert 6 <= len(parsed) <= 10
    assert all(30 <= clip.seconds <= 60 for clip in parsed)
    assert clips.validate([{"name": "x", "reference": "nope.jpg", "scenes": [{"image": "gone.jpg", "seconds": 0}]}],
                          files) == ["x: reference 'nope.jpg' is not in the manifest",
                                     "x: scene image 'gone.jpg' is not in the manifest",
                                     "x: scene 'gone.jpg' has bad seconds 0"]


def test_letterbox_keeps_the_picture_whole_and_its_brightness() -> None:
    from bench.quality.clips import HEIGHT, WIDTH, letterbox

    dark = np.full((150, 150, 3), 12, np.uint8)
    framed = letterbox(dark)
    assert framed.shape == (HEIGHT, WIDTH, 3)
    assert int(framed.max()) == 12  # the bars in the picture's border colour: a dark picture stays dark


def test_clip_scoring_reports_when_the_rules_started_the_event() -> None:
    from bench.quality.clips import Produced, Span, score, summarize

    expected = [Span("no_face", 8.0, 18.0)]
    produced = [Produced("no_face", 8.0, 18.0, confirmed=11.0)]  # dated from its first frame, told 3 s later
    kinds = score(expected, produced)["kinds"]
    assert kinds["no_face"]["start_delays"] == [0.0] and kinds["no_face"]["confirm_delays"] == [3.0]
    summary = summarize([{"score": {"kinds": kinds}, "events": [{"kind": "looking_away"}]}])
    assert summary["no_face"]["confirm_delay"] == {"median": 3.0, "max": 3.0}
    assert summary["unlabelled"] == {"looking_away": 1}
