"""``broaden report``: escaping, tables, curves, explorer, media, missing sections, atomic writes, CLI.

Result folders are written here by hand from docs/results-format.md (so the report is tested against the
documented format, not against the simulator's code), with hostile strings in every data-derived field.
"""
from __future__ import annotations

import base64
import io as _io
import json
import re
import wave
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from broaden import io
from broaden.cli import main
from broaden.metrics import binary_view, operating_points
from broaden.report import ReportError, report
from broaden.report import media, plots, safe
from broaden.report.data import MetricColumn, MetricTable
from broaden.report.sections import best_rows

XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
CLASSES = ["calm", XSS[0], XSS[1]]
GROUPS = ["Random", "Stat-AL", f"Stat-AL+LSB-LT{XSS[1]}", XSS[0]]
REFERENCE = "Stat-AL"
TABLE1 = ("multiclass_loss", "multiclass_loss_ordinal", "multiclass_loss_nominal", "yield", "confident_yield",
          "noisy_share", "n_selected")
TABLE2 = ("auc", "f1", "r_at_p40", "r_at_p50", "r_at_p60", "r_at_p70", "r_at_p80", "r_at_p90", "tpr_at_fpr1",
          "max_beta_variance", "multiclass_loss", "accuracy", "macro_f1")
SECTIONS = ("table1", "table2", "curves", "trends", "lookalike", "explorer", "confusion")
K = 3


def _summary(values):
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None,
            "values": [float(x) for x in v]}


