"""bench/results/quality.md from the JSON form of the figures (so it can be re-rendered from quality.json)."""

from __future__ import annotations

from typing import Any


def pct(rate: dict[str, Any] | None) -> str:
    """A Rate's JSON as "hits/n (x %)"."""
    if not rate or not rate.get("n"):
        return "n/a"
    return f"{rate['hits']}/{rate['n']} ({100 * rate['hits'] / rate['n']:.1f} %)"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def names(files: list[str], limit: int = 60) -> str:
    if not files:
        return "none"
    shown = ", ".join(f"`{f}`" for f in files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")


def _unavailable(section: dict[str, Any]) -> list[str] | None:
    if section.get("available", True) is False:
        return [f"**Unavailable**: {section.get('reason', '?')}", ""]
    return None


def header(r: dict[str, Any]) -> list[str]:
    m, code = r["machine"], r["code"]
    lines = ["# Detector quality on labelled real photos", "",
             f"Generated {r['generated']} by `{r['command']}` (`make eval`) in {r['seconds']} s.", "",
             f"Machine: {m['cpu']}, {m['cpus']} CPUs, AVX2 {'yes' if m['avx2'] else 'no'}, AVX-512 "
             f"{'yes' if m['avx512f'] else 'no'}; Python {m['python']}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".", "",
             f"Code: HEAD `{code['head']}`; the detectors change while this set is used, so the figures belong to "
             "this state of `analyzers/` (`git diff --stat -- analyzers/` at the run):", "", "```",
             code["diff_stat_analyzers"] or "(no change to tracked files)"]
    if code.get("untracked_analyzers"):
        lines += ["untracked: " + " ".join(code["untracked_analyzers"].split())]
    return lines + ["```", ""]


def dataset(d: dict[str, Any]) -> list[str]:
    lines = ["## The data set", "",
             f"{d['pictures']} pictures (bench/quality/data, labels in manifest.json, sources in PROVENANCE.md): "
             f"{d['with_face']} with at least one face ({d['faces']} faces in all), {d['face_free']} without; "
             f"{d['with_identity']} pictures of {d['people']} named people; {d['with_phone']} with a phone; "
             f"{d['poor_image']} poor images; {d['derived']} derived from another picture, {d['composite']} "
             "composites.", ""]
    lines += table(["source", "pictures"], [[k, v] for k, v in d["sources"].items()])
    lines += table(["tag", "pictures"], [[f"`{k}`", v] for k, v in d["tags"].items()])
    return lines


def faces(f: dict[str, Any]) -> list[str]:
    lines = ["## Faces (`FaceDetector`: counting, `no_face`, `multiple_people`)", ""]
    if (note := _unavailable(f)) is not None:
        return lines + note
    lines += [f"{f['status']}; a face counts at score >= {f['min_score']}. \"Clean\" leaves out the poor images.", ""]
    a, c = f["all"], f["clean"]
    lines += table(["figure", "all pictures", "clean pictures"], [
        ["presence recall (>= 1 face found where there is one)", pct(a["presence_recall"]), pct(c["presence_recall"])],
        ["false-face rate (a face found in a face-free picture)", pct(a["false_face_rate"]),
         pct(c["false_face_rate"])],
        ["presence precision (found a face: there is one)", pct(a["presence_precision"]),
         pct(c["presence_precision"])],
        ["exact count", pct(a["exact_count"]), pct(c["exact_count"])]])
    cl, nf, mp = f["closeups"], f["no_face_false_flags"], f["multiple_people"]
    lines += [f"**Close-ups missed** (tag `close_up`, a face there, none counted): {len(cl['missed'])} of {cl['n']}: "
              f"{names(cl['missed'])}.", "",
              f"**`no_face` false flags** (a face there, `no_face` active): {len(nf['files'])} of {nf['n']}: "
              f"{names(nf['files'])}.", "",
              f"**`multiple_people`**: false flags (at most one face there) {len(mp['false_flags'])} of "
              f"{mp['n_single_or_none']}: {names(mp['false_flags'])}; missed (two or more there) "
              f"{len(mp['missed'])} of {mp['n_groups']}: {names(mp['missed'])}.", "",
              f"All misses (a face there, none counted): {names(f['misses'])}.", "",
              f"All false faces (none there, one counted): {names(f['false_faces'])}.", "",
              "By tag (n = pictures with the tag; recall over those with a face, false-face rate over those "
              "without):", ""]
    rows = [[f"`{tag}`", t["n"], pct(t["presence_recall"]), pct(t["false_face_rate"]), pct(t["exact_count"])]
            for tag, t in f["by_tag"].items()]
    return lines + table(["tag", "n", "presence recall", "false-face rate", "exact count"], rows)


def poor(p: dict[str, Any]) -> list[str]:
    lines = ["## Poor image (`poor_image` signal of `FaceDetector`)", ""]
    if (note := _unavailable(p)) is not None:
        return lines + note
    s = p["scores"]
    lines += [f"Precision {pct(s['precision'])}, recall {pct(s['recall'])} (tp {s['tp']}, fp {s['fp']}, "
              f"fn {s['fn']}, tn {s['tn']}).", "",
              f"Missed: {names(p['missed'])}.", "", f"False flags: {names(p['false_flags'])}.", ""]
    rows = [[f"`{tag}`", t["n"], t["n_poor"], pct(t["scores"]["recall"]), pct(t["scores"]["precision"])]
            for tag, t in p["by_tag"].items()]
    return lines + table(["tag", "n", "poor", "recall", "precision"], rows)


def _cal_cells(cal: dict[str, Any] | None) -> list[str]:
    if not cal:
        return ["n/a"] * 3
    return [f"{cal['threshold']:.4f}", pct(cal["errors"]["false_mismatch"]), pct(cal["errors"]["false_match"])]


def _sweep(rows: list[dict[str, Any]]) -> list[str]:
    return table(["threshold", "false mismatch (same person above)", "false match (different people at or below)"],
                 [[f"{r['threshold']:.4f}", pct(r["false_mismatch"]), pct(r["false_match"])] for r in rows])


def _calibration(i: dict[str, Any]) -> list[str]:
    pairs, b, v = i["pairs"], i["best_of"], i["impostor_variants"]
    lines = ["**Calibration policy** (`bench.quality.metrics.calibrate`; IDENTITY_THRESHOLD=0 stands for "
             "`analyzers.identity.CALIBRATED`): judged on the best of the references, since a check keeps the "
             "smallest distance to the photo and the enrolled frames and an event needs two failed checks in a "
             "row; no false match on the set, since a frame that matches the photo becomes a reference; and a "
             "margin below the closest impostor measured on the impostors themselves: the threshold stays below "
             f"every distance between camera-like variants (a side cut off, JPEG 75/50, scaled 0.6x/1.5x) of both "
             f"pictures of the {len(v['pairs'])} closest different-person pairs. The false mismatch at that "
             "threshold is reported as it is.", ""]
    shipped = i.get("shipped_calibrated")
    cal = b["calibrated"]
    if cal:
        verdict = "equals" if i.get("configured_is_calibrated") else "**differs from**"
        lines += [f"Configured threshold {i['threshold']:g} {verdict} the calibrated one ({cal['threshold']:.5f}; "
                  f"CALIBRATED holds {shipped}, rounded down to 4 decimals).", ""]
    rows = [[f"`{r['a']}` / `{r['b']}`", f"{r['as_is']:.4f}", f"{r['min']:.4f} ({r['min_of']})",
             f"{r['median']:.4f}", f"{r['drop']:.4f}"] for r in v["pairs"]]
    lines += table(["closest different-person pairs", "as is", "lowest variant pair", "median of variants",
                    "drop"], rows)
    if v["pairs"]:
        lines += [f"Variants of {v['pictures']} pictures, {v['pairs'][0]['variants']} variant pairs per pair; "
                  f"largest drop {v['largest_drop']:.4f}. A pair beyond these starts at {v['beyond']:.4f} or more, "
                  f"{v['beyond'] - (cal['threshold'] if cal else 0):.4f} above the threshold.", ""]
    lines += [f"Re-framed pairs (pictures of one photograph of one person): {pairs['reframing']}, distances "
              f"{pairs['reframing_distance']}.", ""]
    for label, c in (("one photo", i["calibrated"]), (f"best of {b['k']}", cal)):
        if c:
            lines += [f"- {label}: closest different-person distance {c['zero_false_match_limit']:.4f}, margin "
                      f"{c['margin']:.4f}, calibrated {c['threshold']:.4f}: false mismatch "
                      f"{pct(c['errors']['false_mismatch'])}, false match {pct(c['errors']['false_match'])} "
                      f"(just below the limit, no margin: false mismatch "
                      f"{pct(c['at_limit']['false_mismatch'])}, false match {pct(c['at_limit']['false_match'])})."]
    if b.get("farthest_same"):
        lines += ["", f"Farthest best-of-{b['k']} same-person distances: "
                  + ", ".join(str(d) for d in b["farthest_same"]) + "."]
    return lines


def _poor_probes(pp: dict[str, Any]) -> list[str]:
    checked = pp["checked"]
    return [f"**Poor pictures** of a known person ({pp['pictures']}: labelled poor, or judged poor by "
            f"`analyzers.image_quality.assess`): the detector skips {pp['skipped']} of them (no identity signal; "
            "the faces detector raises poor_image instead), so they never raise a mismatch; checked anyway they "
            f"would give false mismatch {pct(pp['if_checked']['false_mismatch'])} against that person's other "
            f"photographs. Not skipped ({len(checked)}: {names(checked)}): false mismatch "
            f"{pct(pp['at_threshold']['false_mismatch'])}, false match {pct(pp['at_threshold']['false_match'])} "
            "(at the configured threshold).", ""]


def identity(i: dict[str, Any]) -> list[str]:
    lines = ["## Identity (`IdentityDetector.embed`, `analyzers.identity.distance`)", ""]
    if (note := _unavailable(i)) is not None:
        return lines + note
    pairs, b = i["pairs"], i["best_of"]
    lines += [f"{i['status']}. Configured threshold {i['threshold']:g} ({i['metric']}); a distance above it is a "
              "mismatch.", "",
              f"{i['images_with_identity']} pictures of {i['people']} known people; **no embeddable face** in "
              f"{len(i['unembeddable'])} (counted apart, never a mismatch): {names(i['unembeddable'])}.", "",
              f"Pairs among the {i['embedded_clean']} embedded clean pictures (neither labelled poor nor skipped as "
              "poor by the detector), never a picture with its own "
              f"derivative or a sibling of one photograph: {pairs['same']} same-person, {pairs['different']} "
              f"different-person. Same-person distances {pairs['same_distance']}, different-person "
              f"{pairs['different_distance']}.", ""]
    single_at, best_at = i["at_threshold"], b["at_threshold"]
    lines += table(["references", "same-person comparisons", "false mismatch at configured",
                    "different-person comparisons", "false match at configured", "calibrated threshold",
                    "false mismatch at calibrated", "false match at calibrated"], [
        ["one photo", pairs["same"], pct(single_at["false_mismatch"]), pairs["different"],
         pct(single_at["false_match"]), *_cal_cells(i["calibrated"])],
        [f"best of {b['k']} ({b['enrolled_people']} people, {b['reference_sets']} reference sets)", b["same"],
         pct(best_at["false_mismatch"]), b["different"], pct(best_at["false_match"]), *_cal_cells(b["calibrated"])]])
    lines += _calibration(i)
    lines += ["", "Closest different-person pairs: " + ", ".join(
        f"`{p['a']}`/`{p['b']}` {p['distance']}" for p in pairs["closest_different"]) + ".", "",
        "Farthest same-person pairs: " + ", ".join(
        f"`{p['a']}`/`{p['b']}` {p['distance']}" for p in pairs["farthest_same"]) + ".", ""]
    lines += _poor_probes(i["poor_probes"])
    lines += ["Threshold sweep, one reference photo:", ""]
    lines += _sweep(i["sweep"])
    lines += [f"Threshold sweep, best of {b['k']} references:", ""]
    lines += _sweep(b["sweep"])
    lines += ["By tag (pairs where either picture has the tag):", ""]
    rows = [[f"`{tag}`", t["at_threshold"]["false_mismatch"]["n"], pct(t["at_threshold"]["false_mismatch"]),
             t["at_threshold"]["false_match"]["n"], pct(t["at_threshold"]["false_match"]),
             pct(t.get("at_calibrated", {}).get("false_mismatch")), pct(t.get("at_calibrated", {}).get("false_match"))]
            for tag, t in i["by_tag"].items()]
    return lines + table(["tag", "same-person pairs", "false mismatch", "different-person pairs", "false match",
                          "false mismatch (calibrated)", "false match (calibrated)"], rows)


def phone(p: dict[str, Any]) -> list[str]:
    lines = ["## Phone (`PhoneDetector`) and persons", ""]
    if (note := _unavailable(p)) is not None:
        return lines + note
    at = p["at_conf"]["scores"]
    lines += [f"{p['status']} (API `{p['api']}`). Image level: a picture is flagged when a phone box scores at or "
              f"above the threshold.", "",
              f"At the configured PHONE_CONF {p['conf']}: recall {pct(at['recall'])}, precision "
              f"{pct(at['precision'])} (tp {at['tp']}, fp {at['fp']}, fn {at['fn']}).", ""]
    lines += table(["score threshold", "recall", "precision", "false positives", "phone pictures missed"],
                   [[r["conf"], pct(r["scores"]["recall"]), pct(r["scores"]["precision"]), r["scores"]["fp"],
                     r["scores"]["fn"]] for r in p["sweep"]])
    without = list(p["best_scores_without_phone"].items())[:12]
    lines += ["Best phone score of each picture with a phone: "
              + ", ".join(f"`{k}` {v}" for k, v in p["best_scores_with_phone"].items()) + ".", "",
              "Highest phone scores in pictures without a phone: "
              + (", ".join(f"`{k}` {v}" for k, v in without) or "none") + ".", ""]
    rows = [[f"`{tag}`", t["n"], t["n_with_phone"], pct(t["scores"]["recall"]), pct(t["scores"]["precision"])]
            for tag, t in p["by_tag"].items()]
    lines += table(["tag", "n", "with phone", "recall", "precision"], rows)
    persons = p["persons"]
    lines += ["### Persons", ""]
    if (note := _unavailable(persons)) is not None:
        return lines + note
    lines += [f"Against the `persons` label (people in view, faces hidden or not), threshold {persons['conf']}: "
              f"exact count {pct(persons['exact_count'])}, presence recall {pct(persons['presence_recall'])}, "
              f"a person found in a picture with nobody {pct(persons['false_person_rate'])}, mean absolute count "
              f"error {persons['mean_abs_error']}.", ""]
    return lines + table(["tag", "n", "exact count"],
                         [[f"`{tag}`", t["n"], pct(t["exact_count"])] for tag, t in persons["by_tag"].items()])


def gaze(g: dict[str, Any]) -> list[str]:
    lines = ["## Gaze", ""]
    if (note := _unavailable(g)) is not None:
        return lines + note
    return lines + [f"{g['measured']} of {g['n']} labelled pictures measured: yaw error {g['yaw_mae']} deg, pitch "
                    f"error {g['pitch_mae']} deg (mean absolute).", ""]


def _delay(d: dict[str, Any]) -> str:
    if d.get("median") is None:
        return "n/a"
    return f"{d['median']:+.1f} / {d['max']:+.1f}"


def _span(event: dict[str, Any]) -> str:
    return f"{event['start']:.1f}-{event['end']:.1f} s"


def clips(c: dict[str, Any]) -> list[str]:
    lines = ["## Clips (events, as a reviewer sees them)", ""]
    if (note := _unavailable(c)) is not None:
        return lines + note
    if c.get("generated"):  # run apart from the photo sections (--only clips), or kept by --only photos
        code = c.get("code") or {}
        lines += [f"This section ran on its own: {c['generated']}, HEAD `{code.get('head', '?')}`"
                  f"{' with changes in analyzers/' if code.get('diff_stat_analyzers') else ''}.", ""]
    lines += [f"{len(c['clips'])} clips scripted from the photos (bench/quality/clips.json; bench/quality/clips.py "
              f"says how): {c['size'][0]}x{c['size'][1]} at {c['fps']} fps, a light sway/zoom and sensor noise, "
              f"encoded and decoded with {c['codec']}; every detector at its own rate, its signals through "
              "`core.rules.EventRules` (ticked every 0.5 s, flushed at the end). Expected events come from the "
              "scenes' labels, scene start to scene end. Found: an event of the kind overlaps the expected one; "
              "false flag: an event overlapping no expected one of its kind. Delays in seconds (median / largest): "
              "start = event start - scene start, end = event end - scene end (core.rules dates an event from the "
              "first frame of its run); started (told) after = the media time the rules started it - scene start." + (
                  f" Generated {c['generated']} in {c.get('total_seconds', c.get('seconds'))} s." if c.get("generated")
                  else f" {c.get('seconds')} s."), ""]
    summary = c["summary"]
    rows = [[f"`{kind}`", s["expected"], s["found"], s["false_flags"], _delay(s["start_delay"]),
             _delay(s["end_delay"]), _delay(s.get("confirm_delay", {}))]
            for kind, s in summary.items() if kind != "unlabelled"]
    lines += table(["kind", "expected", "found", "false flags", "start delay", "end delay", "started (told) after"],
                   rows)
    unlabelled = summary.get("unlabelled", {})
    lines += ["Unlabelled (not scored, listed per clip): "
              + (", ".join(f"`{k}` {v} events" for k, v in unlabelled.items()) or "none") + ".", ""]
    rows = []
    for clip in c["clips"]:
        expected = ", ".join(f"{e['kind']} {_span(e)}" for e in clip["expected"]) or "nothing"
        produced = ", ".join(f"{e['kind']} {_span(e)}" + ("" if e["verdict"] == "match" else f" **{e['verdict']}**")
                             for e in clip["events"]) or "none"
        rows.append([f"`{clip['name']}`", clip["seconds"], expected, produced, clip["run_seconds"]])
    lines += table(["clip", "seconds", "expected", "events (verdict unless a match)", "run s"], rows)
    for clip in c["clips"]:
        if clip.get("unavailable") or not all(clip.get("reference_set", {}).values()):
            lines += [f"`{clip['name']}`: unavailable detectors {clip.get('unavailable') or 'none'}; reference set "
                      f"{clip.get('reference_set')}.", ""]
    return lines


def render_markdown(r: dict[str, Any]) -> str:
    seconds = {name: r[name].get("seconds") for name in ("identity", "phone", "gaze")}
    lines = header(r) + dataset(r["dataset"]) + faces(r["faces"]) + poor(r["poor_image"]) + identity(r["identity"])
    lines += phone(r["phone"]) + gaze(r["gaze"])
    if "clips" in r:
        lines += clips(r["clips"])
    lines += ["Seconds per section: faces and poor image " + str(r["faces"].get("seconds", "?")) + ", "
              + ", ".join(f"{k} {v}" for k, v in seconds.items()) + ".", ""]
    return "\n".join(lines)
