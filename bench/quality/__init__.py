"""Detector quality on a labelled set of real photos (issue 13): `python -m bench.quality [DIR]`, `make eval`.

data/ holds the photos and manifest.json (their labels; data/PROVENANCE.md says where each comes from),
build_data.py rebuilds the photos from the packages they ship in, manifest.py reads and checks the labels,
metrics.py holds the pure arithmetic (recall, pairs, threshold calibration) and __main__.py runs the detectors
and writes bench/results/quality.md and quality.json.
"""