def _probs(rng, labels, n_classes, skill):
    """Probabilities that favour the true class by ``skill`` (imperfect, so curves and errors exist)."""
    logits = rng.normal(0, 1, (len(labels), n_classes))
    logits[np.arange(len(labels)), labels] += skill
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def write_simulation(root: Path, *, repeats: int = 3, rounds: int = 2, seed: int = 0, media_dir: Path | None = None,
                     with_results: bool = True, with_case_study: bool = True) -> Path:
    """A result folder in the documented format; returns it. Values are random but recorded in results.json."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    config = {"format_version": 1, "dataset": f"toy{XSS[0]}", "num_classes": 3, "class_names": CLASSES,
              "task": "multiclass", "discrepancy": "nominal", "budget": 50, "initial": 100, "lsb_share": 0.2,
              "rounds": rounds, "repeats": repeats, "seed": 0, "label_noise": 0.0, "seed_threshold": 0.5,
              "k": K, "lookalike_threshold": 0.4, "latent": "tuned", "groups": GROUPS,
              "features": {"kind": "pair", "encoder": "MiniLM", "fields": ["query", XSS[1]]}}
    (root / "config.json").write_text(json.dumps(config))
    files = {"test_predictions": [], "lookalike": [], "case_study": [], "selections": []}
    for r in range(repeats):
        d = root / "repeats" / f"repeat-{r:03d}"
        d.mkdir(parents=True)
        y = rng.integers(0, 3, 300)
        tp = [pa.table({"group": [g] * len(y), "id": pa.array(np.arange(len(y))), "label": pa.array(y, pa.int64()),
                        "probs": io.matrix_to_list_array(_probs(rng, y, 3, 1.0 + i))})
              for i, g in enumerate(["Initial", *GROUPS])]
        io.write_table(pa.concat_tables(tp), d / "test_predictions.parquet")
        z = rng.integers(0, 2, 80)
        io.write_table(pa.table({"round": pa.array(np.ones(80, np.int64)), "group": [GROUPS[2]] * 80,
                                 "id": pa.array(np.arange(80)), "z": pa.array(z, pa.int64()),
                                 "lt_score": np.clip(0.3 + 0.3 * z + rng.normal(0, 0.15, 80), 0, 1)}),
                       d / "lookalike.parquet")
        sel = []
        for rnd in range(1, rounds + 1):
            for g in GROUPS:
                lab = rng.integers(0, 3, 50)
                strategy = np.where(np.arange(50) < 40, "entropy", "lsb-lt" if "LSB" in g else "margin")
                sel.append(pa.table({"round": pa.array(np.full(50, rnd), pa.int64()), "group": [g] * 50,
                                     "id": pa.array(np.arange(50)), "strategy": strategy.tolist(),
                                     "label": pa.array(lab, pa.int64()),
                                     "probs": io.matrix_to_list_array(_probs(rng, lab, 3, 0.5))}))
        io.write_table(pa.concat_tables(sel), d / "selections.parquet")
        for name in files:
            files[name].append(f"repeats/repeat-{r:03d}/{name}.parquet")
        if with_case_study:
            io.write_table(case_study(rng, media_dir), d / "case_study.parquet")
    if not with_case_study:
        files["case_study"] = []
    if not with_results:
        return root
    t1 = {g: {m: _summary(rng.random(repeats)) for m in TABLE1} for g in GROUPS}
    t2 = {g: {m: _summary(rng.random(repeats)) for m in TABLE2} for g in ["Initial", *GROUPS]}
    tests = {g: {"table1": {m: {"n": repeats, "mean_diff": 0.01 * i, "wins": 2, "losses": 1, "ties": 0,
                                "wilcoxon_p": 0.5} for m in TABLE1},
                 "table2": {m: {"n": repeats, "mean_diff": -0.02 * i, "wins": 1, "losses": 2, "ties": 0,
                                "wilcoxon_p": None} for m in TABLE2}}
             for i, g in enumerate(GROUPS) if g != REFERENCE}
    per_round = {g: [{"round": rnd, "table1": {m: _summary(rng.random(repeats)) for m in TABLE1},
                      "table2": {m: _summary(rng.random(repeats)) for m in TABLE2}} for rnd in range(1, rounds + 1)]
                 for g in GROUPS}
    results = {"format_version": 1, "config": config, "repeats_done": list(range(repeats)), "groups": GROUPS,
               "reference_group": REFERENCE, "table1": t1, "table2": t2, "paired_tests": tests, "rounds": per_round,
               "lookalike": {GROUPS[2]: {"auc": _summary([0.7, 0.8, 0.75][:repeats]), "threshold": 0.4}},
               "confusion_matrix": {g: rng.integers(0, 30, (3, 3)).tolist() for g in GROUPS},
               "files": {"repeats": [f"repeats/repeat-{r:03d}.json" for r in range(repeats)], **files}}
    (root / "results.json").write_text(json.dumps(results))
    return root


def case_study(rng, media_dir: Path | None) -> pa.Table:
    """Two seeds per LSB group with K neighbours each; texts hostile; optional images and audio."""
    rows = []
    for g in GROUPS[2:]:
        for s in range(2):
            seed_label = int(rng.integers(0, 3))
            seed_probs = _probs(rng, np.array([(seed_label + 1) % 3]), 3, 3.0)[0]
            for k in range(1, K + 1):
                nb_label = int(rng.integers(0, 3))
                rows.append({"round": 1, "group": g, "seed_id": f"s{s}-{GROUPS.index(g)}{XSS[1]}",
                             "seed_label": seed_label,
                             "seed_probs": seed_probs.tolist(), "seed_text": f"{XSS[0]} | seed {s}",
                             "neighbor_id": f"n{s}-{k}", "neighbor_rank": K + 1 - k,
                             "similarity": float(0.9 - 0.1 * k), "lookalike_score": float(0.3 + 0.1 * k),
                             "neighbor_label": nb_label,
                             "neighbor_probs": _probs(rng, np.array([nb_label]), 3, 1.0)[0].tolist(),
                             "neighbor_text": f"{XSS[1]} | neighbour {k}", "selected": k == 1})
    t = pa.Table.from_pylist(rows)
    if media_dir is not None:
        img = (np.arange(16 * 16) % 256).astype(np.uint8).tolist()
        t = t.append_column("seed_image", pa.array([img] * len(rows), pa.list_(pa.uint8())))
        t = t.append_column("neighbor_audio_path", pa.array([str(media_dir / "small.wav")] * len(rows)))
    return t


def make_sim_dir(root: Path) -> Path:
    media_dir = root / "media"
    media_dir.mkdir(parents=True)
    (media_dir / "small.wav").write_bytes(media.wav_bytes(np.zeros(400), 8000))
    return write_simulation(root / "sim", media_dir=media_dir)


@pytest.fixture
def sim_dir(tmp_path) -> Path:
    return make_sim_dir(tmp_path)


@pytest.fixture(scope="module")
def sim_page(tmp_path_factory) -> tuple[Path, str]:
    """One rendered report shared by the tests that only read it (rendering takes a second or two)."""
    root = tmp_path_factory.mktemp("sim-page")
    sim = make_sim_dir(root)
    return sim, report(sim, root / "r.html").read_text()


# --------------------------------------------------------------------------------------- parsing
class Page(HTMLParser):
    """Every start tag with its attributes, the text of each element kind, and the script bodies."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section[^>]*id="{sid}".*?</section>', html, re.S)
    assert m, sid
    return m.group(0)


