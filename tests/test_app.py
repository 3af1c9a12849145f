"""The review app driven by Streamlit's own test harness (AppTest) on a real work folder built from ../shared photos."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict
from streamlit.testing.v1 import AppTest

from labels.store import LabelStore, NewFlag
from tests.conftest import rendered
from tests.review_workdir import EDGE, FAKE, HOSTILE, OUTLIER, build_workdir, planted

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")


@pytest.fixture(scope="module")
def built(tmp_path_factory, glint_dir, models_dir) -> Path:
    return build_workdir(glint_dir, models_dir / "mobilefacenet.onnx", tmp_path_factory.mktemp("app"))


@pytest.fixture
def work(built, tmp_path, monkeypatch) -> Path:
    shutil.copytree(built, tmp_path / "work")
    monkeypatch.setattr(sys, "argv", ["app.py", "--workdir", str(tmp_path / "work")])
    return tmp_path / "work"


def app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    return at.run()


def ids(work: Path, *paths: str) -> list[int]:
    with LabelStore.open(work) as store:
        found = store.image_ids(list(paths))
    return [found[p] for p in paths]


def shown(element) -> str:
    """The text a Markdown element shows for its source (the app escapes every user string)."""
    return rendered(element.value)


def texts(at: AppTest) -> str:
    parts = [*at.markdown, *at.caption, *at.success, *at.error, *at.info]
    return "\n".join(shown(e) for e in parts)


def test_reviewer_is_asked_once_and_the_queue_lists_flagged_identities(work):
    at = app()
    assert not at.exception and at.text_input(key="reviewer_input").label == "Reviewer name"
    at.text_input(key="reviewer_input").input("ana")
    at.button(key="reviewer_start").click().run()
    assert not at.exception and at.query_params["reviewer"] == "ana"  # a reload keeps the name
    assert at.sidebar.radio[0].value == "Queue"
    body = texts(at)
    assert "**3** identities to review" in body
    for name in ("Hugh Laurie", "Jennifer A", "Halle Berry"):
        assert f"**{name}**" in body
    assert "1 outlier, 1 fake_mismatch" in body
    at.multiselect(key="queue_kinds").set_value(["unreadable"]).run()
    assert "**1** identities to review" in texts(at) and "**Hugh Laurie**" not in texts(at)
    at.sidebar.button(key="reviewer_change").click().run()
    assert at.text_input(key="reviewer_input") and "reviewer" not in at.query_params


def test_a_decision_is_written_at_once_shown_in_history_and_undone(work):
    outlier, = ids(work, OUTLIER)
    at = app(reviewer="ana", view="Identity", identity="Hugh Laurie")
    assert not at.exception
    body = texts(at)
    assert ":red[**outlier**] → Barack Obama" in body and ":red[**fake_mismatch**]" in body
    assert "Isolated photos (no edge to any other photo) (2)" in [h.value for h in at.subheader][1]
    assert len(at.get("plotly_chart")) == 1  # the heatmap
    at.button(key=f"rm_{outlier}").click().run()
    assert not at.exception
    assert shown(at.success[0]).endswith("removed 1 photo(s)")
    with LabelStore.open(work) as store:  # written at once, with the reviewer's name
        assert store.images(ids=[outlier]).removed.item() == 1
        decision = store.history(limit=1)[0]
        assert (decision.reviewer, decision.action, decision.image_ids) == ("ana", "remove", (outlier,))
    assert any(h.value.startswith("Removed") for h in at.subheader)
    at.sidebar.button(key=f"undo_{decision.id}").click().run()
    assert not at.exception and f"undid #{decision.id}" in shown(at.success[0])
    with LabelStore.open(work) as store:
        assert store.images(ids=[outlier]).removed.item() == 0
        assert store.flags(image_ids=[outlier]).status.item() == "open"


def test_history_offers_no_undo_that_would_override_a_later_decision(work):
    outlier, = ids(work, OUTLIER)
    with LabelStore.open(work) as store:  # issue 14: ana removes X, bob restores X, bob removes X
        first = store.decide("remove", reviewer="ana", image_ids=[outlier])
        store.decide("restore", reviewer="bob", image_ids=[outlier])
        third = store.decide("remove", reviewer="bob", image_ids=[outlier])
    at = app(reviewer="ana", view="Queue")
    keys = {b.key for b in at.sidebar.button}
    assert f"undo_{third}" in keys and f"undo_{first}" not in keys and f"undo_{first + 1}" not in keys
    assert f"undo #{third} first" in "\n".join(shown(c) for c in at.sidebar.caption)


def test_position_is_restored_for_the_reviewer_in_a_new_session(work):
    at = app(reviewer="ana", view="Queue")
    at.button(key="open_1").click().run()
    second = at.session_state["identity"]
    assert at.query_params["identity"] == second
    fresh = app()  # a new browser session without the URL: asks the name, then resumes there
    fresh.text_input(key="reviewer_input").input("ana")
    fresh.button(key="reviewer_start").click().run()
    assert fresh.sidebar.radio[0].value == "Identity" and fresh.session_state["identity"] == second
    other = app()
    other.text_input(key="reviewer_input").input("bo")
    other.button(key="reviewer_start").click().run()
    assert other.sidebar.radio[0].value == "Queue"  # bo has no saved position: the queue


def test_next_identity_and_selection_actions(work):
    outlier, fake = ids(work, OUTLIER, FAKE)
    at = app(reviewer="ana", view="Identity", identity="Hugh Laurie", rank="0")
    at.checkbox(key=f"pick_{fake}").check().run()
    assert "**1 selected**" in texts(at)
    at.button(key="sel_fake").click().run()
    assert "Not recorded: nothing to change" in shown(at.error[0])  # it is a deepfake already
    assert at.checkbox(key=f"pick_{fake}").value  # a refused action keeps the selection
    at.checkbox(key=f"pick_{fake}").uncheck()
    at.checkbox(key=f"pick_{outlier}").check().run()
    at.text_input(key="move_text").input("barack").run()
    assert at.selectbox(key="move_choice").options == ["Barack Obama", "barack (new)"]
    at.button(key="move_typed").click().run()
    assert not at.error, shown(at.error[0])
    assert "moved 1 photo(s) to Barack Obama" in shown(at.success[0])
    assert not at.session_state[f"pick_{outlier}"]  # the selection is cleared after an action
    with LabelStore.open(work) as store:
        assert store.images(ids=[outlier]).identity.item() == "Barack Obama"
    at.button(key="next_identity").click().run()
    assert at.session_state["identity"] != "Hugh Laurie" and at.session_state["nav"] == "Identity"


def test_merge_proposal_shows_both_sides_and_merges(work):
    at = app(reviewer="ana", view="Identity", identity="Jennifer A")
    assert "merge proposed" in texts(at) and "Jennifer Aniston: 3 photos" in texts(at)
    with LabelStore.open(work) as store:
        flag = int(store.flags(kind="merge").id.item())
    at.button(key=f"merge_into_{flag}").click().run()
    assert "merged Jennifer A into Jennifer Aniston" in shown(at.success[0])
    assert "no photos are labelled 'Jennifer A'" in shown(at.error[0])  # the page now says where they went
    with LabelStore.open(work) as store:
        assert len(store.images(identity="Jennifer Aniston")) == 6


def test_split_a_component_off(work):
    at = app(reviewer="ana", view="Identity", identity="Hugh Laurie")
    assert at.text_input(key="split_name_-1").value == "Hugh Laurie_split-1"
    at.text_input(key="split_name_-1").input("Hugh Laurie lookalikes")
    at.button(key="split_-1").click().run()
    assert "split 2 photo(s) off Hugh Laurie into Hugh Laurie lookalikes" in shown(at.success[0])
    with LabelStore.open(work) as store:
        assert len(store.images(identity="Hugh Laurie lookalikes")) == 2


def test_unreadable_photo_shows_a_placeholder_with_the_reason(work):
    at = app(reviewer="ana", view="Identity", identity="Halle Berry")
    assert not at.exception
    assert ":warning: cannot show: not an image" in texts(at)
    with LabelStore.open(work) as store:
        (store.dataset_root / "Halle Berry" / "2071.png").unlink()  # a photo deleted since ingest
    at = app(reviewer="ana", view="Identity", identity="Halle Berry")
    assert not at.exception and "cannot show: cannot read file" in texts(at)


def test_other_pages_render_and_explain_empty_states(work):
    at = app(reviewer="ana", view="Overview")
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert [m.value for m in at.get("metric")][:2] == ["27", "5"]
    at.sidebar.radio[0].set_value("Training").run()
    assert "python -m curation.train_on_clean" in texts(at)
    at.sidebar.radio[0].set_value("Evaluation").run()
    assert "python -m curation.evaluate" in texts(at)
    at.text_input(key="eval_folder").input("/etc").run()
    assert "outside the work folder" in shown(at.error[0])
    at.sidebar.radio[0].set_value("Search").run()
    at.text_input(key="search_text").input("planted").run()
    at.button(key="search_open_0").click().run()
    assert at.session_state["identity"] == "Hugh Laurie" and at.sidebar.radio[0].value == "Identity"


def test_training_and_evaluation_tabs_plot_runs(work):
    from curation.scoring.evaluate import evaluate_scores
    from curation.scoring.metrics import verification_report

    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(100), np.zeros(200)]
    types = np.r_[["same"] * 100, ["different"] * 100, ["own_fake"] * 100]
    records = [{"step": s, "lr": 1e-5, "train_loss": 1 / s, **verification_report(rng.normal(0, 1, 300) + labels,
                                                                                labels, types).to_dict()}
               for s in (100, 200)]
    (work / "runs" / "r1").mkdir(parents=True)
    (work / "runs" / "r1" / "performance_history.json").write_text(json.dumps(records))
    evaluate_scores(rng.normal(0, 1, 300) + labels, labels, work / "eval" / "e1", types=types)
    at = app(reviewer="ana", view="Training")
    assert not at.exception and len(at.get("plotly_chart")) == 3
    at.sidebar.radio[0].set_value("Evaluation").run()
    assert not at.exception and len(at.get("plotly_chart")) == 4  # ROC, DET, per type, scores


def test_export_page_runs_the_export(work):
    at = app(reviewer="ana", view="Export")
    at.selectbox(key="export_format").set_value("csv")
    at.radio(key="export_unreviewed").set_value("apply")
    at.button(key="export_run").click().run()
    assert not at.exception, at.exception
    assert shown(at.success[0]).startswith("Exported ") and (work / "export" / "labels.csv").is_file()
    assert "unreviewed flags: applied" in at.code[0].value
    at.text_input(key="export_out").input("/tmp/elsewhere")
    at.button(key="export_run").click().run()
    assert "outside the work folder" in shown(at.error[0])


def test_bad_start_is_explained(work, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = app()
    assert "no work folder given" in at.code[0].value and "--workdir WORK" in at.code[0].value
    monkeypatch.setattr(sys, "argv", ["app.py", "--workdir", str(tmp_path / "nothing")])
    at = app()
    assert "python -m curation.clean" in shown(at.error[0])


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, glint_dir) -> Path:
    """A work folder written by the real `python -m curation.clean` (dlib, pre-aligned photos) on a few identities."""
    from tests.review_workdir import build_dataset

    root = tmp_path_factory.mktemp("cleaned")
    build_dataset(glint_dir, root / "data", per_identity=8)
    done = subprocess.run(
        [sys.executable, "-m", "curation.clean", str(root / "data"), "--workdir", str(root / "work"), "--model", "dlib",
         "--aligned", "--workers", "0", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "work"


def test_work_folder_from_the_real_clean(cleaned, tmp_path, monkeypatch):
    from curation import review as rv

    work = tmp_path / "work"
    shutil.copytree(cleaned, work)
    monkeypatch.setattr(sys, "argv", ["app.py", "--workdir", str(work)])
    outlier, = ids(work, OUTLIER)
    at = app(reviewer="ana", view="Queue")
    body = texts(at)
    assert not at.exception and "**Hugh Laurie**" in body and "**Jennifer A**" in body  # outliers, the merge
    at = app(reviewer="ana", view="Identity", identity="Hugh Laurie")
    assert ":red[**outlier**] → Barack Obama" in texts(at)
    assert len(at.get("plotly_chart")) == 1
    with LabelStore.open(work) as store:  # thumbnails are the aligned crops the clean cached
        photo = store.images(ids=[outlier]).iloc[0]
        source, _ = rv.photo_source(store, rv.WorkFolder(work), photo, rv.crop_align_id(rv.read_report(rv.WorkFolder(work))))
        assert source.is_relative_to(work / "cache" / "crops")
    at.button(key=f"mv_{outlier}").click().run()
    assert "moved 1 photo(s) to Barack Obama" in shown(at.success[0])
    with LabelStore.open(work) as store:
        assert store.images(ids=[outlier]).identity.item() == "Barack Obama"
        decision = store.history(limit=1)[0]
    at.sidebar.button(key=f"undo_{decision.id}").click().run()
    with LabelStore.open(work) as store:
        assert store.images(ids=[outlier]).identity.item() == "Hugh Laurie"
        assert store.flags(image_ids=[outlier]).status.tolist() == ["open"]


# ---- one keystroke per identity, the information order, the estimate (issue 15) ------------------------------------
def test_accept_all_is_one_batch_of_undoable_decisions_that_a_second_session_sees(work):
    outlier, fake = ids(work, OUTLIER, FAKE)
    at = app(reviewer="ana", view="Identity", identity="Hugh Laurie")
    assert "suggested: 1 move, 1 remove" in texts(at) or "suggested: 1 remove, 1 move" in texts(at)
    at.button(key="accept_all").click().run()
    assert "accepted the suggestions on 2 photo(s)" in shown(at.success[0])
    with LabelStore.open(work) as store:
        moved, removed = store.images(ids=[outlier, fake]).set_index("id").loc[[outlier, fake]].itertuples()
        assert moved.identity == "Barack Obama" and removed.removed == 1
        batch = store.history(limit=2)
        assert {d.action for d in batch} == {"move", "remove"} and batch[0].batch == batch[1].batch is not None
        assert store.flags(identity="Hugh Laurie", status="open").empty
    other = app(reviewer="bo", view="Identity", identity="Barack Obama")  # a second session sees the decisions
    from review_pages.common import lit

    assert any(lit(OUTLIER.split("/")[1]) in m for m in markdown_strings(other))  # the moved photo's caption
    line = next(c for c in other.sidebar.caption if "2 decisions together" in shown(c))
    assert "ana" in shown(line)
    other.sidebar.button(key=f"undo_{batch[0].id}").click().run()
    assert "undid 2 decisions" in shown(other.success[0])
    with LabelStore.open(work) as store:
        assert store.images(ids=[outlier]).identity.item() == "Hugh Laurie"
        assert len(store.flags(identity="Hugh Laurie", status="open")) == 2
        single = store.history(limit=4)[-1]  # each decision of a batch can also be undone on its own
        assert single.undone_by is not None


def test_keep_all_own_folder_suggestion_and_the_diverging_heatmap(work):
    with LabelStore.open(work) as store:  # a flag whose best match is the photo's own identity
        store.replace_flags("test", [NewFlag("minority", "Halle Berry", "Halle Berry/2071.png", "Halle Berry", 0, 0.2)])
        own = store.image_ids(["Halle Berry/2071.png"])["Halle Berry/2071.png"]
    at = app(reviewer="ana", view="Identity", identity="Halle Berry")
    assert ":red[**minority**]: looks like it belongs here: keep?" in texts(at)
    assert not [b for b in at.button if b.key == f"mv_{own}"]  # no "Move to Halle Berry"
    assert not any("Move to Halle Berry" in b.label for b in at.button)
    at.button(key="accept_all").click().run()
    assert "1 kept" in shown(at.success[0]) and "1 removed" in shown(at.success[0])  # own-folder flag kept
    at = app(reviewer="ana", view="Identity", identity="Jennifer A")
    at.button(key="keep_all").click().run()
    assert "rejected 1 flag(s)" in shown(at.success[0])
    with LabelStore.open(work) as store:
        assert store.flags(kind="merge").status.item() == "resolved"
        assert store.history(limit=1)[0].action == "keep"
    at = app(reviewer="ana", view="Identity", identity="Hugh Laurie")
    heat = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert heat["zmid"] == pytest.approx(EDGE) and heat["zmin"] + heat["zmax"] == pytest.approx(2 * EDGE)
    assert heat["colorscale"][0][1] != heat["colorscale"][-1][1]  # a diverging scale, from red to blue
    z = heat["z"]  # plotly ships numpy arrays base64-encoded
    z = np.frombuffer(base64.b64decode(z["bdata"]), z["dtype"]).reshape([int(n) for n in z["shape"].split(",")])
    off = z[~np.eye(len(z), dtype=bool)]
    assert max(abs(off - EDGE)) == pytest.approx(heat["zmax"] - EDGE, abs=1e-6)


def test_information_order_marks_the_sample_and_the_overview_estimates_from_answers(work):
    at = app(reviewer="ana", view="Queue")
    at.radio(key="queue_order").set_value("information").run()
    assert at.query_params["order"] == "information" and "information:" in texts(at)
    at.button(key="open_0").click().run()
    assert "Sample for the estimate" in texts(at)
    name = at.session_state["identity"]
    at.button(key="sample_reject").click().run()
    assert "kept 1 photo(s)" in shown(at.success[0])
    with LabelStore.open(work) as store:
        decision = store.history(limit=1)[0]
        assert decision.action == "keep" and len(decision.flag_ids) >= 1
    ov = app(reviewer="ana", view="Overview")
    metrics = {m.label: m.value for m in ov.get("metric")}
    assert metrics["Answers it rests on"] == "1" and metrics["Estimated precision of the open flags"].endswith("%")
    assert "0.0%" == metrics["Estimated precision of the open flags"]  # one answer, rejected: every band borrows it
    assert "Reviewer throughput" in [s.value for s in ov.subheader] and name


# ---- user strings are shown literally -----------------------------------------------------------------------------
# What Markdown (links, emphasis, code), Streamlit (:red[...], $math$) or autolinking would make of the hostile names if
# they reached a Markdown-rendering element unescaped.
RAW = ("](javascript:", "**bold**", "<b>", ":red[x]", "$x^2$", "`tick`", "*star*", "_it_", "www.evil", "ana@evil", "<i>")
NOT_MARKDOWN = {"text", "code", "dataframe", "plotly_chart", "arrow_data_frame", "json", "html"}  # shown as they are


def markdown_strings(at: AppTest) -> list[str]:
    """Every string the app hands to an element that renders it as Markdown: bodies, labels, help texts, captions and
    radio options (selectbox options, text inputs' values, st.text and tables are shown as they are)."""
    found: list[str] = []

    def collect(value, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                collect(v, k)
        elif isinstance(value, list):
            for v in value:
                collect(v, key)
        elif isinstance(value, str) and key in ("body", "label", "help", "text", "caption", "options"):
            found.append(value)

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if getattr(node, "type", None) not in NOT_MARKDOWN and proto is not None:
            fields = MessageToDict(proto, preserving_proto_field_name=True)
            if getattr(node, "type", None) in ("selectbox", "multiselect"):
                fields.pop("options", None)
            collect(fields)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return found


@pytest.fixture(scope="module")
def hostile_built(tmp_path_factory, glint_dir, models_dir) -> Path:
    return build_workdir(glint_dir, models_dir / "mobilefacenet.onnx", tmp_path_factory.mktemp("hostile"), hostile=True)


def test_identity_file_and_reviewer_names_reach_markdown_only_escaped(hostile_built, tmp_path, monkeypatch):
    """Issue 14: a folder named `[click me](javascript:alert(2)) **bold**` showed as a link and bold text."""
    from review_pages.common import lit

    work = tmp_path / "work"
    shutil.copytree(hostile_built, work)
    monkeypatch.setattr(sys, "argv", ["app.py", "--workdir", str(work)])
    hugh, obama = HOSTILE["Hugh Laurie"], HOSTILE["Barack Obama"]
    outlier, _, _ = planted(hostile=True)
    reviewer = "**ana** [me](http://x.example) :blue[b]"
    (outlier_id,) = ids(work, outlier)
    found: dict[str, str] = {}

    def check(page: str, at: AppTest) -> AppTest:
        assert not at.exception, (page, at.exception)
        strings = markdown_strings(at)
        leaked = [(raw, s) for s in strings for raw in RAW if raw in s]
        assert not leaked, (page, leaked[:3])
        found[page] = "\n".join(strings)
        return at

    check("Queue", app(reviewer=reviewer, view="Queue"))
    check("Overview", app(reviewer=reviewer, view="Overview"))
    at = check("Identity", app(reviewer=reviewer, view="Identity", identity=hugh))
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)
    at.button(key=f"mv_{outlier_id}").click().run()  # a decision: its message and the history name both sides
    assert f"moved 1 photo(s) to {obama}" in shown(at.success[0])
    at.text_input(key="move_text").input(obama[:6]).run()
    check("Identity after a move", at)
    search = app(reviewer=reviewer, view="Search")
    search.text_input(key="search_text").input("click").run()
    check("Search", search)
    check("Obama", app(reviewer=reviewer, view="Identity", identity=obama))
    assert f"**{lit(hugh)}**" in found["Queue"] and lit(reviewer) in found["Queue"]  # queue row, sidebar
    assert lit(hugh) in found["Identity"] and lit(obama) in found["Identity"]  # header, the suggestion
    assert lit(outlier.split("/")[1]) in found["Identity"]  # the photo's caption
    assert lit(hugh) in found["Search"] and lit(outlier.split("/")[1]) in found["Obama"]
    assert lit(reviewer) in found["Identity after a move"]  # the history line names the reviewer
    labels = heatmap["data"][0]["x"]
    assert any("&lt;i&gt;i &amp;amp; [a](b)" in x for x in labels), labels  # plotly's HTML subset is escaped
    assert heatmap["layout"]["title"]["text"].startswith(hugh)  # no HTML in this name: as it is