# -------------------------------------------------------------------------------------- escaping
def test_h_escapes_text_and_attributes_and_refuses_handlers():
    out = safe.h("td", XSS[0], title=XSS[1], data_x="1")
    assert "<script>" not in out and "<img" not in out
    assert out == ('<td title="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" data-x="1">'
                   "&lt;script&gt;alert(1)&lt;/script&gt;</td>")
    with pytest.raises(ValueError):
        safe.h("div", onclick="x")
    with pytest.raises(ValueError):
        safe.h("a", href="javascript:alert(1)//x")
    assert safe.h("a", href="javascript:alert(1)") == '<a href="./javascript%3Aalert%281%29"></a>'
    with pytest.raises(ValueError):
        safe.h("img", src="data:text/html;base64,PHNjcmlwdD4=")
    assert safe.escape(safe.Markup("<b>")) == "<b>"


def test_report_has_no_live_element_from_data(sim_page):
    sim_dir, html = sim_page
    page = Page(html)
    ours = (Path(plots.__file__).parent / "report.js").read_text()
    assert page.scripts == [ours], "the only script is the report's own"
    for tag, attrs in page.tags:
        assert tag != "script" or not attrs, "no script with attributes (src) exists"
        assert not [a for a in attrs if a.lower().startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
        for key in ("src", "href", "xlink:href"):
            if key in attrs:
                assert re.match(r"^(#|data:(image/png|audio/wav);base64,|\./|\.\./)", attrs[key]), attrs
    text = "".join(page.text)
    for s in XSS:  # shown to the reader as text, in tables, legends, explorer and plots alike
        assert s in text
    assert html.count("<script") == 1


# ----------------------------------------------------------------------------------------- tables
def test_tables_show_mean_std_and_mark_the_best(sim_page):
    sim_dir, html = sim_page
    results = json.loads((sim_dir / "results.json").read_text())
    table2 = _section(html, "table2")
    rows = re.findall(r"<tr><th scope=\"row\">.*?</tr>", table2, re.S)
    assert len(rows) == len(GROUPS) + 1
    for row, group in zip(rows, ["Initial", *GROUPS]):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        values = results["table2"][group]["auc"]["values"]
        assert f'<span class="mean">{np.mean(values):.3f}</span>' in cells[0]
        assert f"± {np.std(values, ddof=1):.3f}" in cells[0]
    for column, higher in (("auc", True), ("max_beta_variance", False)):
        means = {g: np.mean(v[column]["values"]) for g, v in results["table2"].items()}
        best = (max if higher else min)(means, key=means.get)
        idx = [c[0] for c in (("auc",), ("f1",), *((f"r_at_p{p}",) for p in (40, 50, 60, 70, 80, 90)),
                                ("tpr_at_fpr1",), ("accuracy",), ("macro_f1",), ("multiclass_loss",),
                                ("max_beta_variance",))].index(column)
        for row, group in zip(rows, ["Initial", *GROUPS]):
            cell = re.findall(r"<td([^>]*)>", row)[idx]
            assert ('class="num best"' in cell) == (group == best), (column, group)
    table1 = _section(html, "table1")
    assert "Δ +0.020 (2/3 up, p 0.50)" in table1  # paired differences shown under Table 1 values
    assert 'title="Δ -0.040 (1/3 up)"' in table2  # and as tooltips in the wide Table 2


def test_best_rows_rules():
    cols = [MetricColumn("x", "x")]
    t = MetricTable("t", "", cols, {"a": {"x": [0.2, 0.4]}, "b": {"x": [0.5]}, "c": {"x": [float("nan")]}})
    assert best_rows(t, "x", True) == {"b"}
    assert best_rows(t, "x", False) == {"a"}
    assert best_rows(t, "x", None) == set()
    tie = MetricTable("t", "", cols, {"a": {"x": [1.0]}, "b": {"x": [1.0]}, "c": {"x": [0.5]}})
    assert best_rows(tie, "x", True) == {"a", "b"}
    assert best_rows(MetricTable("t", "", cols, {"a": {"x": [1.0]}, "b": {"x": [1.0]}}), "x", True) == set()


# ------------------------------------------------------------------------------------------ curves
def test_rp_operating_points_match_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 400)
    probs = _probs(rng, labels, 3, 1.2)
    y, s = binary_view(labels, probs)
    pts = operating_points(y, s)
    levels = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    marks = plots.operating_point_indices(pts, levels)
    precision, recall, _ = precision_recall_curve(y, s)
    for level in levels:
        feasible = precision >= level
        best = recall[feasible].max() if feasible.any() else 0.0
        if best == 0:
            assert str(level) not in marks
            continue
        i = marks[str(level)]
        pred = s >= pts.thresholds[i]  # recount the marked point from scratch
        tp = int((pred & (y == 1)).sum())
        assert tp / pred.sum() >= level
        assert tp / y.sum() == pytest.approx(best)


def test_curve_figure_draws_every_group_in_its_colour(sim_page):
    sim_dir, html = sim_page
    curves = _section(html, "curves")
    palette = plots.Palette(["Initial", *GROUPS])
    for g in GROUPS:
        assert f"stroke: {palette[g].lower()}" in curves
    legend = re.findall(r'<span class="detail">AUC (\d\.\d{3})</span>', curves)
    t = io.read_table(sim_dir / "repeats/repeat-000/test_predictions.parquet")
    groups = np.asarray(t.column("group").to_pylist())
    y_all = io.labels_array(t.column("label"))
    p_all = io.list_matrix(t.column("probs"), dtype=np.float64)
    expected = [f"{roc_auc_score(y_all[groups == g] != 0, 1 - p_all[groups == g, 0]):.3f}"
                for g in ["Initial", *GROUPS]]
    assert legend == expected


# ---------------------------------------------------------------------------------------- sections
def test_every_section_present_with_content(sim_page):
    sim_dir, html = sim_page
    for sid in SECTIONS:
        sec = _section(html, sid)
        assert "Not available" not in sec, sid
        if sid in ("curves", "trends", "lookalike", "confusion"):
            assert "<svg" in sec and "<path" in sec, sid
    lt = _section(html, "lookalike")
    assert "0.750 ± 0.050" in lt and "τ2 = 0.4" in lt


def test_trend_panels_follow_results(sim_dir, tmp_path):
    from broaden.report.sources import load

    data = load(sim_dir, tmp_path)
    results = json.loads((sim_dir / "results.json").read_text())
    auc = next(p for p in data.trends if p.title.startswith("AUC"))
    for series in auc.series:
        want = [e["table2"]["auc"] for e in results["rounds"][series.name]]
        assert series.y == pytest.approx([w["mean"] for w in want])
        assert series.high == pytest.approx([w["mean"] + w["std"] for w in want])
    # the per-strategy yield is recomputed from selections.parquet: share of argmax != label, mean over repeats
    strat = next(p for p in data.trends if p.title == "Bad-case yield per strategy")
    entropy = next(s for s in strat.series if s.name == "entropy")
    per_repeat = []
    for r in range(3):
        t = io.read_table(sim_dir / f"repeats/repeat-{r:03d}/selections.parquet")
        m = (np.asarray(t.column("strategy").to_pylist()) == "entropy") & (t.column("round").to_numpy() == 1)
        wrong = io.list_matrix(t.column("probs")).argmax(1) != t.column("label").to_numpy()
        per_repeat.append(wrong[m].mean())
    assert entropy.y[0] == pytest.approx(np.mean(per_repeat))


def test_explorer_groups_seeds_with_ranked_neighbours(sim_page):
    sim_dir, html = sim_page
    ex = _section(html, "explorer")
    bodies = re.findall(r'<tbody class="case"(.*?)>(.*?)</tbody>', ex, re.S)
    assert len(bodies) == 4  # 2 LSB groups × 2 seeds, first repeat
    cs = io.read_table(sim_dir / "repeats/repeat-000/case_study.parquet").to_pylist()
    for attrs, body in bodies:
        assert body.count('class="seed-row"') == 1 and body.count('class="nb-row"') == K
        ranks = re.findall(r'<span class="role" title="neighbour rank">#(\d+)</span>', body)
        assert ranks == [str(k) for k in range(1, K + 1)]
        seed_id = re.search(r'data-id="([^"]*)"', attrs).group(1)
        row = next(r for r in cs if safe.escape(r["seed_id"]) == seed_id)
        d_expected = 1 - row["seed_probs"][row["seed_label"]]  # nominal discrepancy, by hand
        assert float(re.search(r'data-d="([^"]*)"', attrs).group(1)) == pytest.approx(d_expected, rel=1e-5)
        assert 'src="data:image/png;base64,' in body and 'src="data:audio/wav;base64,' in body
    assert "query</dt>" in ex  # "a | b" texts split back into the dataset's fields


def test_missing_parts_render_as_not_available(tmp_path):
    sim = write_simulation(tmp_path / "sim", with_results=False, with_case_study=False, repeats=1)
    html = report(sim).read_text()
    assert (sim / "report.html").is_file()
    for sid in ("table1", "table2", "trends", "confusion", "explorer"):
        assert "Not available in this result" in _section(html, sid), sid
    for sid in ("curves", "lookalike"):
        assert "<svg" in _section(html, sid)


def test_not_a_result_folder_and_bad_json(tmp_path):
    with pytest.raises(ReportError, match="neither a simulation result folder"):
        report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"results\.json: not valid JSON"):
        report(tmp_path)


def test_write_is_atomic_and_keeps_the_old_report(sim_dir, tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("old report")
    from broaden.report import page

    def boom(data):
        raise RuntimeError("render failed")

    monkeypatch.setattr(page, "render_page", boom)
    with pytest.raises(RuntimeError):
        report(sim_dir, out)
    assert out.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["media", "sim", "r.html"])


def test_page_is_self_contained(sim_page):
    sim_dir, html = sim_page
    page = Page(html)
    assert not page.find("link") and not [a for t, a in page.tags if t == "script" and "src" in a]
    assert page.find("meta", **{"http-equiv": "Content-Security-Policy"})
    assert not re.search(r'(src|href)="https?:', html)


# ------------------------------------------------------------------------------------------- media
def test_png_thumbnail_round_trips_pixels():
    from PIL import Image

    img = (np.arange(28 * 28) % 251).astype(np.uint8)
    uri = media.png_data_uri(img.tolist())
    back = np.asarray(Image.open(_io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert back.shape == (28, 28) and (back == img.reshape(28, 28)).all()
    big = media.png_data_uri(np.zeros((300, 150, 3), np.uint8))
    assert Image.open(_io.BytesIO(base64.b64decode(big.split(",", 1)[1]))).size == (48, 96)
    floats = media.image_array(np.full((2, 2), 0.5))
    assert floats.dtype == np.uint8 and (floats == 127).all()
    with pytest.raises(ValueError, match="not square"):
        media.image_array(np.zeros(10))


def test_wav_round_trips_and_large_audio_is_linked(tmp_path):
    samples = (np.sin(np.arange(1000) / 7) * 0.5).astype(np.float32)
    raw = media.wav_bytes(samples, 8000)
    with wave.open(_io.BytesIO(raw)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        back = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32767.0
    assert np.abs(back - samples).max() < 1e-4
    f = tmp_path / "audio" / "clip.wav"
    f.parent.mkdir()
    f.write_bytes(raw)
    assert media.audio_src(f, report_dir=tmp_path) == "data:audio/wav;base64," + base64.b64encode(raw).decode()
    linked = media.audio_src(f, report_dir=tmp_path / "out", max_bytes=100)
    assert linked == "../audio/clip.wav"
    assert safe.h("audio", src=linked) == '<audio src="../audio/clip.wav"></audio>'


# --------------------------------------------------------------------------------------------- CLI
def test_cli_prints_the_path(sim_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "page.html"
    assert main(["report", str(sim_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(sim_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(sim_dir / "report.html")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in " ".join(capsys.readouterr().err.split())
